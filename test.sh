#!/usr/bin/env bash
# Runs Strata's whole test suite: formatting, lints, unit, integration,
# crash and CLI tests. Installs what it needs first.
#   STRATA_CRASH_ITERATIONS=200 ./test.sh   # the long crash test
set -euo pipefail
cd "$(dirname "$0")"
# FUSE tests need /dev/fuse; the runtime test needs bubblewrap, gVisor's
# runsc and a Debian root filesystem built by debootstrap (cached).
scripts/install-deps.sh bubblewrap runsc runc debootstrap tar umoci
fixtures/debian-rootfs.sh bookworm-minbase
fixtures/oci-debian.sh bookworm-minbase
fixtures/pjdfstest.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
