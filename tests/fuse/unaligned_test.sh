#!/usr/bin/env bash
# Unaligned and partial-block writes round-trip exactly, including the last partial block
# and concurrent writers sharing sectors (read-modify-write is serialized per sector).
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 4096  # 16 MiB
size=$((4096 * 4096))
head -c 1M /dev/urandom >"$TEST_DIR/src"
cp "$TEST_DIR/src" "$TEST_DIR/src2"
truncate -s "$size" "$TEST_DIR/model"  # what the disk must hold (all zeros at first)

both() {  # SRC_OFF OFF LEN: the same write to the disk and to the model
  put_bytes "$TEST_DIR/src" "$1" "$DISK" "$2" "$3"
  put_bytes "$TEST_DIR/src" "$1" "$TEST_DIR/model" "$2" "$3"
}
step "offset 100, 10,000 bytes"
both 0 100 10000
cmp <(dd if="$DISK" bs=1 skip=100 count=10000 status=none) \
  <(head -c 10000 "$TEST_DIR/src") || fail "offset 100 write differs"
step "the last partial block: the final 3,000 bytes"
both 20000 $((size - 3000)) 3000
step "two bytes across a sector boundary; a single byte"
both 30000 4095 2
both 40000 $((5 * 4096 + 7)) 1
step "a write past the end is cut short (ENOSPC beyond)"
if dd if="$TEST_DIR/src" of="$DISK" bs=5000 count=1 seek=$((size - 1000)) oflag=seek_bytes \
  conv=notrunc status=none 2>"$TEST_DIR/enospc.err"; then
  fail "a write past the end succeeded"
fi
grep -q "No space left" "$TEST_DIR/enospc.err" || fail "expected ENOSPC: $(cat "$TEST_DIR/enospc.err")"
put_bytes "$TEST_DIR/src" 0 "$TEST_DIR/model" $((size - 1000)) 1000  # the part that fit

step "32 concurrent writers of 300 bytes each into the same 3 sectors, 3 rounds"
for round in 1 2 3; do
  pids=()
  for k in $(seq 0 31); do
    off=$((8192 + 100 + k * 300))
    both $((round * 50000 + k * 300)) "$off" 300 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
done
step "comparing the whole device with the model"
cmp <(dd if="$DISK" bs=1M iflag=direct status=none) "$TEST_DIR/model" ||
  fail "device differs from the model"
echo "PASS"
