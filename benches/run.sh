#!/usr/bin/env bash
# Runs Strata's benchmarks side by side with the alternatives and updates
# benches/RESULTS.md.
#   benches/run.sh cas [--runs N] [--inputs usr,debian,random] ...
#   benches/run.sh layerfs [--runs N] [--fio-seconds S]
#   benches/run.sh snapshot [--runs N] [--call-runs N] [--forks 100,1000] [--quick]
#   benches/run.sh p9 [--runs N] [--seconds S] [--sessions N] [--many N]
# Installs casync, zstd, b3sum and debootstrap, and builds the Debian root
# filesystem fixtures once (cached under $STRATA_FIXTURES). Needs root (to
# drop the page cache for cold reads and to run debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh casync zstd b3sum debootstrap
bench=${1:-cas}
shift || true
case "$bench" in
    cas)
        fixtures/debian-rootfs.sh bookworm-minbase bookworm-buildd
        cargo build --release --locked -p strata-benches
        exec target/release/strata-bench cas "$@"
        ;;
    layerfs)
        scripts/install-deps.sh fio fuse-overlayfs
        fixtures/debian-rootfs.sh bookworm-buildd
        cargo build --release --locked -p strata-benches
        exec target/release/strata-bench layerfs "$@"
        ;;
    snapshot)
        scripts/install-deps.sh btrfs-progs zstd
        fixtures/debian-rootfs.sh bookworm-buildd
        cargo build --release --locked -p strata-benches -p snapshotter
        exec target/release/strata-bench snapshot "$@"
        ;;
    p9)
        scripts/install-deps.sh diod
        fixtures/debian-rootfs.sh bookworm-buildd
        guest=$(fixtures/guest-9p.sh)
        cargo build --release --locked -p strata-benches -p snapshotter
        exec target/release/strata-bench p9 --guest "$guest" "$@"
        ;;
    *)
        echo "unknown benchmark '$bench' (known: cas, layerfs, snapshot, p9)" >&2
        exit 2
        ;;
esac
