#!/usr/bin/env bash
# mkfs.ext4 on the disk file, loop-mount it, write and read files, unmount, e2fsck -fn clean;
# then kill -9 one node, mount again: the files are intact.
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 16384  # 64 MiB
step "mkfs.ext4 on $DISK"
mkfs.ext4 -q -F -b 4096 "$DISK"
fs=$TEST_DIR/fs
step "loop mount (losetup --direct-io=on --sector-size 4096), writing files"
dev=$(cluster_losetup "$DISK" --direct-io=on --sector-size 4096)
cluster_mount_fs "$dev" "$fs"
mkdir -p "$fs/dir"
for i in $(seq 1 16); do head -c $((i * 97 * 1024)) /dev/urandom >"$fs/dir/file$i"; done
head -c 12M /dev/urandom >"$fs/big"
echo "hello atomdisk" >"$fs/small.txt"
sync
(cd "$fs" && find . -type f -print0 | sort -z | xargs -0 md5sum) >"$TEST_DIR/sums"
umount "$fs"
losetup -d "$dev"
step "e2fsck -fn"
e2fsck -fn "$DISK" || fail "e2fsck found problems"

step "kill -9 node 1, mount again (losetup without direct I/O this time), check files"
cluster_kill9 1
dev=$(cluster_losetup "$DISK")
cluster_mount_fs "$dev" "$fs"
(cd "$fs" && md5sum --quiet -c "$TEST_DIR/sums") || fail "files differ after the node died"
echo "more after the failure" >"$fs/after.txt"
sync
umount "$fs"
losetup -d "$dev"
e2fsck -fn "$DISK" || fail "e2fsck found problems after writing with a node down"
echo "PASS"
