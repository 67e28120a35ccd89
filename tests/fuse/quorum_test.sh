#!/usr/bin/env bash
# With no quorum, I/O fails with EIO after the -o timeout (bounded), and works again once the
# quorum returns, without a remount.
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 1024 -o timeout=2
head -c 8192 /dev/urandom >"$TEST_DIR/blk"
dd if="$TEST_DIR/blk" of="$DISK" bs=4096 oflag=direct conv=notrunc status=none
step "kill -9 nodes 2 and 3: a write must fail with EIO within a few seconds"
cluster_kill9 2
cluster_kill9 3
start=$(date +%s%N)
if dd if="$TEST_DIR/blk" of="$DISK" bs=4096 count=1 seek=10 oflag=direct conv=notrunc \
  status=none 2>"$TEST_DIR/err"; then
  fail "a write succeeded without a quorum"
fi
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
cat "$TEST_DIR/err"
grep -q "Input/output error" "$TEST_DIR/err" || fail "expected EIO"
echo "write failed after $elapsed_ms ms"
((elapsed_ms < 6000)) || fail "took $elapsed_ms ms with timeout=2"
step "restart nodes 2 and 3: I/O works again on the same mount"
cluster_start_node 2
cluster_start_node 3
cluster_wait_listening 20 2 3
ok=
for _ in $(seq 1 20); do
  if dd if="$TEST_DIR/blk" of="$DISK" bs=4096 count=2 seek=20 oflag=direct conv=notrunc \
    status=none 2>/dev/null; then
    ok=1
    break
  fi
  sleep 0.5
done
[ -n "$ok" ] || fail "writes still fail after the quorum returned"
dd if="$DISK" of="$TEST_DIR/got" bs=4096 skip=20 count=2 iflag=direct status=none
cmp "$TEST_DIR/blk" "$TEST_DIR/got" || fail "read back differs"
echo "PASS"
