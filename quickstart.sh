#!/usr/bin/env bash
# Strata's main job: a quickstart of the whole engine. On a fresh machine it
# installs what it needs (Debian packages: gVisor's runsc, runc,
# debootstrap, the build tools), builds Strata, imports a Debian image (the
# cached debootstrap fixture, built the first time), and walks through:
# a sandbox on gVisor, files written in it, a snapshot, ten sandboxes
# started from that snapshot that each run a command and write their result
# to a shared volume, terminated without waiting, the results read from
# outside, a process checkpointed and resumed with its memory, and a table
# of timings. Needs root and /dev/fuse.
#   ./quickstart.sh [--keep]      (--keep: leave the scratch directory)
set -euo pipefail
cd "$(dirname "$0")"
keep=0
[ "${1:-}" = "--keep" ] && keep=1
if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
    echo "quickstart: needs root and /dev/fuse (sandboxes mount their roots with FUSE)" >&2
    exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "installing what Strata needs (Debian packages, once)"
scripts/install-deps.sh runsc runc debootstrap
step "building Strata (release; about 11 minutes the first time)"
cargo build --release --locked -p snapshotter -p volume-server
# FUSE over io_uring (Linux 6.14+) is off by default in the fuse module;
# Strata's mounts take requests through it when it is on (see README).
if [ -w /sys/module/fuse/parameters/enable_uring ]; then
    echo Y > /sys/module/fuse/parameters/enable_uring
fi
step "the Debian image (debootstrap, about 3 minutes the first time; cached)"
fixtures/debian-rootfs.sh bookworm-minbase
rootfs=${STRATA_FIXTURES:-/var/cache/strata-fixtures}/bookworm-minbase

work=$(mktemp -d /var/tmp/strata-quickstart.XXXXXX)
export STRATA_HOME=$work/node STRATA_VOLUME_HOME=$work/volumes
pids=()
cleanup() {
    # Stopping the node daemon terminates its sandboxes (volumes committed).
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then echo "scratch directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
snapctl() { target/release/snapctl "$@"; }
now_ms() { date +%s%3N; }
declare -a timings
timed() { # timed LABEL START_MS
    local took=$(( $(now_ms) - $2 ))
    timings+=("$(printf '%-52s %8s ms' "$1" "$took")")
    printf '   %s: %s ms\n' "$1" "$took"
}
bar() { # bar DONE TOTAL LABEL: redrawn in place on a terminal, else one line at the end
    local width=30 filled=$(( $1 * 30 / $2 ))
    if [ -t 1 ]; then
        printf '\r   [%s%s] %d/%d %s' "$(printf '%*s' "$filled" '' | tr ' ' '#')" \
            "$(printf '%*s' $(( width - filled )) '' | tr ' ' '.')" "$1" "$2" "$3"
        [ "$1" = "$2" ] && echo
    elif [ "$1" = "$2" ]; then
        echo "   $1/$2 $3"
    fi
    return 0
}

step "starting the volume server and the node daemon (scratch data in $work)"
snapctl store init >/dev/null
target/release/volume-server --home "$STRATA_VOLUME_HOME" >"$work/volume-server.log" 2>&1 &
pids+=($!)
target/release/snapctl daemon >"$work/daemon.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
    snapctl mounts >/dev/null 2>&1 && snapctl volume ls >/dev/null 2>&1 && break
    sleep 0.05
done

step "importing the Debian image"
t=$(now_ms)
snapctl image import "$rootfs" --name debian >/dev/null
timed "import Debian (bookworm minbase) as an image" "$t"
snapctl image ls

step "a sandbox on gVisor (runsc), its root a Strata mount"
snapctl volume create results >/dev/null
t=$(now_ms)
base=$(snapctl sandbox create --image debian --disk 2G)
snapctl sandbox exec "$base" -- true
timed "create a sandbox, first exec returned" "$t"
echo "   sandbox $base"

step "writing files in it"
t=$(now_ms)
snapctl sandbox exec "$base" -- sh -c '
    mkdir -p /project/src &&
    head -c 50M /dev/urandom > /project/dataset.bin &&
    for i in $(seq 1 200); do echo "record $i" > /project/src/r$i.txt; done &&
    cd /project && md5sum dataset.bin' | sed 's/^/   /'
timed "write 50 MiB and 200 files inside the sandbox" "$t"

step "snapshotting its filesystem"
t=$(now_ms)
snap=$(snapctl sandbox snapshot "$base" --label step=dataset)
timed "snapshot the running sandbox (call)" "$t"
snapctl snapshot show --wait "$snap" | sed 's/^/   /'
timed "... durable" "$t"

step "ten sandboxes from the snapshot, each writing its result to a shared volume"
t=$(now_ms)
workers=()
for n in $(seq 1 10); do
    workers+=("$(snapctl sandbox create --from-snapshot "$snap" --volume results:/results)")
    bar "$n" 10 "started"
done
timed "start 10 sandboxes from the snapshot" "$t"
t=$(now_ms)
done_count=0
for n in $(seq 1 10); do
    id=${workers[$((n - 1))]}
    snapctl sandbox exec "$id" --env WORKER="$n" -- sh -c \
        'echo "worker $WORKER on $(hostname): $(md5sum < /project/dataset.bin | cut -c1-32), $(find /project/src -type f | wc -l) files" > /results/worker-$WORKER.txt' &
done
for job in $(jobs -p); do
    case " ${pids[*]} " in *" $job "*) continue ;; esac
    wait "$job"
    done_count=$((done_count + 1))
    bar "$done_count" 10 "commands finished"
done
timed "run one command in each of the 10" "$t"

step "terminating them without waiting, then reading the volume from outside"
t=$(now_ms)
for id in "${workers[@]}"; do snapctl sandbox terminate "$id" >/dev/null & done
wait_terminations() {
    for job in $(jobs -p); do
        case " ${pids[*]} " in *" $job "*) continue ;; esac
        wait "$job"
    done
}
wait_terminations
timed "terminate 10 sandboxes (volumes committed)" "$t"
t=$(now_ms)
snapctl volume ls-files results | sed 's/^/   /'
for n in 1 5 10; do echo "   $(snapctl volume get results "worker-$n.txt")"; done
timed "list and read the results from outside" "$t"
count=$(snapctl volume ls-files results | grep -c worker- || true)
[ "$count" = 10 ] || { echo "expected 10 results in the volume, found $count" >&2; exit 1; }

step "checkpointing a running process with its memory, and resuming it"
counter='x=$(head -c 2000000 /dev/urandom | base64); i=0
trap '"'"'echo "memory $(printf %s "$x" | md5sum | cut -c1-12), count $i"'"'"' USR1
while true; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done'
live=$(snapctl sandbox create --image debian -- bash -c "$counter")
sleep 2
snapctl sandbox exec "$live" -- sh -c 'kill -USR1 1'
sleep 0.3
echo "   before:  $(tr -d '\0' < "$STRATA_HOME/sandboxes/$live/log" | tail -1)"
t=$(now_ms)
memory=$(snapctl sandbox snapshot "$live" --memory | head -1)
timed "memory + filesystem snapshot of a running sandbox" "$t"
snapctl snapshot show "$memory" | sed 's/^/   /'
snapctl sandbox terminate "$live" >/dev/null
t=$(now_ms)
resumed=$(snapctl sandbox create --from-snapshot "$memory")
timed "resume it in a new sandbox" "$t"
sleep 0.5
snapctl sandbox exec "$resumed" -- sh -c 'kill -USR1 1'
sleep 0.3
echo "   resumed: $(tr -d '\0' < "$STRATA_HOME/sandboxes/$resumed/log" | tail -1)  (the same memory; the count went on)"

step "what is running"
snapctl sandbox ls
t=$(now_ms)
snapctl sandbox terminate "$resumed" >/dev/null
snapctl sandbox terminate "$base" >/dev/null
timed "terminate the last two" "$t"

step "timings"
printf '%s\n' "${timings[@]}"
