#!/usr/bin/env bash
# Runs Strata's whole test suite: formatting, lints, unit, integration,
# crash and CLI tests. Installs what it needs first.
#   STRATA_CRASH_ITERATIONS=200 ./test.sh   # the long crash test
set -euo pipefail
cd "$(dirname "$0")"
# FUSE tests need /dev/fuse; the runtime test needs bubblewrap, gVisor's
# runsc and a Debian root filesystem built by debootstrap (cached); the
# 9p test boots a QEMU guest against the daemon's 9P listener and diod.
scripts/install-deps.sh bubblewrap runsc runc debootstrap tar umoci acl
fixtures/debian-rootfs.sh bookworm-minbase
fixtures/oci-debian.sh bookworm-minbase
fixtures/pjdfstest.sh
# The 9p guest: Debian's kernel and a busybox initramfs for QEMU (cached),
# with qemu-system-x86 and diod.
fixtures/guest-9p.sh >/dev/null
# The remote tier's tests run against real S3 servers on loopback: moto,
# and s3s-fs (which keeps its objects on disk, so a test can kill it and
# start it again).
command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]>=5,<6'
command -v s3s-fs >/dev/null || cargo install -q s3s-fs --version 0.14.1 --features binary --locked
# FUSE over io_uring (Linux 6.14+): off by default in the fuse module;
# turned on so that every FUSE mount of the suite takes requests through
# it (Strata's default when the kernel offers it). The /dev/fuse path is
# tested beside it by layerfs's pjdfstest and fuse_io_uring tests.
if [ -w /sys/module/fuse/parameters/enable_uring ]; then
    echo Y > /sys/module/fuse/parameters/enable_uring
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
