#!/usr/bin/env bash
# What slow readers cost a node: one atomdiskd (a 1-node cluster on a free 127.0.0.1 port),
# then N client connections that each ask for K extent reads of 1 MiB and never read the
# answers (atomdisk-slow-readers, tests/bench/slow_readers.cc). Prints the node's RSS and
# descriptors before, while they are held (at 2 s, 8 s and 14 s: past the node's 10 s
# deadline for a queued response, docs/PROTOCOL.md), and after they are dropped, and whether
# a good client is served throughout.
#
#   scripts/bench-slow-readers.sh [--bin DIR] [--connections N] [--reads K] [--dir DIR]
#
# --bin: the folder holding atomdiskd and atomdisk (default BUILD_DIR/bin, BUILD_DIR=build),
# so two builds can be compared; atomdisk-slow-readers always comes from BUILD_DIR/bin.
# Loopback only; everything it started goes on any exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/${BUILD_DIR:-build}/bin" connections=100 reads=48 dir=""
tool="$root/${BUILD_DIR:-build}/bin/atomdisk-slow-readers"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --reads) reads="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench-slow-readers: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$connections" "$reads"; do
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] ||
    { echo "bench-slow-readers: --connections and --reads take whole numbers >= 1" >&2; exit 2; }
done
for b in "$bin/atomdiskd" "$bin/atomdisk" "$tool"; do
  [ -x "$b" ] || { echo "bench-slow-readers: $b is missing (build first, or --bin)" >&2; exit 2; }
done
ulimit -n $((connections + 1024)) 2>/dev/null || true

export ATOMDISK_BIN_DIR="$bin" CLUSTER_NO_TRAP=1
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-slowreaders.XXXXXX)"
readers=""
trap '[ -z "$readers" ] || kill "$readers" 2>/dev/null; cluster_cleanup; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
cluster_create "$dir/cluster" 1 65536 >/dev/null
cluster_start_all >/dev/null

sample() { cluster_sample_node 1 "$1" 22; }

echo "bench-slow-readers: $("$bin/atomdiskd" --version 2>&1 | head -1), $connections readers x $reads MiB asked"
sample "before"
"$tool" --config "$CLUSTER_CONFIG" --node 1 --connections "$connections" --reads "$reads" \
  --hold 16 >"$dir/readers.out" 2>&1 &
readers=$!
t0=$SECONDS
for at in 2 8 14; do
  sleep $((at - (SECONDS - t0)))
  sample "held, $at s"
done
wait "$readers" || true
readers=""
cat "$dir/readers.out"
sleep 1
sample "dropped, 1 s later"
