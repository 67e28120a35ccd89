#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# atomdisk in two minutes, on one machine: installs what is missing, builds, creates a
# 3-node cluster on 127.0.0.1 in a fresh temporary folder, mounts it with FUSE, writes a
# file into the device with dd and reads it back, shows `atomdisk status`, crashes a node
# and shows that I/O still works, restarts it, and removes everything again.
#
#   scripts/demo.sh            # run the demo; everything is cleaned up, even on failure
#   scripts/demo.sh --keep     # leave the cluster running and mounted; prints how to stop it
#   scripts/demo.sh --no-build # use the binaries in BUILD_DIR/bin as they are
#
# Environment: BUILD_DIR (default: build in this repository), JOBS (default nproc),
# TMPDIR (where the demo folder is made). Needs /dev/fuse; run as root on a fresh Debian 12
# (or as a user with sudo for install-deps.sh and access to /dev/fuse).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEP=0
BUILD=1
SECTORS=16384          # 64 MiB device
PAYLOAD_MIB=8          # written at offset 0 with every node up
PAYLOAD2_MIB=4         # written at offset 16 MiB with node 1 down
CRASH_RANK=1           # the mount's preferred node: its I/O must fail over
DEMO_DIR=""
MNT=""
# Test-only: make the demo fail right after the named step ("mount", "crash", ...) to check
# that the cleanup works (tests/scripts/demo_test.sh).
INJECT_FAILURE="${ATOMDISK_DEMO_INJECT_FAILURE:-}"

usage() { sed -n '3,14p' "$0" | sed 's/^# \{0,1\}//'; }

say() {
  if [ -t 1 ]; then
    printf '\n\033[1m== %s\033[0m\n' "$*"
  else
    printf '\n== %s\n' "$*"
  fi
}

# Prints a command the way a user would type it (binaries without their folder, the demo
# folder as $DEMO), then runs it.
run() {
  local line="$*"
  line="${line//"$ATOMDISK_BIN_DIR/"/}"
  if [ -n "$DEMO_DIR" ]; then line="${line//"$DEMO_DIR"/\$DEMO}"; fi
  printf '$ %s\n' "$line"
  "$@"
}

die() {
  echo "demo: $*" >&2
  exit 1
}

checkpoint() {
  if [ "$INJECT_FAILURE" = "$1" ]; then
    die "failing after step '$1' on request (ATOMDISK_DEMO_INJECT_FAILURE)"
  fi
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --keep) KEEP=1 ;;
      --no-build) BUILD=0 ;;
      -h | --help) usage; exit 0 ;;
      *) echo "demo: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
  case "$BUILD_DIR" in
    /*) ;;
    *) BUILD_DIR="$PWD/$BUILD_DIR" ;;
  esac
  export ATOMDISK_BIN_DIR="$BUILD_DIR/bin"
}

build() {
  if [ "$BUILD" = 1 ]; then
    say "Installing missing packages (scripts/install-deps.sh) and building into $BUILD_DIR"
    bash "$ROOT/scripts/install-deps.sh"
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
      cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja >/dev/null
    fi
    ninja -C "$BUILD_DIR" -j "${JOBS:-$(nproc)}" atomdiskd atomdisk atomdisk-fuse
  fi
  local b
  for b in atomdiskd atomdisk atomdisk-fuse; do
    [ -x "$ATOMDISK_BIN_DIR/$b" ] || die "$ATOMDISK_BIN_DIR/$b is missing (build it, or drop --no-build)"
  done
  [ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, pass the device in"
  command -v fusermount3 >/dev/null || die "fusermount3 is missing (apt-get install fuse3)"
}

# True if anything is mounted at or below $1.
mounted_below() {
  awk -v d="$1" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# The last cleanup step: never recurse into a folder that still holds a mount.
remove_demo_dir() {
  [ -n "$DEMO_DIR" ] && [ -d "$DEMO_DIR" ] || return 0
  if mounted_below "$DEMO_DIR"; then
    echo "demo: something is still mounted below $DEMO_DIR; not removing it" >&2
    return 1
  fi
  rm -rf "$DEMO_DIR"
}

on_exit() {
  local rc=$?
  # A second Ctrl-C must not cut the cleanup short (it takes a few seconds at most).
  trap - EXIT
  trap '' INT TERM
  if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
    exit 0
  fi
  if [ "$rc" != 0 ] && [ -n "$DEMO_DIR" ]; then
    echo "demo: failed (exit $rc); the node and mount logs:" >&2
    tail -n 5 "$DEMO_DIR"/cluster/node-*.log "$MNT.log" >&2 2>/dev/null || true
  fi
  [ -n "$DEMO_DIR" ] && echo "demo: cleaning up $DEMO_DIR" >&2
  cluster_cleanup
  remove_demo_dir || rc=1
  exit "$rc"
}

start_cluster() {
  DEMO_DIR="$(mktemp -d -t atomdisk-demo.XXXXXX)"
  MNT="$DEMO_DIR/mnt"
  # cluster.sh undoes what it registers newest first, so this runs last.
  cluster_register_cleanup remove_demo_dir || die "cluster.sh is not loaded"
  say "A 3-node cluster of $((SECTORS * 4096 / 1048576)) MiB in $DEMO_DIR (\$DEMO)"
  cluster_create "$DEMO_DIR/cluster" 3 "$SECTORS" || die "cluster_create failed"
  [ -f "$DEMO_DIR/cluster/init.log" ] && cat "$DEMO_DIR/cluster/init.log"
  run cat "$CLUSTER_CONFIG"
  checkpoint init

  say "Starting the nodes: atomdiskd --config cluster.toml --rank N (one process per node)"
  cluster_start_all || die "cluster_start_all failed"
  local rank
  for rank in 1 2 3; do
    echo "node $rank: pid ${CLUSTER_PID[$rank]}, listening on $(cluster_node_address "$rank"), log \$DEMO/cluster/node-$rank.log"
  done
  checkpoint start

  say "Mounting the device with FUSE: $MNT/disk"
  # shellcheck disable=SC2016  # printed literally, as a user would type it
  printf '$ atomdisk-fuse --config $DEMO/cluster/cluster.toml $DEMO/mnt -f &\n'
  cluster_mount "$MNT" || die "cluster_mount failed"
  run ls -l "$MNT"
  checkpoint mount
}

# write_and_check OFFSET_MIB SIZE_MIB NAME: writes SIZE_MIB of random data at OFFSET_MIB
# into the device with direct I/O, reads it back, compares the SHA-256 sums.
write_and_check() {
  local offset=$1 size=$2 name=$3
  head -c "$((size * 1048576))" /dev/urandom >"$DEMO_DIR/$name"
  run dd if="$DEMO_DIR/$name" of="$MNT/disk" bs=1M seek="$offset" oflag=direct conv=notrunc,fsync status=none
  check_readback "$offset" "$size" "$name"
}

# check_readback OFFSET_MIB SIZE_MIB NAME: reads the range back and compares it with NAME.
check_readback() {
  local offset=$1 size=$2 name=$3 want got
  run dd if="$MNT/disk" of="$DEMO_DIR/$name.back" bs=1M skip="$offset" count="$size" iflag=direct status=none
  want=$(sha256sum <"$DEMO_DIR/$name" | cut -d' ' -f1)
  got=$(sha256sum <"$DEMO_DIR/$name.back" | cut -d' ' -f1)
  rm -f "$DEMO_DIR/$name.back"
  if [ "$want" != "$got" ]; then
    die "read back $size MiB at ${offset} MiB: sha256 $got, expected $want"
  fi
  echo "sha256 $want: ${size} MiB at offset ${offset} MiB read back intact"
}

status() {
  local rc=0
  run "$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" status || rc=$?
  # 0: a majority is up; 1: the quorum is lost. The demo always keeps a majority.
  [ "$rc" = 0 ] || die "atomdisk status says the quorum is lost (exit $rc)"
}

# The other nodes reconnect to a restarted peer with a backoff of up to a second or two;
# wait (at most 10 s) until every node reports all its peer links up, for a tidy status.
wait_peers_connected() {
  local deadline=$((SECONDS + 10)) connected
  while ((SECONDS < deadline)); do
    connected=$("$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" status 2>/dev/null |
      grep -c 'peers 2/2 connected' || true)
    [ "$connected" -ge 3 ] && return 0
    sleep 0.2
  done
  return 0
}

exercise() {
  say "Writing $PAYLOAD_MIB MiB with dd and reading it back"
  write_and_check 0 "$PAYLOAD_MIB" payload1
  checkpoint write

  say "Cluster status"
  status

  say "Crashing node $CRASH_RANK (SIGKILL): the mount fails over to the others"
  printf '$ kill -9 %s\n' "${CLUSTER_PID[$CRASH_RANK]}"
  cluster_kill9 "$CRASH_RANK" || die "cluster_kill9 failed"
  checkpoint crash
  status
  echo "Reading the first file back and writing a second one with 2 of 3 nodes up:"
  check_readback 0 "$PAYLOAD_MIB" payload1
  write_and_check 16 "$PAYLOAD2_MIB" payload2

  say "Restarting node $CRASH_RANK"
  cluster_start_node "$CRASH_RANK" || die "cluster_start_node failed"
  cluster_wait_listening 20 "$CRASH_RANK" || die "cluster_wait_listening failed"
  wait_peers_connected
  status
  echo "Node $CRASH_RANK missed the second write; reads still return the newest data:"
  check_readback 0 "$PAYLOAD_MIB" payload1
  check_readback 16 "$PAYLOAD2_MIB" payload2
  checkpoint restart
}

# --keep: a script that stops the cluster and removes the folder, and how to use it.
keep() {
  local stop="$DEMO_DIR/stop.sh" rank pids=""
  for rank in "${!CLUSTER_PID[@]}"; do pids+=" ${CLUSTER_PID[$rank]}"; done
  {
    echo '#!/usr/bin/env bash'
    echo "# Stops the atomdisk demo cluster in $DEMO_DIR and removes the folder."
    echo 'set -euo pipefail'
    printf 'dir=%q\nmnt=%q\nfuse_pid=%q\nnode_pids=%q\n' "$DEMO_DIR" "$MNT" \
      "${CLUSTER_MOUNT_PID[$MNT]:-}" "${pids# }"
    cat <<'EOF'
# A pid is still ours while it lives and its command line names the demo folder.
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$dir/"; }
wait_gone() {
  local i
  for i in $(seq 150); do ours "$1" || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
mounted_below() { awk -v d="$1" 'index($2, d) == 1 { f = 1 } END { exit !f }' /proc/self/mounts; }
if mounted_below "$mnt"; then fusermount3 -u "$mnt" || umount -l "$mnt"; fi
if [ -n "$fuse_pid" ]; then wait_gone "$fuse_pid"; fi
for pid in $node_pids; do if ours "$pid"; then kill -TERM "$pid"; fi; done
for pid in $node_pids; do wait_gone "$pid"; done
if mounted_below "$dir/"; then
  echo "still mounted below $dir; not removing it" >&2
  exit 1
fi
rm -rf "$dir"
echo "atomdisk demo stopped and removed"
EOF
  } >"$stop"
  chmod +x "$stop"
  say "The cluster keeps running (--keep)"
  cat <<EOF
Device:  $MNT/disk ($((SECTORS * 4096 / 1048576)) MiB; use direct I/O, e.g.
           dd if=$MNT/disk bs=4k count=1 iflag=direct | od -A d -t x1 | head
         or put a file system on it: mkfs.ext4 and mount -o loop)
Status:  $ATOMDISK_BIN_DIR/atomdisk --config $CLUSTER_CONFIG status
CLI:     $ATOMDISK_BIN_DIR/atomdisk --config $CLUSTER_CONFIG read 0 --count 1 --hex
Logs:    $DEMO_DIR/cluster/node-{1,2,3}.log, $MNT.log
Nodes:  $pids (atomdiskd), mount: ${CLUSTER_MOUNT_PID[$MNT]:-?} (atomdisk-fuse)
Stop and remove everything:
  $stop
EOF
}

main() {
  parse_args "$@"
  build
  # Our own trap (below) instead of the library's, so that --keep can keep the cluster.
  export CLUSTER_NO_TRAP=1
  # shellcheck source=lib/cluster.sh
  source "$ROOT/scripts/lib/cluster.sh"
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_cluster
  exercise
  if [ "$KEEP" = 1 ]; then
    keep
  else
    say "Done: every check passed; cleaning up"
  fi
}

main "$@"
