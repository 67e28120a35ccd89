#!/usr/bin/env bash
# fio with verify=crc32c on the disk file passes: random 4 KiB (libaio, 16 deep), mixed block
# sizes up to 1 MiB, and 4 synchronous writers on disjoint regions.
source "$(dirname "$0")/test_lib.sh"
command -v fio >/dev/null || fail "fio is not installed (scripts/install-deps.sh)"

start_cluster_and_mount 16384
common=(--filename="$DISK" --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1
  --verify_backlog=64 --output="$TEST_DIR/fio.out")
step "randwrite 4k, libaio iodepth 16, 24 MiB, verified"
fio --name=rand4k --rw=randwrite --bs=4k --size=24M --ioengine=libaio --iodepth=16 \
  "${common[@]}" || { cat "$TEST_DIR/fio.out"; fail "fio rand4k"; }
step "randwrite bs 4k-1M, libaio iodepth 8, 32 MiB, verified"
fio --name=mixed --rw=randwrite --bsrange=4k-1M --size=32M --offset=24M --ioengine=libaio \
  --iodepth=8 "${common[@]}" || { cat "$TEST_DIR/fio.out"; fail "fio mixed"; }
step "4 psync jobs on disjoint 4 MiB regions, verified"
fio --name=jobs --rw=randwrite --bs=4k --size=4M --offset_increment=4M --numjobs=4 \
  --ioengine=psync "${common[@]}" || { cat "$TEST_DIR/fio.out"; fail "fio jobs"; }
grep -q "err= 0" "$TEST_DIR/fio.out" || { cat "$TEST_DIR/fio.out"; fail "fio reported errors"; }
echo "PASS"
