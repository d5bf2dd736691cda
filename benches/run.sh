#!/usr/bin/env bash
# Runs Strata's benchmarks side by side with the alternatives and updates
# benches/RESULTS.md.
#   benches/run.sh cas [--runs N] [--inputs usr,debian,random] ...
#   benches/run.sh layerfs [--runs N] [--fio-seconds S]
#   benches/run.sh snapshot [--runs N] [--call-runs N] [--forks 100,1000] [--quick]
#   benches/run.sh p9 [--runs N] [--seconds S] [--sessions N] [--many N]
#   benches/run.sh volume [--runs N] [--sizes 10000,100000,1000000] [--baseline-max N]
#   benches/run.sh memory [--runs N] [--image-mib M] [--cells-kib 64,16,256]
#   benches/run.sh sandbox [--runs N] [--forks N] [--runtimes runsc,runc]
#   benches/run.sh remote [--runs N] [--random-mib M] [--latency-ms 15] [--connection-mbs 100]
#   benches/run.sh reliability [CUTS]   # power cuts per suite (default 350;
#                                       # three suites: 1,050 cuts in all),
#                                       # hostile 9P clients (5 runs), then
#                                       # 10 min of load on 200 mounts
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
    memory)
        scripts/install-deps.sh zstd runsc
        fixtures/debian-rootfs.sh bookworm-minbase
        cargo build --release --locked -p strata-benches -p snapshotter
        exec target/release/strata-bench memory "$@"
        ;;
    sandbox)
        scripts/install-deps.sh runsc runc
        fixtures/debian-rootfs.sh bookworm-minbase
        cargo build --release --locked -p strata-benches -p snapshotter
        exec target/release/strata-bench sandbox "$@"
        ;;
    remote)
        scripts/install-deps.sh restic
        command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]>=5,<6'
        fixtures/debian-rootfs.sh bookworm-minbase
        cargo build --release --locked -p strata-benches
        exec target/release/strata-bench remote "$@"
        ;;
    volume)
        scripts/install-deps.sh restic git
        cargo build --release --locked -p strata-benches -p volume-server
        exec target/release/strata-bench volume "$@"
        ;;
    reliability)
        cuts=${1:-350}
        log=$(mktemp)
        trap 'rm -f "$log"' EXIT
        start=$(date +%s)
        # The power-cut suites, long: the chunk store with and without the
        # kernel's writeback cache, and a mount with its snapshots.
        for suite in "cas acknowledged_blobs_and_refs_survive_power_cuts" \
                     "layerfs a_mount_and_its_snapshots_keep_what_was_acknowledged"; do
            set -- $suite
            STRATA_POWER_CUTS=$cuts cargo test --release --locked -p "$1" --test powercut \
                -- "$2" --nocapture --test-threads=1 2>&1 | tee -a "$log"
        done
        # The volume server stopped (SIGKILL or SIGTERM) under a seeded
        # workload, 1,000 times, checked against what was acknowledged.
        STRATA_VOLUME_CRASH_TRIALS=${STRATA_VOLUME_CRASH_TRIALS:-1000} cargo test --release \
            --locked -p volume-server --test crash -- --nocapture 2>&1 | tee -a "$log"
        # Four hostile 9P clients beside a polite one, five runs of 15
        # rounds: the polite client's p99 beside them against alone.
        for _ in 1 2 3 4 5; do
            HOSTILE_ROUNDS=15 cargo test --release --locked -p snapshotter --test hostile9p \
                -- hostile_clients --nocapture 2>&1 | tee -a "$log"
        done
        # Ten minutes of mixed load on 200 mounts of one daemon.
        STRATA_LOAD_SECS=${STRATA_LOAD_SECS:-600} cargo test --release --locked -p snapshotter \
            --test load -- --nocapture 2>&1 | tee -a "$log"
        cargo build --release --locked -p strata-benches
        target/release/strata-bench reliability --log "$log" --seconds $(( $(date +%s) - start ))
        ;;
    *)
        echo "unknown benchmark '$bench' (known: cas, layerfs, snapshot, p9, volume, reliability)" >&2
        exit 2
        ;;
esac
