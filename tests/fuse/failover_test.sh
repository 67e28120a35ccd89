#!/usr/bin/env bash
# kill -9 one node while dd runs: dd completes and the data compares equal. Then measure the
# longest pause of a 4 KiB write stream while another node is killed.
source "$(dirname "$0")/test_lib.sh"

start_cluster_and_mount 16384
head -c 64M /dev/urandom >"$TEST_DIR/data"
step "dd 64 MiB, killing node 1 (the mount's preferred node) after 0.5 s"
write_direct "$TEST_DIR/data" "$DISK" &
dd_pid=$!
sleep 0.5
cluster_kill9 1
wait "$dd_pid" || fail "dd failed after a node died"
read_direct "$DISK" "$TEST_DIR/back" 64
cmp "$TEST_DIR/data" "$TEST_DIR/back" || fail "data differs after failover"

step "node 1 back; 4 KiB writes for 4 s while node 1 is killed again at 1.5 s"
cluster_start_node 1
cluster_wait_listening 20 1
fio --name=pause --filename="$DISK" --rw=randwrite --bs=4k --direct=1 --ioengine=psync \
  --size=16M --time_based --runtime=4 --output-format=json \
  --output="$TEST_DIR/pause.json" &
fio_pid=$!
sleep 1.5
cluster_kill9 1
wait "$fio_pid" || fail "fio failed while a node died"
# The write section's total_ios and clat max (fio JSON, one key per line).
read -r ios max_ns < <(awk -F: '
  /^ *"write" : \{/ { w = 1 }
  w && /"total_ios"/ && ios == "" { ios = $2 }
  w && /"clat_ns"/ { c = 1 }
  w && c && /"max"/ { m = $2; gsub(/[ ,]/, "", ios); gsub(/[ ,]/, "", m); print ios, m; exit }
' "$TEST_DIR/pause.json")
echo "longest write during failover: $((max_ns / 1000000)) ms ($ios writes)"
((max_ns < 2000000000)) || fail "a write paused $((max_ns / 1000000)) ms (aim < 1000 ms)"
read_direct "$DISK" "$TEST_DIR/back2" 64 >/dev/null
echo "PASS"
