#!/usr/bin/env bash
# Side-by-side A/B of two atomdiskd binaries: for each round, a fresh 3-node cluster on
# loopback runs daemon A, then a fresh one runs daemon B (the order alternates every round,
# so drift on a noisy machine hits both alike), each measured with the same `atomdisk bench`
# cells through node 1. Prints a Markdown table of medians and the ratios B/A.
#
#   scripts/ab-daemon.sh --a PATH/atomdiskd --b PATH/atomdiskd [--rounds N] [--duration S]
#       [--cells "write:1 write:64 read:64"] [--sectors K] [--device-sectors N] [--dir DIR]
#       [--cli PATH/atomdisk]
#
# Defaults: 3 rounds of 3 s per cell, writes and reads spread over 65,536 sectors of a
# 262,144-sector device (fresh data files, so most writes allocate blocks, as in
# scripts/bench-cluster.sh); reads go to the sectors the write cells wrote. The CLI is
# BUILD_DIR/bin/atomdisk (BUILD_DIR defaults to build) unless --cli says otherwise.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_a="" bin_b="" rounds=3 duration=3 cells="write:1 write:64 read:64" sectors=65536
device_sectors=262144 dir="" cli=""
while [ $# -gt 0 ]; do
  case "$1" in
    --a) bin_a="$2"; shift 2 ;;
    --b) bin_b="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --cells) cells="$2"; shift 2 ;;
    --sectors) sectors="$2"; shift 2 ;;
    --device-sectors) device_sectors="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --cli) cli="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "ab-daemon: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$cli" ] || cli="$root/${BUILD_DIR:-build}/bin/atomdisk"
for b in "$bin_a" "$bin_b" "$cli"; do
  [ -n "$b" ] && [ -x "$b" ] || { echo "ab-daemon: need --a, --b (atomdiskd binaries) and an atomdisk CLI; missing: '$b'" >&2; exit 2; }
done
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-ab.XXXXXX)"
mkdir -p "$dir"
results="$dir/results.jsonl"
: >"$results"

# One bin folder per side: the daemon under test next to the shared CLI.
for side in a b; do
  mkdir -p "$dir/bin-$side"
  bin_var="bin_$side"
  ln -sf "$(readlink -f "${!bin_var}")" "$dir/bin-$side/atomdiskd"
  ln -sf "$(readlink -f "$cli")" "$dir/bin-$side/atomdisk"
done

run_side() {  # SIDE ROUND: a fresh cluster with that side's daemon, every cell once
  local side=$1 round=$2
  (
    export ATOMDISK_BIN_DIR="$dir/bin-$side"
    # shellcheck source=scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    cluster_create "$dir/run-$round-$side" 3 "$device_sectors" >/dev/null
    cluster_start_all
    for cell in $cells; do
      local kind=${cell%%:*} inflight=${cell##*:} ratio=1 out
      [ "$kind" = read ] && ratio=0
      out="$("$cli" --config "$CLUSTER_CONFIG" --node 1 bench --write-ratio "$ratio" \
        --inflight "$inflight" --duration "$duration" --sectors "$sectors" --seed "$round" --json)"
      echo "{\"side\":\"$side\",\"round\":$round,\"cell\":\"$cell\",\"r\":$(echo "$out" | tr -d '\n')}" >>"$results"
      echo "ab-daemon: round $round, $side, $cell: $(echo "$out" | grep -m1 '"ops_per_s"' | tr -d ' ,')" >&2
    done
    cluster_stop_all
    rm -rf "$CLUSTER_DIR/data"
  )
}

for round in $(seq 1 "$rounds"); do
  if ((round % 2)); then run_side a "$round"; run_side b "$round"; else run_side b "$round"; run_side a "$round"; fi
done

python3 - "$results" "$cells" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cells = sys.argv[2].split()
med = statistics.median
print("| op | in flight | A ops/s | B ops/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms | errors A/B |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for cell in cells:
    a = [r["r"] for r in rows if r["cell"] == cell and r["side"] == "a"]
    b = [r["r"] for r in rows if r["cell"] == cell and r["side"] == "b"]
    if not a or not b: continue
    oa, ob = med([x["ops_per_s"] for x in a]), med([x["ops_per_s"] for x in b])
    kind, inflight = cell.split(":")
    print(f"| {kind} | {inflight} | {oa:,.0f} | {ob:,.0f} | {ob / oa:.2f} | "
          f"{med([x['latency']['p50_ms'] for x in a]):.3f} | {med([x['latency']['p50_ms'] for x in b]):.3f} | "
          f"{med([x['latency']['p99_ms'] for x in a]):.3f} | {med([x['latency']['p99_ms'] for x in b]):.3f} | "
          f"{sum(x['errors'] for x in a)}/{sum(x['errors'] for x in b)} |")
PY
