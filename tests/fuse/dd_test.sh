#!/usr/bin/env bash
# dd 64 MiB of random data in (bs=1M, oflag=direct), read it back, compare.
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 16384
step "writing 64 MiB with dd bs=1M oflag=direct"
head -c 64M /dev/urandom >"$TEST_DIR/data"
start=$(date +%s.%N)
write_direct "$TEST_DIR/data" "$DISK"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" 'BEGIN { printf "write: %.1f MiB/s\n", 64 / (e - s) }'
step "reading it back with iflag=direct"
read_direct "$DISK" "$TEST_DIR/back" 64
cmp "$TEST_DIR/data" "$TEST_DIR/back" || fail "data read back differs"
step "reading it back through the page cache path (no O_DIRECT)"
cmp <(head -c 64M "$DISK") "$TEST_DIR/data" || fail "buffered read differs"
echo "PASS"
