#!/usr/bin/env bash
# The test command: fetches the test-only assets (DeepSeek-V3's tokenizer, which the
# repository may not redistribute) and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch_test_assets.sh
cargo test --workspace "$@"
