#!/usr/bin/env bash
# End-to-end test of `whale serve` with the official `openai` Python client, then a bounded
# load test on loopback. Creates a virtualenv outside the repository (WHALE_E2E_VENV, default
# ~/.cache/whale-serve-e2e), installs `openai` into it, builds `whale` in release mode and
# serves MODEL (default: the bundled models/whale-tiny if present, else a golden fixture, to
# which the test adds a tiny byte-level tokenizer).
#
#   scripts/serve_e2e.sh [MODEL_DIR]        # LOAD_REQUESTS=300 LOAD_CLIENTS=32 RSS_LIMIT_MB=1024
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${WHALE_E2E_VENV:-$HOME/.cache/whale-serve-e2e}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade "openai>=1.40"

cargo build --release -p whale-cli
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
whale="$target_dir/release/whale"

model="${1:-}"
if [ -z "$model" ]; then
    if [ -f models/whale-tiny/tokenizer.json ]; then
        model=models/whale-tiny
    else
        model=fixtures/models/v2_grouped_bf16_sharded
    fi
fi

tests=crates/whale-server/tests
"$venv/bin/python" "$tests/e2e_openai.py" --whale "$whale" --model "$model"
"$venv/bin/python" "$tests/load_test.py" --whale "$whale" --model "$model" \
    --requests "${LOAD_REQUESTS:-300}" --clients "${LOAD_CLIENTS:-32}" --rss-limit-mb "${RSS_LIMIT_MB:-1024}"
