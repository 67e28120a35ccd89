#!/usr/bin/env bash
# atomdisk-fuse -o metrics=ADDR: scraped during a small dd, the request counters, bytes and
# latency histograms move by what the dd did; a second scrape after it sees nothing in flight;
# each fsync and each close (a flush) is counted and timed.
source "$(dirname "$0")/test_lib.sh"

# GET /metrics over bash's /dev/tcp (no curl in the dependencies); prints the body.
scrape() {  # PORT
  local port=$1
  exec 9<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&9
  local out
  out=$(timeout 5 cat <&9)
  exec 9<&-
  case $out in "HTTP/1.1 200"*) ;; *) echo "bad answer: ${out:0:200}" >&2; return 1 ;; esac
  printf '%s\n' "$out" | sed '1,/^\r$/d'
}
value() {  # TEXT SAMPLE-NAME-WITH-LABELS
  printf '%s\n' "$1" | awk -v k="$2" '$1 == k { print $2; found=1 } END { if (!found) print "missing" }'
}

port=$(cluster_free_port)
start_cluster_and_mount 4096 -o "metrics=127.0.0.1:$port"
step "scrape before any I/O"
before=$(scrape "$port") || fail "no metrics at 127.0.0.1:$port"
[ "$(value "$before" 'atomdisk_fuse_requests_total{op="write"}')" = 0 ] ||
  fail "writes counted before any: $(value "$before" 'atomdisk_fuse_requests_total{op="write"}')"

step "dd 4 MiB (4 writes of 1 MiB, O_DIRECT) while scraping"
head -c 4M /dev/urandom >"$TEST_DIR/data"
write_direct "$TEST_DIR/data" "$DISK" &
dd_pid=$!
during=$(scrape "$port") || fail "scrape during dd failed"
wait "$dd_pid" || fail "dd failed"
printf '%s\n' "$during" | grep -q '^atomdisk_fuse_requests_in_flight ' || fail "no in-flight gauge"
step "read it back (4 reads of 1 MiB)"
read_direct "$DISK" "$TEST_DIR/back" 4
cmp "$TEST_DIR/data" "$TEST_DIR/back" || fail "data read back differs"

after=$(scrape "$port") || fail "scrape after dd failed"
w=$(value "$after" 'atomdisk_fuse_requests_total{op="write"}')
r=$(value "$after" 'atomdisk_fuse_requests_total{op="read"}')
wb=$(value "$after" 'atomdisk_fuse_bytes_total{op="write"}')
rb=$(value "$after" 'atomdisk_fuse_bytes_total{op="read"}')
wc=$(value "$after" 'atomdisk_fuse_request_duration_seconds_count{op="write"}')
inf=$(value "$after" 'atomdisk_fuse_request_duration_seconds_bucket{op="write",le="+Inf"}')
echo "writes $w ($wb bytes), reads $r ($rb bytes), write latencies $wc"
# The kernel may split a 1 MiB direct write (max_write), never merge two.
[ "$w" -ge 4 ] || fail "expected at least 4 writes, got $w"
[ "$wb" = $((4 << 20)) ] || fail "expected 4194304 bytes written, got $wb"
[ "$rb" = $((4 << 20)) ] || fail "expected 4194304 bytes read, got $rb"
[ "$wc" = "$w" ] && [ "$inf" = "$w" ] || fail "write histogram count $wc / +Inf $inf != $w"
[ "$(value "$after" 'atomdisk_fuse_requests_in_flight')" = 0 ] || fail "requests left in flight"
[ "$(value "$after" 'atomdisk_fuse_eio_total')" = 0 ] || fail "EIO counted"
step "3 times open, write 4 KiB, fsync, close: 3 fsyncs, 3 flushes (one per close), timed"
# Not dd: it closes a dup of its output too, so each run flushes twice.
python3 - "$DISK" <<'PY' || fail "open/write/fsync/close failed"
import os, sys
for i in range(3):
    fd = os.open(sys.argv[1], os.O_WRONLY)
    os.pwrite(fd, bytes([i]) * 4096, (100 + i) * 4096)
    os.fsync(fd)
    os.close(fd)
PY
synced=$(scrape "$port") || fail "scrape after the fsyncs failed"
for op in fsync flush; do
  n0=$(value "$after" "atomdisk_fuse_requests_total{op=\"$op\"}")
  n1=$(value "$synced" "atomdisk_fuse_requests_total{op=\"$op\"}")
  c0=$(value "$after" "atomdisk_fuse_request_duration_seconds_count{op=\"$op\"}")
  c1=$(value "$synced" "atomdisk_fuse_request_duration_seconds_count{op=\"$op\"}")
  s1=$(value "$synced" "atomdisk_fuse_request_duration_seconds_sum{op=\"$op\"}")
  echo "$op: requests $n0 -> $n1, timed $c0 -> $c1 (sum $s1 s)"
  [ $((n1 - n0)) = 3 ] || fail "$op requests moved by $((n1 - n0)), not 3"
  [ "$c1" = "$n1" ] || fail "$op latency histogram count $c1 != its requests $n1"
  awk -v s="$s1" 'BEGIN { exit !(s > 0) }' || fail "$op latency sum is $s1"
  [ "$(value "$synced" "atomdisk_fuse_errors_total{op=\"$op\"}")" = 0 ] || fail "$op errors counted"
done
after=$synced
if command -v promtool >/dev/null; then
  printf '%s\n' "$after" | promtool check metrics || fail "promtool check metrics failed"
else
  echo "promtool not installed: lint skipped (scripts/install-deps.sh installs it)"
fi
echo "PASS"
