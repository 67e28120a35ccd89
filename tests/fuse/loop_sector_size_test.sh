#!/usr/bin/env bash
# docs/FUSE.md's loop device, `losetup --direct-io=on --sector-size 4096`, works with
# mkfs.ext4's defaults (which then pick 4096-byte blocks), and the filesystem on it never
# makes atomdisk read-modify-write a sector; with the loop device's default 512-byte
# sectors it does. Over the in-memory fake client, whose counters say how many sectors
# were read-modify-written.
source "$(dirname "$0")/test_lib.sh"

MNT=$TEST_DIR/mnt
fs=$TEST_DIR/fs

# run_ext4 LOSETUP_OPTS...: mounts the fake, puts ext4 on a loop device with those options,
# writes files, unmounts everything; sets RMW to the fake's read-modify-written sector
# count. (Not in a $(...) subshell: the cleanups it registers must reach the trap.)
run_ext4() {
  local pid dev
  mkdir -p "$MNT"
  "$ATOMDISK_BIN_DIR/atomdisk-fuse-fake" --sectors 16384 "$MNT" >"$TEST_DIR/fake.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2034  # read by cluster_unmount
  CLUSTER_MOUNT_PID[$MNT]=$pid
  cluster_register_cleanup "cluster_unmount '$MNT'"
  for _ in $(seq 1 100); do [ -e "$MNT/disk" ] && break; sleep 0.05; done
  [ -e "$MNT/disk" ] || fail "the fake did not mount: $(cat "$TEST_DIR/fake.log")"
  dev=$(cluster_losetup "$MNT/disk" --direct-io=on "$@")
  mkfs.ext4 -q -F "$dev" >&2
  cluster_mount_fs "$dev" "$fs"
  for i in $(seq 1 20); do head -c $((i * 7777)) /dev/urandom >"$fs/f$i"; done
  echo "small" >"$fs/small"
  sync
  umount "$fs"
  e2fsck -fn "$dev" >&2 || fail "e2fsck found problems (losetup $*)"
  [ "$#" = 0 ] || [ "$(blockdev --getss "$dev")" = 4096 ] || fail "logical sector size $(blockdev --getss "$dev")"
  losetup -d "$dev"
  cluster_unmount "$MNT"
  RMW=$(sed -n 's/.* \([0-9]*\) rmw,.*/\1/p' "$TEST_DIR/fake.log")
}

step "losetup --direct-io=on --sector-size 4096, mkfs.ext4 with its defaults"
run_ext4 --sector-size 4096
echo "read-modify-written sectors: $RMW"
[ "$RMW" = 0 ] || fail "$RMW sectors read-modify-written with 4096-byte loop sectors"
step "losetup --direct-io=on alone (512-byte sectors), for contrast"
run_ext4
echo "read-modify-written sectors: $RMW"
if [ -z "$RMW" ] || [ "$RMW" -eq 0 ]; then
  fail "expected read-modify-writes with 512-byte loop sectors, counted '$RMW'"
fi
echo "PASS"
