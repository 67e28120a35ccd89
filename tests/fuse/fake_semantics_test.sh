#!/usr/bin/env bash
# The FUSE layer alone, over the in-memory fake client (no daemons): errno for operations a
# fixed device refuses, truthful stat/statfs, discard writes zeros, fsync, EIO on a lost
# quorum within the timeout and recovery without a remount.
source "$(dirname "$0")/test_lib.sh"

MNT=$TEST_DIR/mnt
mkdir -p "$MNT"
"$ATOMDISK_BIN_DIR/atomdisk-fuse-fake" --sectors 2048 --latency-us 100 \
  --down-file "$TEST_DIR/down" "$MNT" -o timeout=1 >"$TEST_DIR/fake.log" 2>&1 &
# shellcheck disable=SC2034  # read by cluster_unmount
CLUSTER_MOUNT_PID[$MNT]=$!
cluster_register_cleanup "cluster_unmount '$MNT'"
for _ in $(seq 1 100); do [ -e "$MNT/disk" ] && break; sleep 0.05; done
DISK=$MNT/disk
size=$((2048 * 4096))

expect_fail() {  # ERRNO-TEXT COMMAND...
  local want=$1 out
  shift
  if out=$("$@" 2>&1); then fail "'$*' succeeded"; fi
  [[ "$out" == *"$want"* ]] || fail "'$*': expected '$want', got '$out'"
}
step "refused operations"
expect_fail "Operation not permitted" truncate -s 4096 "$DISK"
expect_fail "Operation not permitted" touch "$MNT/other"
expect_fail "Operation not permitted" mkdir "$MNT/d"
expect_fail "Operation not permitted" rm "$DISK"
expect_fail "Operation not permitted" mv "$DISK" "$MNT/x"
expect_fail "Operation not permitted" chmod 0644 "$DISK"
expect_fail "Operation not permitted" truncate -s 0 "$DISK"
sh -c "echo x > '$DISK'" || fail "redirection into disk (O_TRUNC is ignored) must succeed"
[ "$(head -c 2 "$DISK")" = "x" ] || fail "redirection did not write at offset 0"
expect_fail "File too large" fallocate -l $((size + 4096)) "$DISK"
truncate -s "$size" "$DISK" || fail "truncate to the same size must succeed"
fallocate -l "$size" "$DISK" || fail "fallocate within the size must succeed"
step "stat and statfs"
[ "$(stat -c %s "$DISK")" = "$size" ] || fail "size"
[ "$(stat -f -c '%S %b %f' "$MNT")" = "4096 2048 0" ] || fail "statfs: $(stat -f -c '%S %b %f' "$MNT")"
[ "$(ls "$MNT")" = "disk" ] || fail "directory listing"
step "punch hole writes zeros (partial sectors at both ends)"
head -c 64K /dev/urandom >"$TEST_DIR/data"
dd if="$TEST_DIR/data" of="$DISK" bs=64K oflag=direct conv=notrunc status=none
fallocate -p -o 1000 -l 20000 "$DISK"
cp "$TEST_DIR/data" "$TEST_DIR/model"
fallocate -p -o 1000 -l 20000 "$TEST_DIR/model"
cmp <(head -c 64K "$DISK") "$TEST_DIR/model" || fail "punch hole"
step "fsync"
dd if="$TEST_DIR/data" of="$DISK" bs=4k conv=notrunc,fsync status=none || fail "fsync"
step "lost quorum: EIO within the timeout, then recovery"
touch "$TEST_DIR/down"
sleep 0.2
start=$(date +%s%N)
expect_fail "Input/output error" dd if="$TEST_DIR/data" of="$DISK" bs=4k count=1 \
  oflag=direct conv=notrunc status=none
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
((elapsed_ms < 3000)) || fail "EIO took $elapsed_ms ms"
rm "$TEST_DIR/down"
sleep 0.2
dd if="$TEST_DIR/data" of="$DISK" bs=4k count=1 oflag=direct conv=notrunc status=none ||
  fail "no recovery"
echo "PASS"
