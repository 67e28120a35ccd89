#!/usr/bin/env bash
# Side-by-side A/B of two builds through FUSE: one 3-node cluster on loopback per side, made
# and prefilled once; every round starts side A's cluster with A's atomdiskd, mounts it with
# A's atomdisk-fuse and runs the fio jobs, then does the same for side B (the order
# alternates every round, so drift on a noisy machine hits both alike). Prints a Markdown
# table of medians and the ratios B/A.
#
#   sudo scripts/ab-fuse.sh --a DIR --b DIR [--rounds N] [--runtime S] [--size MIB]
#       [--jobs "randwrite-fdatasync-16j randread-16j ..."] [--dir DIR]
#       [--tls-a off|require] [--tls-b off|require]
#
# DIR holds atomdiskd, atomdisk and atomdisk-fuse (a build's bin/). Jobs (fio, O_DIRECT, the
# same shapes as scripts/bench-fuse.sh): seqwrite, seqread (1 MiB, 1 job),
# randwrite-fdatasync-1j, randwrite-fdatasync-16j, randwrite-dsync-16j, randread-1j,
# randread-16j (4 KiB). Defaults: 3 rounds, 5 s per job, 256 MiB, every job.
# --tls-a/--tls-b: each side's cluster setting (docs/TLS.md); both default to off, the only
# one builds before TLS know. The same DIR on both sides with --tls-b require measures what
# TLS costs through the mount (docs/BENCHMARKS.md, "TLS").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir_a="" dir_b="" rounds=3 runtime=5 size_mib=256 dir="" tls_a=off tls_b=off
jobs="seqwrite seqread randwrite-fdatasync-1j randwrite-fdatasync-16j randwrite-dsync-16j randread-1j randread-16j"
while [ $# -gt 0 ]; do
  case "$1" in
    --a) dir_a="$2"; shift 2 ;;
    --b) dir_b="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --runtime) runtime="$2"; shift 2 ;;
    --size) size_mib="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --tls-a) tls_a="$2"; shift 2 ;;
    --tls-b) tls_b="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "ab-fuse: unknown argument $1" >&2; exit 2 ;;
  esac
done
for d in "$dir_a" "$dir_b"; do
  for b in atomdiskd atomdisk atomdisk-fuse; do
    if [ -z "$d" ] || [ ! -x "$d/$b" ]; then echo "ab-fuse: need --a and --b, bin folders holding $b (missing in '$d')" >&2; exit 2; fi
  done
done
command -v fio >/dev/null || { echo "ab-fuse: fio is not installed (scripts/install-deps.sh)" >&2; exit 1; }

job_args() {  # JOB -> fio arguments
  case "$1" in
    seqwrite) echo "--rw=write --bs=1M --ioengine=psync --numjobs=1" ;;
    seqread) echo "--rw=read --bs=1M --ioengine=psync --numjobs=1" ;;
    randwrite-fdatasync-1j) echo "--rw=randwrite --bs=4k --fdatasync=1 --ioengine=psync --numjobs=1" ;;
    randwrite-fdatasync-16j) echo "--rw=randwrite --bs=4k --fdatasync=1 --ioengine=psync --numjobs=16" ;;
    randwrite-dsync-16j) echo "--rw=randwrite --bs=4k --sync=dsync --ioengine=psync --numjobs=16" ;;
    randread-1j) echo "--rw=randread --bs=4k --ioengine=psync --numjobs=1" ;;
    randread-16j) echo "--rw=randread --bs=4k --ioengine=psync --numjobs=16" ;;
    *) return 1 ;;
  esac
}
for job in $jobs; do job_args "$job" >/dev/null || { echo "ab-fuse: unknown job $job" >&2; exit 2; }; done

[ -n "$dir" ] || dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/atomdisk-ab-fuse.XXXXXX")"
mkdir -p "$dir"
results="$dir/results.txt"
: >"$results"

# One cluster per side, with its own folder and ports, created once.
for side in a b; do
  (
    d="dir_$side"
    ATOMDISK_BIN_DIR="$(readlink -f "${!d}")"
    tls_var="tls_$side"
    export ATOMDISK_BIN_DIR CLUSTER_NO_TRAP=1 CLUSTER_TLS="${!tls_var}"
    # shellcheck source=scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    cluster_create "$dir/cluster-$side" 3 $((size_mib * 256)) >/dev/null
    declare -p CLUSTER_PORT | sed "s/^declare -A/declare -gA/" >"$dir/cluster-$side/ports"
  )
done

run_side() {  # SIDE ROUND
  local side=$1 round=$2
  (
    d="dir_$side"
    ATOMDISK_BIN_DIR="$(readlink -f "${!d}")"
    export ATOMDISK_BIN_DIR
    # shellcheck source=scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    # shellcheck disable=SC1090,SC2034
    source "$dir/cluster-$side/ports"
    CLUSTER_DIR="$dir/cluster-$side" CLUSTER_N=3 CLUSTER_CONFIG="$dir/cluster-$side/cluster.toml"
    cluster_install_trap
    cluster_register_cleanup "cluster_stop_all"
    cluster_start_all
    local mp="$dir/mnt-$side"
    cluster_mount "$mp"
    if [ "$round" = 1 ]; then
      dd if=/dev/zero of="$mp/disk" bs=1M count="$size_mib" oflag=direct conv=notrunc status=none
    fi
    local job json iops p50
    for job in $jobs; do
      json="$dir/$side-$round-$job.json"
      # shellcheck disable=SC2046
      fio --name="$job" --filename="$mp/disk" --size="${size_mib}M" --direct=1 --time_based \
        --runtime="$runtime" --group_reporting --percentile_list=50:99 --output-format=json \
        --output="$json" $(job_args "$job") >/dev/null 2>"$dir/fio.err" ||
        { echo "ab-fuse: fio $job on side $side failed:" >&2; cat "$dir/fio.err" >&2; exit 1; }
      read -r iops p50 < <(python3 - "$json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = "write" if j["write"]["iops"] > j["read"]["iops"] else "read"
p50 = j[d]["clat_ns"]["percentile"]["50.000000"] / 1000
if d == "write" and j.get("sync", {}).get("lat_ns", {}).get("percentile"):
    p50 += j["sync"]["lat_ns"]["percentile"]["50.000000"] / 1000
print(f"{j[d]['iops']:.0f} {p50:.0f}")
PY
)
      echo "$side $round $job $iops $p50" >>"$results"
      echo "ab-fuse: $(date +%T) round $round, $side, $job: $iops IOPS, p50 $p50 us" >&2
    done
    cluster_unmount "$mp"
  )
}

for round in $(seq 1 "$rounds"); do
  if ((round % 2)); then run_side a "$round"; run_side b "$round"; else run_side b "$round"; run_side a "$round"; fi
done

python3 - "$results" "$jobs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
print("| job | A IOPS | B IOPS | B/A | A p50 us | B p50 us | rounds |")
print("|---|---:|---:|---:|---:|---:|---:|")
for job in sys.argv[2].split():
    a = [r for r in rows if r[2] == job and r[0] == "a"]
    b = [r for r in rows if r[2] == job and r[0] == "b"]
    if not a or not b: continue
    ia, ib = med([float(r[3]) for r in a]), med([float(r[3]) for r in b])
    print(f"| {job} | {ia:,.0f} | {ib:,.0f} | {ib / ia if ia else 0:.2f} | "
          f"{med([float(r[4]) for r in a]):,.0f} | {med([float(r[4]) for r in b]):,.0f} | {min(len(a), len(b))} |")
PY
echo "ab-fuse: results in $results; remove $dir when done (its data files are large)" >&2
