#!/usr/bin/env bash
# Stopping the mount the way systemd does (fusermount3 -u, as an ExecStop would, then
# SIGTERM) while ext4 on a loop device uses the disk file: the mount keeps serving and says
# why, ext4 keeps working, and once ext4 is unmounted and the loop device detached the
# process unmounts and exits 0 by itself; e2fsck -fn then finds the filesystem clean. In
# the shutdown order (filesystem, loop device, then SIGTERM) it exits 0 at once.
# Then: SIGTERMs racing the end of a clean unmount never kill the process (exit 0 always),
# and a second signal detaches a busy mount anyway.
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 16384  # 64 MiB
pid=${CLUSTER_MOUNT_PID[$MNT]}
fs=$TEST_DIR/fs
step "ext4 on a loop device (--direct-io=on --sector-size 4096) on $DISK"
dev=$(cluster_losetup "$DISK" --direct-io=on --sector-size 4096)
mkfs.ext4 -q -F -E nodiscard "$dev"
cluster_mount_fs "$dev" "$fs"
head -c 4M /dev/urandom >"$fs/before"
sync

step "stop: fusermount3 -u (refused: busy, as an ExecStop would be), then SIGTERM (systemd's stop)"
if fusermount3 -u "$MNT" 2>"$TEST_DIR/fusermount.err"; then fail "fusermount3 -u unmounted a busy mount"; fi
grep -qi "busy" "$TEST_DIR/fusermount.err" || fail "fusermount3: $(cat "$TEST_DIR/fusermount.err")"
kill -TERM "$pid"
deadline=$((SECONDS + 10))
until grep -q "mount busy" "$MNT.log"; do
  ((SECONDS < deadline)) || fail "no 'mount busy' line in the log"
  sleep 0.1
done
grep "mount busy" "$MNT.log"
[ "$(grep -c "mount busy" "$MNT.log")" = 1 ] || fail "the busy line was logged more than once"
grep -q "mount busy (${dev#/dev/} uses disk" "$MNT.log" || fail "the busy line does not name ${dev#/dev/}"
sleep 1
cluster_pid_alive "$pid" || fail "atomdisk-fuse exited while the mount was busy"
cluster_is_mounted "$MNT" || fail "the mount was detached while busy"

step "ext4 still works"
head -c 4M /dev/urandom >"$TEST_DIR/after"
cp "$TEST_DIR/after" "$fs/after"
sync
(cd "$fs" && md5sum before after) >"$TEST_DIR/sums"
echo 3 >/proc/sys/vm/drop_caches
cmp "$TEST_DIR/after" "$fs/after" || fail "file written after SIGTERM reads back wrong"
grep -q " $fs .*\brw\b" /proc/self/mounts || fail "ext4 went read-only"

step "unmount ext4, detach the loop device: atomdisk-fuse unmounts and exits 0 by itself"
umount "$fs"
losetup -d "$dev"
deadline=$((SECONDS + 15))
while cluster_pid_alive "$pid"; do
  ((SECONDS < deadline)) || fail "atomdisk-fuse still running 15 s after the mount was released"
  sleep 0.1
done
set +e
wait "$pid"
code=$?
set -e
[ "$code" = 0 ] || fail "atomdisk-fuse exited $code, not 0"
! cluster_is_mounted "$MNT" || fail "still mounted"
grep -q "released and unmounted" "$MNT.log" || fail "no 'released' line in the log"

step "mount again: e2fsck -fn clean, files intact"
cluster_mount "$MNT"
e2fsck -fn "$DISK" || fail "e2fsck found problems"
dev=$(cluster_losetup "$DISK" --direct-io=on --sector-size 4096)
cluster_mount_fs "$dev" "$fs" -o ro
(cd "$fs" && md5sum --quiet -c "$TEST_DIR/sums") || fail "files differ"

step "shutdown order (filesystem, loop device, then SIGTERM): exit 0 at once, nothing waits"
umount "$fs"
losetup -d "$dev"
pid=${CLUSTER_MOUNT_PID[$MNT]}
kill -TERM "$pid"
set +e
timeout 5 tail --pid="$pid" -f /dev/null
wait "$pid"
code=$?
set -e
[ "$code" = 0 ] || fail "SIGTERM of an unused mount: exit $code"
! grep -q "mount busy" "$MNT.log" || fail "an unused mount was reported busy"
cluster_mount "$MNT"

# systemd's SIGTERM comes when ExecStop has returned, while the process is on its way out;
# a stream of them until it is gone hits every moment of that way (old code: killed by
# signal 15 in about one round of three).
step "fusermount3 -u, then SIGTERM after SIGTERM until the process is gone, 8 times: exit 0"
for i in $(seq 1 8); do
  pid=${CLUSTER_MOUNT_PID[$MNT]}
  fusermount3 -u "$MNT"
  while kill -TERM "$pid" 2>/dev/null; do :; done
  set +e
  wait "$pid"
  code=$?
  set -e
  [ "$code" = 0 ] || fail "round $i: atomdisk-fuse exited $code after fusermount3 -u and SIGTERM"
  cluster_mount "$MNT"
done
step "a second signal detaches a busy mount anyway and exits 0"
pid=${CLUSTER_MOUNT_PID[$MNT]}
exec 7<"$DISK"
kill -TERM "$pid"
deadline=$((SECONDS + 10))
until grep -q "mount busy (process $$ " "$MNT.log"; do
  ((SECONDS < deadline)) || fail "no 'mount busy' line naming the test shell ($$)"
  sleep 0.1
done
kill -INT "$pid"
set +e
timeout 10 tail --pid="$pid" -f /dev/null
wait "$pid"
code=$?
set -e
exec 7<&-
[ "$code" = 0 ] || fail "forced stop exited $code"
! cluster_is_mounted "$MNT" || fail "still mounted after the forced stop"
grep -q "detaching $MNT while in use" "$MNT.log" || fail "no warning about the forced detach"
echo "PASS"
