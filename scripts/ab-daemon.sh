#!/usr/bin/env bash
# Side-by-side A/B of two atomdiskd binaries: one 3-node cluster on loopback per side, each
# round starts side A's cluster with daemon A and measures it, then side B's with daemon B
# (the order alternates every round, so drift on a noisy machine hits both alike), each with
# the same `atomdisk bench` cells through node 1. Prints a Markdown table of medians and the
# ratios B/A: throughput, latency, and the CPU time the three daemons spent per operation
# (user + system, from /proc), which other people's load on a shared machine moves far less,
# and the same for the `atomdisk bench` client (bash's `time`: the whole process, start-up
# included).
#
#   scripts/ab-daemon.sh --a PATH/atomdiskd --b PATH/atomdiskd [--rounds N] [--duration S]
#       [--cells "write:1 write:64 read:64"] [--sectors K] [--dir DIR] [--cli PATH/atomdisk]
#       [--scrape-b] [--cli-a PATH/atomdisk] [--cli-b PATH/atomdisk]
#       [--tls-a off|require] [--tls-b off|require]
#
# --tls-a/--tls-b: each side's cluster setting (docs/TLS.md); both default to off, the only
# setting builds before TLS know. With --a and --b the same binary, --tls-b require measures
# what TLS costs (docs/BENCHMARKS.md).
# --scrape-b gives side B's nodes a metrics_address and scrapes GET /metrics of all three
# once a second while B's cells run (the cost of a Prometheus scraper; with --a and --b the
# same binary, docs/BENCHMARKS.md "Metrics endpoint").
# Defaults: 3 rounds of 3 s per cell over 65,536 sectors. Every round uses its own 65,536
# sectors of a device of rounds x 65,536 (fresh, so writes go to never-written sectors, as
# in scripts/bench-cluster.sh), and reads go to what that round's write cells wrote. The
# clusters are made once, not per round: deleting data files costs minutes on some disks.
# The CLI is BUILD_DIR/bin/atomdisk (BUILD_DIR defaults to build) unless --cli says otherwise;
# --cli-a/--cli-b give each side its own (to measure a change in the client library: the same
# daemon as --a and --b, the old and the new CLI).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_a="" bin_b="" rounds=3 duration=3 cells="write:1 write:64 read:64" sectors=65536 dir=""
cli="" cli_a="" cli_b="" scrape_b=0 tls_a=off tls_b=off
while [ $# -gt 0 ]; do
  case "$1" in
    --a) bin_a="$2"; shift 2 ;;
    --b) bin_b="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --cells) cells="$2"; shift 2 ;;
    --sectors) sectors="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --cli) cli="$2"; shift 2 ;;
    --cli-a) cli_a="$2"; shift 2 ;;
    --cli-b) cli_b="$2"; shift 2 ;;
    --scrape-b) scrape_b=1; shift ;;
    --tls-a) tls_a="$2"; shift 2 ;;
    --tls-b) tls_b="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "ab-daemon: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$cli" ] || cli="$root/${BUILD_DIR:-build}/bin/atomdisk"
[ -n "$cli_a" ] || cli_a="$cli"
[ -n "$cli_b" ] || cli_b="$cli"
for b in "$bin_a" "$bin_b" "$cli_a" "$cli_b"; do
  [ -n "$b" ] && [ -x "$b" ] || { echo "ab-daemon: need --a, --b (atomdiskd binaries) and an atomdisk CLI; missing: '$b'" >&2; exit 2; }
done
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-ab.XXXXXX)"
mkdir -p "$dir"
results="$dir/results.jsonl"
: >"$results"

# One bin folder per side: the daemon under test next to that side's CLI.
for side in a b; do
  mkdir -p "$dir/bin-$side"
  bin_var="bin_$side"
  cli_var="cli_$side"
  ln -sf "$(readlink -f "${!bin_var}")" "$dir/bin-$side/atomdiskd"
  ln -sf "$(readlink -f "${!cli_var}")" "$dir/bin-$side/atomdisk"
done

# One cluster per side, with its own folder and ports, created once.
for side in a b; do
  (
    tls_var="tls_$side"
    export ATOMDISK_BIN_DIR="$dir/bin-$side" CLUSTER_NO_TRAP=1 CLUSTER_TLS="${!tls_var}"
    # shellcheck source=scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    cluster_create "$dir/cluster-$side" 3 $((rounds * sectors)) >/dev/null
    if [ "$side" = b ] && [ "$scrape_b" = 1 ]; then
      : >"$dir/cluster-b/metrics-ports"
      for r in 1 2 3; do
        p=$(cluster_free_port)
        sed -i "s|^address = \"127.0.0.1:${CLUSTER_PORT[$r]}\"\$|&\nmetrics_address = \"127.0.0.1:$p\"|" \
          "$dir/cluster-b/cluster.toml"
        echo "$p" >>"$dir/cluster-b/metrics-ports"
      done
      [ "$(grep -c '^metrics_address' "$dir/cluster-b/cluster.toml")" = 3 ] ||
        { echo "ab-daemon: could not add metrics_address lines" >&2; exit 1; }
    fi
    declare -p CLUSTER_PORT | sed "s/^declare -A/declare -gA/" >"$dir/cluster-$side/ports"
  )
done

# CPU time (user + system, clock ticks) the started daemons have used so far. Throughput on
# a shared machine swings with other people's load; CPU per operation hardly does.
clk_tck=$(getconf CLK_TCK)
daemon_cpu_ticks() {
  local t=0 pid
  for pid in "${CLUSTER_PID[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$t"
}

# Scrapes GET /metrics of every port in FILE once a second (bash /dev/tcp, like a Prometheus
# at a 1 s interval) until killed; fails loudly if a scrape does not answer 200.
scrape_loop() {  # FILE
  local p
  while :; do
    while read -r p; do
      exec 8<>"/dev/tcp/127.0.0.1/$p"
      printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&8
      case "$(cat <&8)" in "HTTP/1.1 200"*) ;; *) echo "ab-daemon: scrape of port $p failed" >&2 ;; esac
      exec 8<&-
    done <"$1"
    sleep 1
  done
}

run_side() {  # SIDE ROUND: start that side's cluster, run every cell once, stop it
  local side=$1 round=$2
  (
    export ATOMDISK_BIN_DIR="$dir/bin-$side"
    # shellcheck source=scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    # shellcheck disable=SC1090,SC2034
    source "$dir/cluster-$side/ports"
    CLUSTER_DIR="$dir/cluster-$side" CLUSTER_N=3 CLUSTER_CONFIG="$dir/cluster-$side/cluster.toml"
    cluster_install_trap
    cluster_register_cleanup "cluster_stop_all"
    cluster_start_all
    for cell in $cells; do
      local kind=${cell%%:*} inflight=${cell##*:} ratio=1 out cpu0 cpu1 client_cpu scraper=""
      [ "$kind" = read ] && ratio=0
      if [ -f "$dir/cluster-$side/metrics-ports" ]; then
        scrape_loop "$dir/cluster-$side/metrics-ports" &
        scraper=$!
      fi
      cpu0=$(daemon_cpu_ticks)
      # The client's own CPU (user + system) from bash's `time`; its stderr goes to a log.
      out="$( { TIMEFORMAT='%3U %3S'; time "$dir/bin-$side/atomdisk" --config "$CLUSTER_CONFIG" --node 1 \
        bench --write-ratio "$ratio" --inflight "$inflight" --duration "$duration" \
        --sectors "$sectors" --first $(((round - 1) * sectors)) --seed "$round" --json \
        2>>"$dir/cli-$side.log"; } 2>"$dir/cli-time")"
      cpu1=$(daemon_cpu_ticks)
      client_cpu=$(awk '{print $1 + $2}' "$dir/cli-time")
      [ -z "$scraper" ] || { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
      echo "{\"side\":\"$side\",\"round\":$round,\"cell\":\"$cell\",\"cpu_s\":$(((cpu1 - cpu0) * 1000 / clk_tck))e-3,\"client_cpu_s\":$client_cpu,\"r\":$(echo "$out" | tr -d '\n')}" >>"$results"
      echo "ab-daemon: $(date +%T) round $round, $side, $cell: $(echo "$out" | grep -m1 '"ops_per_s"' | tr -d ' ,')" >&2
    done
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
print("| op | in flight | A ops/s | B ops/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms | "
      "A daemon CPU us/op | B daemon CPU us/op | B/A | A client CPU us/op | B client CPU us/op | "
      "B/A | errors A/B |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def cpu_per_op(rs, key="cpu_s"): return med([r[key] / max(r["r"]["ops"], 1) * 1e6 for r in rs])
for cell in cells:
    ra = [r for r in rows if r["cell"] == cell and r["side"] == "a"]
    rb = [r for r in rows if r["cell"] == cell and r["side"] == "b"]
    if not ra or not rb: continue
    a, b = [r["r"] for r in ra], [r["r"] for r in rb]
    ca, cb = cpu_per_op(ra), cpu_per_op(rb)
    la, lb = cpu_per_op(ra, "client_cpu_s"), cpu_per_op(rb, "client_cpu_s")
    oa, ob = med([x["ops_per_s"] for x in a]), med([x["ops_per_s"] for x in b])
    kind, inflight = cell.split(":")
    print(f"| {kind} | {inflight} | {oa:,.0f} | {ob:,.0f} | {ob / oa:.2f} | "
          f"{med([x['latency']['p50_ms'] for x in a]):.3f} | {med([x['latency']['p50_ms'] for x in b]):.3f} | "
          f"{med([x['latency']['p99_ms'] for x in a]):.3f} | {med([x['latency']['p99_ms'] for x in b]):.3f} | "
          f"{ca:.1f} | {cb:.1f} | {cb / ca:.2f} | {la:.1f} | {lb:.1f} | {lb / la:.2f} | "
          f"{sum(x['errors'] for x in a)}/{sum(x['errors'] for x in b)} |")
PY
echo "ab-daemon: results in $results; remove $dir when done (its data files are large)" >&2
