#!/usr/bin/env bash
# The cluster benchmark of docs/BENCHMARKS.md: 3 nodes on loopback, 4 KiB reads and writes
# through one node at 1, 16 and 64 operations in flight, and in the same run the physical
# floor (loopback round trip with 4 KiB, 4 KiB write+fdatasync on the data_dirs' disk).
#
#   scripts/bench-cluster.sh [--duration S] [--runs N] [--dir DIR] [--inflight "1 16 64"]
#
# Each cell is run N times (default 3) and the median is reported, interleaving the cells so
# drift on a noisy machine hits all of them alike. Prints a Markdown table for
# docs/BENCHMARKS.md. Builds nothing: run scripts/test.sh or a build first (BUILD_DIR, default
# build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
duration=5 runs=3 dir="" inflights="1 16 64"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --inflight) inflights="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench-cluster: unknown argument $1" >&2; exit 2 ;;
  esac
done
export ATOMDISK_BIN_DIR="${ATOMDISK_BIN_DIR:-$root/${BUILD_DIR:-build}/bin}"
for b in atomdiskd atomdisk atomdisk-physlimits; do
  [ -x "$ATOMDISK_BIN_DIR/$b" ] || { echo "bench-cluster: $ATOMDISK_BIN_DIR/$b missing: build first" >&2; exit 2; }
done
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-bench.XXXXXX)"
cluster_create "$dir/cluster" 3 262144
cluster_start_all

echo "# machine: $(nproc) cores, $(uname -r), disk of $dir: $(df --output=source "$dir" | tail -1)" >&2
phys="$("$ATOMDISK_BIN_DIR/atomdisk-physlimits" --dir "$dir" --iterations 4000 --json)"

results="$dir/results.jsonl"
: > "$results"
for run in $(seq 1 "$runs"); do
  for inflight in $inflights; do
    for kind in write read; do
      ratio=1; [ "$kind" = read ] && ratio=0
      # Reads go to sectors written in the write cell, so they read real data.
      out="$("$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" --node 1 bench \
        --write-ratio "$ratio" --inflight "$inflight" --duration "$duration" --sectors 65536 \
        --seed "$run" --json)"
      echo "{\"run\":$run,\"inflight\":$inflight,\"kind\":\"$kind\",\"r\":$(echo "$out" | tr -d '\n')}" >> "$results"
      echo "bench-cluster: run $run, $kind at $inflight in flight: $(echo "$out" | grep -m1 '"ops_per_s"' | tr -d ' ,')" >&2
    done
  done
done

python3 - "$results" "$phys" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
phys = json.loads(sys.argv[2])
def med(xs): return statistics.median(xs)
print("| op | in flight | ops/s | MB/s | p50 ms | p99 ms | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
cells = {}
for r in rows: cells.setdefault((r["kind"], r["inflight"]), []).append(r["r"])
for (kind, inflight), rs in sorted(cells.items(), key=lambda kv: (kv[0][0] != "write", kv[0][1])):
    print(f"| {kind} | {inflight} | {med([x['ops_per_s'] for x in rs]):,.0f} | "
          f"{med([x['mb_per_s'] for x in rs]):.1f} | {med([x['latency']['p50_ms'] for x in rs]):.3f} | "
          f"{med([x['latency']['p99_ms'] for x in rs]):.3f} | {sum(x['errors'] for x in rs)} |")
rtt = phys["loopback_rtt_4k"]; fs1 = phys["write_fdatasync_4k_x1"]; fs3 = phys["write_fdatasync_4k_x3"]
print()
print("| physical floor (same run) | p50 us | p99 us |")
print("| --- | ---: | ---: |")
for name, v in (("loopback round trip, 4 KiB", rtt), ("4 KiB write + fdatasync, 1 stream", fs1),
                ("4 KiB write + fdatasync, 3 streams", fs3)):
    print(f"| {name} | {v['p50_us']:.1f} | {v['p99_us']:.1f} |")
floor_us = 2 * rtt["p50_us"] + fs1["p50_us"]
w1 = cells.get(("write", 1))
if w1:
    p50 = med([x['latency']['p50_ms'] for x in w1]) * 1000
    print()
    print(f"Write at 1 in flight: p50 {p50:.0f} us = {p50 / floor_us:.2f}x the floor "
          f"(2 round trips + 1 fdatasync = {floor_us:.0f} us).")
PY
