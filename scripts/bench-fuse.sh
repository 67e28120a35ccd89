#!/usr/bin/env bash
# scripts/bench-fuse.sh: the same fio set, side by side in one run, on
#   bare         a local file on the same disk (O_DIRECT),
#   passthrough  that kind of file through our minimal FUSE passthrough
#                (atomdisk-bench-passthrough: low-level API, direct_io, same FUSE settings),
#   atomdisk     MOUNT/disk of a 3-node local cluster (atomdisk-fuse, default options),
# and prints a Markdown table with IOPS, MB/s, p50/p99 latency and atomdisk/passthrough
# ratios. With --options it then measures the ways around the kernel's serialization of
# direct writes to one FUSE file (see docs/FUSE.md).
#
#   scripts/bench-fuse.sh [--runtime SECONDS] [--size MIB] [--options] [--out FILE]
#
# Needs root (mounts, losetup), fio, and the binaries in $ATOMDISK_BIN_DIR (default
# build/bin). Each fio job runs --runtime seconds (default 10); the whole run takes
# about 4.5 minutes (+1.5 with --options). The 4 KiB random writes run twice: with
# fdatasync after every write, and with O_DSYNC (fio --sync=dsync), the same guarantee
# without an fsync call (on FUSE, fsync takes the file's exclusive inode lock).
set -euo pipefail

RUNTIME=10
SIZE_MIB=256
OPTIONS=
OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE_MIB=$2; shift 2 ;;
    --options) OPTIONS=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/lib/cluster.sh"
command -v fio >/dev/null || { echo "fio is not installed (scripts/install-deps.sh)" >&2; exit 1; }
for b in atomdiskd atomdisk-fuse atomdisk-bench-passthrough; do
  [ -x "$ATOMDISK_BIN_DIR/$b" ] || { echo "missing $ATOMDISK_BIN_DIR/$b: build it first" >&2; exit 1; }
done

# On the real disk (not tmpfs), like the nodes' data.
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/atomdisk-bench-fuse.XXXXXX")
cluster_install_trap
cluster_register_cleanup "rm -rf '$WORK'"
RESULTS=$WORK/results.txt
: >"$RESULTS"

# fio JSON -> "iops bw_bytes p50_us p99_us" of the direction that did the work; for jobs
# with fdatasync=1 the latency is the write's plus its fdatasync's (per percentile).
fio_summary() {
  awk '
    /^ *"(read|write|trim|sync)" : \{/ { match($0, /"[a-z]+"/); sec = substr($0, RSTART + 1, RLENGTH - 2) }
    sec != "" && /"iops" :/ && !(sec in iops) { v = $3; gsub(/,/, "", v); iops[sec] = v }
    sec != "" && /"bw_bytes" :/ && !(sec in bw) { v = $3; gsub(/,/, "", v); bw[sec] = v }
    sec != "" && /"50.000000" :/ && !(sec in p50) { v = $3; gsub(/,/, "", v); p50[sec] = v }
    sec != "" && /"99.000000" :/ && !(sec in p99) { v = $3; gsub(/,/, "", v); p99[sec] = v }
    END {
      d = (iops["write"] + 0 > iops["read"] + 0) ? "write" : "read"
      l50 = p50[d] + 0; l99 = p99[d] + 0
      if (d == "write" && ("sync" in p50)) { l50 += p50["sync"]; l99 += p99["sync"] }
      printf "%.0f %.0f %.0f %.0f\n", iops[d], bw[d], l50 / 1000, l99 / 1000
    }' "$1"
}

# run_fio TARGET FILE JOB [fio args...]: one measurement, appended to $RESULTS.
run_fio() {
  local target=$1 file=$2 job=$3
  shift 3
  local json=$WORK/$target-$job.json
  fio --name="$job" --filename="$file" --size="${SIZE_MIB}M" --direct=1 --time_based \
    --runtime="$RUNTIME" --group_reporting --percentile_list=50:99 --output-format=json \
    --output="$json" "$@" >/dev/null 2>"$WORK/fio.err" ||
    { echo "fio $job on $target failed:" >&2; cat "$WORK/fio.err" "$json" >&2; return 1; }
  local iops bw p50 p99
  read -r iops bw p50 p99 < <(fio_summary "$json")
  echo "$job $target $iops $bw $p50 $p99" >>"$RESULTS"
  printf '  %-28s %-12s %8s IOPS %8.1f MB/s  p50 %6s us  p99 %6s us\n' "$job" "$target" \
    "$iops" "$(awk -v b="$bw" 'BEGIN { print b / 1e6 }')" "$p50" "$p99" >&2
}

JOBS=(
  "seqwrite-1M --rw=write --bs=1M --ioengine=psync --numjobs=1"
  "seqread-1M --rw=read --bs=1M --ioengine=psync --numjobs=1"
  "randwrite-4k-fdatasync-1j --rw=randwrite --bs=4k --fdatasync=1 --ioengine=psync --numjobs=1"
  "randwrite-4k-fdatasync-16j --rw=randwrite --bs=4k --fdatasync=1 --ioengine=psync --numjobs=16"
  "randwrite-4k-dsync-1j --rw=randwrite --bs=4k --sync=dsync --ioengine=psync --numjobs=1"
  "randwrite-4k-dsync-16j --rw=randwrite --bs=4k --sync=dsync --ioengine=psync --numjobs=16"
  "randread-4k-1j --rw=randread --bs=4k --ioengine=psync --numjobs=1"
  "randread-4k-16j --rw=randread --bs=4k --ioengine=psync --numjobs=16"
)

mount_passthrough() {  # MOUNTPOINT [-o ...]
  local mp=$1
  shift
  mkdir -p "$mp"
  "$ATOMDISK_BIN_DIR/atomdisk-bench-passthrough" "$WORK/passthrough.img" "$mp" "$@" \
    >"$mp.log" 2>&1 &
  CLUSTER_MOUNT_PID[$mp]=$!
  cluster_register_cleanup "cluster_unmount '$mp'"
  for _ in $(seq 1 100); do [ -e "$mp/disk" ] && return 0; sleep 0.05; done
  cat "$mp.log" >&2
  return 1
}

echo "bench-fuse: ${SIZE_MIB} MiB files, ${RUNTIME} s per job, work dir $WORK" >&2
cluster_create "$WORK/cluster" 3 $((SIZE_MIB * 256))
cluster_start_all
cluster_mount "$WORK/atomdisk"
for f in bare passthrough; do
  dd if=/dev/zero of="$WORK/$f.img" bs=1M count="$SIZE_MIB" oflag=direct status=none
done
mount_passthrough "$WORK/pt"
echo "bench-fuse: prefilling the atomdisk file" >&2
dd if=/dev/zero of="$WORK/atomdisk/disk" bs=1M count="$SIZE_MIB" oflag=direct conv=notrunc status=none

declare -A FILE=([bare]=$WORK/bare.img [passthrough]=$WORK/pt/disk [atomdisk]=$WORK/atomdisk/disk)
for spec in "${JOBS[@]}"; do
  read -r job args <<<"$spec"
  for target in bare passthrough atomdisk; do
    # shellcheck disable=SC2086
    run_fio "$target" "${FILE[$target]}" "$job" $args
  done
done

if [ -n "$OPTIONS" ]; then
  echo "bench-fuse: ways around the serialized direct writes (atomdisk, 4 KiB, no fdatasync)" >&2
  A=$WORK/atomdisk/disk
  run_fio passthrough "$WORK/pt/disk" opt-psync-16j-parallel --rw=randwrite --bs=4k \
    --ioengine=psync --numjobs=16
  run_fio atomdisk "$A" opt-psync-16j-parallel --rw=randwrite --bs=4k --ioengine=psync --numjobs=16
  # O_DSYNC instead of fdatasync: an atomdisk write is durable when acknowledged, and no
  # fsync means no trip through the kernel's exclusive inode lock.
  run_fio atomdisk "$A" opt-dsync-16j --rw=randwrite --bs=4k --ioengine=psync --numjobs=16 \
    --sync=dsync
  run_fio atomdisk "$A" opt-libaio-qd16 --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16
  run_fio atomdisk "$A" opt-io_uring-qd16 --rw=randwrite --bs=4k --ioengine=io_uring --iodepth=16
  loopdev=$(cluster_losetup "$A" --direct-io=on)
  run_fio atomdisk "$loopdev" opt-loop-dio-libaio-qd16 --rw=randwrite --bs=4k --ioengine=libaio \
    --iodepth=16
  run_fio atomdisk "$loopdev" opt-loop-dio-psync-16j --rw=randwrite --bs=4k --ioengine=psync \
    --numjobs=16
  losetup -d "$loopdev"
  cluster_unmount "$WORK/atomdisk"
  cluster_mount "$WORK/atomdisk" -o no_parallel_writes
  run_fio atomdisk "$A" opt-psync-16j-serial --rw=randwrite --bs=4k --ioengine=psync --numjobs=16
  run_fio atomdisk "$A" opt-randwrite-fdatasync-16j-serial --rw=randwrite --bs=4k --fdatasync=1 \
    --ioengine=psync --numjobs=16
  cluster_unmount "$WORK/pt"
  mount_passthrough "$WORK/pt" -o no_parallel_writes
  run_fio passthrough "$WORK/pt/disk" opt-psync-16j-serial --rw=randwrite --bs=4k --ioengine=psync \
    --numjobs=16
  run_fio passthrough "$WORK/pt/disk" opt-randwrite-fdatasync-16j-serial --rw=randwrite --bs=4k \
    --fdatasync=1 --ioengine=psync --numjobs=16
fi

# The table: one row per job and target; the atomdisk row carries its ratio to passthrough.
table() {
  echo "| job | target | IOPS | MB/s | p50 us | p99 us | atomdisk / passthrough |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  awk '
    { key = $1; iops[key, $2] = $3; bw[key, $2] = $4; rows[++n] = $0 }
    END {
      for (i = 1; i <= n; i++) {
        split(rows[i], f, " ")
        ratio = ""
        if (f[2] == "atomdisk" && ((f[1], "passthrough") in iops) && iops[f[1], "passthrough"] > 0)
          ratio = sprintf("%.2f", f[3] / iops[f[1], "passthrough"])
        printf "| %s | %s | %d | %.1f | %d | %d | %s |\n", f[1], f[2], f[3], f[4] / 1e6, f[5], f[6], ratio
      }
    }' "$RESULTS"
}
{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) CPUs, $(uname -r), fio $(fio --version | sed 's/fio-//'), ${RUNTIME} s per job, ${SIZE_MIB} MiB file."
  echo
  table
} | tee "${OUT:-/dev/null}"
