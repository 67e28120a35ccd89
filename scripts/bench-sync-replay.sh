#!/usr/bin/env bash
# What one recorded sync frame, replayed fast, costs a node (issue 17: a 66-byte Entries
# request replayed 94 times a second took half a node's CPU). A 3-node cluster on free
# 127.0.0.1 ports; sectors 0..4095 written (so an Entries scan of them has work to do); then,
# for --duration seconds each: nothing, and atomdisk-sync-replay sending node 1 an Entries
# request over those 4096 sectors "from node 2" --rate times a second
# (tests/bench/sync_replay.cc). In both, a client reads through node 1 one at a time
# (`atomdisk bench --write-ratio 0 --inflight 1`; node 1 coordinates them, so its CPU
# includes theirs). Prints node 1's CPU (user + system, % of one core), the client's reads/s
# and p50/p99, and node 1's sync_serve counters.
#
#   scripts/bench-sync-replay.sh [--bin DIR] [--rate N] [--duration S] [--dir DIR]
#
# --bin: the folder holding atomdiskd and atomdisk (default BUILD_DIR/bin, BUILD_DIR=build),
# so two builds can be compared; atomdisk-sync-replay always comes from BUILD_DIR/bin.
# Loopback only; everything it started goes on any exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/${BUILD_DIR:-build}/bin" rate=94 duration=8 dir=""
tool="$root/${BUILD_DIR:-build}/bin/atomdisk-sync-replay"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench-sync-replay: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$rate" "$duration"; do
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ]; then
    echo "bench-sync-replay: --rate and --duration take whole numbers >= 1" >&2
    exit 2
  fi
done
for b in "$bin/atomdiskd" "$bin/atomdisk" "$tool"; do
  [ -x "$b" ] || { echo "bench-sync-replay: $b is missing (build first, or --bin)" >&2; exit 2; }
done

export ATOMDISK_BIN_DIR="$bin" CLUSTER_NO_TRAP=1
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-syncreplay.XXXXXX)"
replay=""
trap '[ -z "$replay" ] || kill "$replay" 2>/dev/null; cluster_cleanup; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
cluster_create "$dir/cluster" 3 65536 >/dev/null
cluster_start_all >/dev/null
cli=("$bin/atomdisk" --config "$CLUSTER_CONFIG")
"${cli[@]}" bench --write-ratio 1 --first 0 --sectors 4096 --inflight 64 --duration 4 \
  >/dev/null

cpu_ticks() {  # utime + stime of node 1, in clock ticks
  sed 's/.*) //' "/proc/${CLUSTER_PID[1]}/stat" | awk '{ print $12 + $13 }'
}
hz=$(getconf CLK_TCK)

# One window: node 1's CPU and a QD1 reader's figures over --duration seconds.
window() {  # LABEL
  local t0 c0 c1 t1 out
  t0=$(date +%s.%N) c0=$(cpu_ticks)
  out=$("${cli[@]}" --node 1 bench --write-ratio 0 --first 0 --sectors 4096 --inflight 1 \
    --duration "$duration" --json)
  c1=$(cpu_ticks) t1=$(date +%s.%N)
  python3 - "$1" "$c0" "$c1" "$t0" "$t1" "$hz" "$out" <<'PY'
import json, sys
label, c0, c1, t0, t1, hz, out = sys.argv[1:]
cpu = (int(c1) - int(c0)) / int(hz) / (float(t1) - float(t0)) * 100
j = json.loads(out)
lat = j["latency"]
print(f"{label:<22} node 1 CPU {cpu:5.1f}%   reads/s {j['ops_per_s']:7.0f}   "
      f"p50 {lat['p50_ms']:6.3f} ms   p99 {lat['p99_ms']:6.3f} ms")
PY
}

echo "bench-sync-replay: $("$bin/atomdiskd" --version 2>&1 | head -1), Entries of 4096 sectors at $rate/s"
window "no replay"
"$tool" --config "$CLUSTER_CONFIG" --node 1 --as 2 --rate "$rate" --duration $((duration + 2)) \
  >"$dir/replay.out" 2>&1 &
replay=$!
sleep 1
window "replayed at $rate/s"
wait "$replay" || true
replay=""
cat "$dir/replay.out"
"${cli[@]}" --node 1 status --json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)
nodes = j.get("nodes", [j])
for n in nodes:
    info = n.get("info", n)
    s = info.get("sync_serve")
    if s is not None and info.get("rank", 1) == 1:
        print("node 1 sync_serve:", json.dumps(s))
        break
else:
    print("node 1 sync_serve: (not reported by this build)")
' || true
