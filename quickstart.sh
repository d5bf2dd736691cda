#!/usr/bin/env bash
# Strata's main job. For now (the chunk store): ingest a real directory tree
# (default /usr/share) into a fresh store, read it back, verify every file,
# and print throughput and dedup ratio; then a short tour of `snapctl`.
#   ./quickstart.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo build --release --locked -p strata-benches -p snapshotter
dir=${1:-/usr/share}
target/release/strata-bench demo "$dir"

echo
echo "snapctl tour (scratch data directory):"
home=$(mktemp -d /tmp/strata-quickstart.XXXXXX)
trap 'rm -rf "$home"' EXIT
snapctl() { echo "+ snapctl $*" >&2; target/release/snapctl --home "$home/store" "$@"; }
snapctl store init
file=$(find "$dir" -type f -size +100k 2>/dev/null | head -n 1)
id=$(snapctl blob put "$file")
snapctl blob get "$id" "$home/copy"
cmp "$file" "$home/copy" && echo "  $file round-tripped byte for byte"
snapctl store stats
snapctl store fsck
