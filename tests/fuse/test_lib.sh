# shellcheck shell=bash
# Shared prologue of the FUSE tests (sourced). Each test gets a fresh temp dir, its own
# cluster on free ports, and a trap that unmounts, detaches, kills and removes everything,
# also on failure (printing the logs first).
set -euo pipefail

FUSE_TEST_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${ATOMDISK_BIN_DIR:=$FUSE_TEST_REPO/build/bin}"
export ATOMDISK_BIN_DIR

# Exit 77 (ctest: skipped) only when FUSE is genuinely unavailable here.
if [ ! -c /dev/fuse ]; then
  echo "SKIP: /dev/fuse is absent"
  exit 77
fi

# shellcheck source=../../scripts/lib/cluster.sh
source "$FUSE_TEST_REPO/scripts/lib/cluster.sh"

TEST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/atomdisk-fuse-test.XXXXXX")
cluster_install_trap
cluster_register_cleanup "rm -rf '$TEST_DIR'"
cluster_register_cleanup 'fuse_test_dump_logs'

fuse_test_dump_logs() {
  [ "${rc:-0}" -eq 0 ] && return 0
  local f
  for f in "$TEST_DIR"/*.log "$TEST_DIR"/cluster/*.log; do
    [ -f "$f" ] || continue
    echo "----- $f (last 30 lines)" >&2
    tail -30 "$f" >&2
  done
}

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

step() { echo "== $*"; }

# Starts a cluster of 3 nodes with SECTORS (default 16384 = 64 MiB) and mounts it on
# $TEST_DIR/mnt with extra atomdisk-fuse ARGS. Sets MNT, DISK.
start_cluster_and_mount() {
  local sectors=${1:-16384}
  shift || true
  cluster_create "$TEST_DIR/cluster" 3 "$sectors"
  cluster_start_all
  MNT=$TEST_DIR/mnt
  cluster_mount "$MNT" "$@"
  # shellcheck disable=SC2034  # for the test script
  DISK=$MNT/disk
}

# dd wrappers: direct I/O in whole MiB.
write_direct() { dd if="$1" of="$2" bs=1M oflag=direct conv=notrunc status=none; }
read_direct() { dd if="$1" of="$2" bs=1M iflag=direct count="$3" status=none; }

# Writes LEN bytes from SRC (at SRC_OFF) into DST at OFF, without truncating DST.
put_bytes() {  # SRC SRC_OFF DST OFF LEN
  dd if="$1" of="$3" bs="$5" count=1 skip="$2" seek="$4" iflag=skip_bytes oflag=seek_bytes \
    conv=notrunc status=none
}
