#!/usr/bin/env bash
# The resync benchmark of docs/BENCHMARKS.md ("Resync (issue 7)"): 3 nodes on loopback;
# node 3 is stopped, N MiB are written through nodes 1 and 2, node 3 is started again and the
# time until its resync pass is done is measured (a "restart" pass: it kept its disk; a
# "join" pass: its data_dir was emptied, so it pulls everything before it votes). Each pass
# runs once alone and once with foreground I/O (`atomdisk bench` through node 1, 16 in
# flight, half writes) for as long as it lasts; the same bench on the idle cluster is the
# baseline.
#
#   scripts/bench-resync.sh [--bin DIR] [--mib N] [--runs N] [--rate MB] [--dir DIR]
#
#   --bin DIR   atomdiskd and atomdisk (default build/bin; builds nothing)
#   --mib N     data written while node 3 is down (default 256 = 65,536 sectors)
#   --runs N    repetitions; the median is reported (default 3)
#   --rate MB   resync_rate_mb in cluster.toml (default 0 = unlimited)
#   --dir DIR   work folder (default a new /var/tmp/atomdisk-bench-resync.XXXXXX, removed)
#
# Pass time and bytes come from the node's own log line ("... pass done: ... (B bytes)
# pulled in S s", docs/RESYNC.md); "wall" is from starting node 3 until `atomdisk status`
# shows the pass done (and, for a join, the node voting). Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/bin" mib=256 runs=3 rate=0 dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --mib) mib="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench-resync: unknown argument $1" >&2; exit 2 ;;
  esac
done
export ATOMDISK_BIN_DIR="$bin"
for b in atomdiskd atomdisk; do
  [ -x "$bin/$b" ] || { echo "bench-resync: $bin/$b missing: build first" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "bench-resync: needs python3" >&2; exit 2; }
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
own_dir=""
if [ -z "$dir" ]; then
  dir="$(mktemp -d /var/tmp/atomdisk-bench-resync.XXXXXX)"
  own_dir=$dir
fi
mkdir -p "$dir"
if [ -n "$own_dir" ]; then
  cluster_register_cleanup "echo 'bench-resync: removing $own_dir (slow on a discard-mounted disk)' >&2; rm -rf '$own_dir'"
fi

# The device is the data, rounded up to whole resync windows (16,384 sectors = 64 MiB).
sectors=$(( (mib * 256 + 16383) / 16384 * 16384 ))
bench_sectors=$(( mib * 256 < 65536 ? mib * 256 : 65536 ))
data="$dir/data.bin"
head -c "$((mib * 1024 * 1024))" /dev/urandom >"$data"
results="$dir/results.jsonl"
: >"$results"
echo "# machine: $(nproc) cores, $(uname -r), disk of $dir: $(df --output=source "$dir" | tail -1)" >&2

cli() { "$bin/atomdisk" --config "$CLUSTER_CONFIG" "$@"; }

# node3_info: node 3's kInfo JSON on one line (empty if it does not answer).
node3_info() {
  cli --node 3 status --json --wait 1000 2>/dev/null |
    python3 -c 'import json,sys
try:
    n = json.load(sys.stdin)["nodes"][0]
    print(json.dumps(n.get("info", {})) if n.get("up") else "")
except Exception:
    print("")' || true
}

# pass_done JSON: node 3 votes and has finished a pass since it started.
pass_done() {
  python3 -c 'import json,sys
i = json.loads(sys.argv[1]); r = i.get("resync", {})
sys.exit(0 if i.get("voting") and not r.get("active", True) and r.get("passes_done", 0) >= 1 else 1)' "$1"
}

wait_all_voting() {
  local deadline=$((SECONDS + 60))
  until cli status --json 2>/dev/null | python3 -c 'import json,sys
sys.exit(0 if json.load(sys.stdin)["quorum"]["voting"] == 3 else 1)'; do
    ((SECONDS < deadline)) || { echo "bench-resync: the cluster does not vote" >&2; return 1; }
    sleep 0.2
  done
}

# fg_loop OUT: 1 s benches through node 1 until OUT.stop exists.
fg_loop() {
  local out=$1 seed=1
  while [ ! -e "$out.stop" ]; do
    cli --node 1 bench --write-ratio 0.5 --inflight 16 --duration 1 --sectors "$bench_sectors" \
      --seed "$seed" --json 2>/dev/null | tr -d '\n' >>"$out" || true
    echo >>"$out"
    seed=$((seed + 1))
  done
}

# measure RUN KIND FG: starts node 3 (stopped, data_dir prepared) and waits for its pass.
measure() {
  local run=$1 kind=$2 fg=$3 t0 t1 info="" fgpid="" fgfile
  fgfile="$dir/fg-$run-$kind-$fg.jsonl"
  : >"$fgfile"
  rm -f "$fgfile.stop"
  local logstart
  logstart=$(wc -l <"$CLUSTER_DIR/node-3.log" 2>/dev/null || echo 0)
  t0=$(date +%s.%N)
  cluster_start_node 3
  if [ "$fg" = 1 ]; then
    fg_loop "$fgfile" &
    fgpid=$!
  fi
  local deadline=$((SECONDS + 600))
  while :; do
    info=$(node3_info)
    if [ -n "$info" ] && pass_done "$info"; then break; fi
    ((SECONDS < deadline)) || { echo "bench-resync: node 3's pass did not finish in 600 s" >&2; tail -20 "$CLUSTER_DIR/node-3.log" >&2; return 1; }
    sleep 0.1
  done
  t1=$(date +%s.%N)
  if [ -n "$fgpid" ]; then
    touch "$fgfile.stop"
    wait "$fgpid" || true
  fi
  local passline
  passline=$(tail -n +"$((logstart + 1))" "$CLUSTER_DIR/node-3.log" | grep -E '(join|resync) pass done' | tail -1 || true)
  python3 - "$run" "$kind" "$fg" "$t0" "$t1" "$info" "$passline" "$fgfile" >>"$results" <<'PY'
import json, re, sys
run, kind, fg, t0, t1, info, line, fgfile = sys.argv[1:9]
r = json.loads(info)["resync"]
m = re.search(r"\((\d+) bytes\) pulled in ([0-9.]+) s", line)
pass_s = float(m.group(2)) if m else None
bytes_pulled = int(m.group(1)) if m else r.get("bytes_pulled", 0)
ops = secs = errors = 0
for l in open(fgfile):
    l = l.strip()
    if not l:
        continue
    try:
        b = json.loads(l)
    except ValueError:
        continue
    ops += b["ops"]; secs += b["seconds"]; errors += b["errors"]
print(json.dumps({"run": int(run), "kind": kind, "fg": fg == "1", "wall_s": float(t1) - float(t0),
                  "pass_s": pass_s, "bytes": bytes_pulled, "sectors": r.get("sectors_pulled", 0),
                  "fg_ops_per_s": ops / secs if secs else None, "fg_errors": errors}))
PY
  tail -1 "$results" | sed 's/^/bench-resync: /' >&2
}

for run in $(seq 1 "$runs"); do
  cluster_create "$dir/run-$run" 3 "$sectors"
  # Top-level keys go before the first [[nodes]] table.
  sed -i "0,/^\[\[nodes\]\]/s//resync_rate_mb = $rate\n\n[[nodes]]/" "$CLUSTER_CONFIG"
  cluster_start_all
  wait_all_voting
  for fg in 0 1; do
    # Restart: node 3 keeps its disk and misses a whole new copy of the data.
    cluster_stop_node 3
    cli --node 1 --node 2 upload "$data" >/dev/null
    measure "$run" restart "$fg"
  done
  for fg in 0 1; do
    # Join: node 3 comes back with an empty data_dir and pulls everything.
    cluster_stop_node 3
    # A rename, not rm: on a disk mounted with online discard, deleting hundreds of MB
    # takes minutes and would load the disk under the measurement. Removed at the end.
    mv "$CLUSTER_DIR/data/3" "$dir/trash-$run-$fg"
    measure "$run" join "$fg"
  done
  # Baseline: the same foreground bench on the same data, with nothing resyncing (3 x 1 s).
  base="$dir/base-$run.jsonl"
  : >"$base"
  for seed in 1 2 3; do
    cli --node 1 bench --write-ratio 0.5 --inflight 16 --duration 1 --sectors "$bench_sectors" \
      --seed "$seed" --json 2>/dev/null | tr -d '\n' >>"$base"
    echo >>"$base"
  done
  python3 - "$run" "$base" >>"$results" <<'PY'
import json, sys
bs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
print(json.dumps({"run": int(sys.argv[1]), "kind": "baseline",
                  "fg_ops_per_s": sum(b["ops"] for b in bs) / sum(b["seconds"] for b in bs)}))
PY
  cluster_stop_all
done

python3 - "$results" "$mib" "$rate" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mib, rate = sys.argv[2], sys.argv[3]
med = statistics.median
base = med([r["fg_ops_per_s"] for r in rows if r["kind"] == "baseline"])
print(f"{mib} MiB behind, resync_rate_mb = {rate} ({'unlimited' if float(rate) == 0 else rate + ' MB/s'}), "
      f"median of {len([r for r in rows if r['kind'] == 'baseline'])} runs; foreground: "
      f"`atomdisk bench` through node 1, 16 in flight, 50% writes; idle baseline {base:,.0f} ops/s")
print()
print("| pass | foreground I/O | pulled MB | pass s | MB/s | wall s | fg ops/s | fg vs idle | fg errors |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for kind in ("restart", "join"):
    for fg in (False, True):
        rs = [r for r in rows if r["kind"] == kind and r["fg"] == fg]
        if not rs:
            continue
        mb = med([r["bytes"] / 1e6 for r in rs])
        ps = [r["pass_s"] for r in rs if r["pass_s"]]
        pass_s = med(ps) if ps else float("nan")
        rate_mb = med([r["bytes"] / 1e6 / r["pass_s"] for r in rs if r["pass_s"]]) if ps else float("nan")
        wall = med([r["wall_s"] for r in rs])
        fgo = [r["fg_ops_per_s"] for r in rs if r["fg_ops_per_s"]]
        fg_s = f"{med(fgo):,.0f}" if fg and fgo else "-"
        fg_r = f"{med(fgo) / base:.2f}" if fg and fgo and base else "-"
        errs = sum(r["fg_errors"] for r in rs) if fg else "-"
        print(f"| {kind} | {'yes' if fg else 'no'} | {mb:.0f} | {pass_s:.2f} | {rate_mb:.0f} | "
              f"{wall:.2f} | {fg_s} | {fg_r} | {errs} |")
PY
