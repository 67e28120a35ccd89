#!/usr/bin/env bash
# Two mounts talking to different nodes: a write through one is read through the other at
# once (direct I/O: no page cache to go stale).
source "$(dirname "$0")/test_lib.sh"

cluster_create "$TEST_DIR/cluster" 3 4096
cluster_start_all
cluster_mount "$TEST_DIR/a" --node 1
cluster_mount "$TEST_DIR/b" --node 2
A=$TEST_DIR/a/disk
B=$TEST_DIR/b/disk
step "4 MiB written through A (node 1), read through B (node 2)"
head -c 4M /dev/urandom >"$TEST_DIR/data"
write_direct "$TEST_DIR/data" "$A"
read_direct "$B" "$TEST_DIR/back" 4
cmp "$TEST_DIR/data" "$TEST_DIR/back" || fail "B does not see A's write"
step "50 alternating single-block writes, each read at once through the other mount"
for i in $(seq 1 50); do
  head -c 4096 /dev/urandom >"$TEST_DIR/blk"
  if ((i % 2)); then w=$A r=$B; else w=$B r=$A; fi
  dd if="$TEST_DIR/blk" of="$w" bs=4096 seek=$((i % 7)) oflag=direct conv=notrunc status=none
  dd if="$r" of="$TEST_DIR/got" bs=4096 skip=$((i % 7)) count=1 iflag=direct status=none
  cmp "$TEST_DIR/blk" "$TEST_DIR/got" || fail "round $i: the other mount read stale data"
done
step "buffered reads (no O_DIRECT) through B see A's latest write too"
head -c 4096 /dev/urandom >"$TEST_DIR/blk"
dd if="$TEST_DIR/blk" of="$A" bs=4096 seek=3 oflag=direct conv=notrunc status=none
cmp <(dd if="$B" bs=4096 skip=3 count=1 status=none) "$TEST_DIR/blk" || fail "stale buffered read"
echo "PASS"
