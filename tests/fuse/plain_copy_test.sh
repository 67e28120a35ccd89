#!/usr/bin/env bash
# `disk` behaves like a block device for the commands a user types first: plain `dd of=disk`
# (no conv=notrunc), `cp img disk` and `cat img > disk` overwrite the start of the device in
# place (O_TRUNC is ignored), leave the bytes past the image alone and keep the size; a
# truncation to the device's own size changes nothing, to any other size fails with EPERM.
source "$(dirname "$0")/test_lib.sh"

sectors=4096  # 16 MiB
start_cluster_and_mount "$sectors"
size=$((sectors * 4096))
len=$((5 * 1048576 + 10000))  # not a whole number of blocks: the last one is patched

step "filling the device with a known pattern"
head -c "$size" /dev/urandom >"$TEST_DIR/before"
write_direct "$TEST_DIR/before" "$DISK"

# check_copy NAME IMAGE: the device holds IMAGE at its start, the old bytes after it, and
# still has its size.
check_copy() {
  local name=$1 image=$2 n
  n=$(stat -c %s "$image")
  [ "$(stat -c %s "$DISK")" = "$size" ] || fail "$name: size is now $(stat -c %s "$DISK")"
  cmp -n "$n" "$image" "$DISK" || fail "$name: the image is not at the start of the device"
  cmp <(tail -c +$((n + 1)) "$TEST_DIR/before") <(tail -c +$((n + 1)) "$DISK") ||
    fail "$name: bytes past the image changed"
}

step "dd if=img of=disk bs=1M (no conv=notrunc)"
head -c "$len" /dev/urandom >"$TEST_DIR/img1"
dd if="$TEST_DIR/img1" of="$DISK" bs=1M status=none || fail "plain dd failed"
check_copy dd "$TEST_DIR/img1"

step "cp img disk"
head -c "$len" /dev/urandom >"$TEST_DIR/img2"
cp "$TEST_DIR/img2" "$DISK" || fail "cp failed"
check_copy cp "$TEST_DIR/img2"

step "cat img > disk"
head -c "$len" /dev/urandom >"$TEST_DIR/img3"
cat "$TEST_DIR/img3" >"$DISK" || fail "shell redirection failed"
check_copy cat "$TEST_DIR/img3"

step "cp --sparse=never of an image with holes writes the zeros too"
head -c 1M /dev/urandom >"$TEST_DIR/sparse"
truncate -s 3M "$TEST_DIR/sparse"
head -c 1M /dev/urandom >>"$TEST_DIR/sparse"
truncate -s 6M "$TEST_DIR/sparse"
cp --sparse=never "$TEST_DIR/sparse" "$DISK" || fail "cp --sparse=never failed"
check_copy "cp --sparse=never" "$TEST_DIR/sparse"

step "truncation: to the own size changes nothing, to another size is EPERM"
cp "$DISK" "$TEST_DIR/now"
truncate -s "$size" "$DISK" || fail "truncate to the device's own size failed"
for bad in 0 4096 $((size - 4096)) $((size + 4096)); do
  if out=$(truncate -s "$bad" "$DISK" 2>&1); then fail "truncate -s $bad succeeded"; fi
  [[ "$out" == *"Operation not permitted"* ]] || fail "truncate -s $bad: '$out'"
done
[ "$(stat -c %s "$DISK")" = "$size" ] || fail "size changed by truncate"
cmp "$TEST_DIR/now" "$DISK" || fail "truncate changed the data"

step "open with O_TRUNC keeps size and data; ftruncate through it to the own size works"
python3 - "$DISK" "$size" <<'PY' || fail "O_TRUNC open"
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_TRUNC)
assert os.fstat(fd).st_size == size, os.fstat(fd).st_size
os.ftruncate(fd, size)
assert len(os.pread(fd, 4096, size - 4096)) == 4096
os.close(fd)
PY
cmp "$TEST_DIR/now" "$DISK" || fail "O_TRUNC changed the data"
echo "PASS"
