#!/usr/bin/env bash
# The test command: set-up, then lints, the Rust test suites and the Python checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .deps/env.sh
export GST_DEBUG_NO_COLOR=1
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --release --workspace
if [ -d tests/python ]; then
  echo "== pytest"
  .venv/bin/python -m pytest -q tests/python
fi
