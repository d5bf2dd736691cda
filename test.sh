#!/usr/bin/env bash
# Runs Strata's whole test suite: formatting, lints, unit, integration,
# crash and CLI tests. Installs what it needs first.
#   STRATA_CRASH_ITERATIONS=200 ./test.sh   # the long crash test
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
