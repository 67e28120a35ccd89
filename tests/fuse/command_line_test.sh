#!/usr/bin/env bash
# atomdisk-fuse's command line speaks the language of atomdisk and atomdiskd: --version,
# exit 2 for usage and configuration errors, `TIME LEVEL atomdisk-fuse: ...` lines for
# start-up errors and the mounted line, --node followed by the mount point and a flag,
# refusal of a non-empty directory, of a mount point in use and of a dead FUSE mount, and,
# in background mode, log lines in syslog once standard error is gone.
source "$(dirname "$0")/test_lib.sh"

FUSE=$ATOMDISK_BIN_DIR/atomdisk-fuse
TIME_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}'

# expect_usage_error WHAT ARGS...: exit 2, one `TIME error atomdisk-fuse: WHAT` line.
expect_usage_error() {
  local what=$1 code=0
  shift
  "$FUSE" "$@" >"$TEST_DIR/out" 2>&1 || code=$?
  [ "$code" = 2 ] || fail "atomdisk-fuse $*: exit $code, not 2 ($(cat "$TEST_DIR/out"))"
  grep -Eq "$TIME_RE error atomdisk-fuse: .*$what" "$TEST_DIR/out" ||
    fail "atomdisk-fuse $*: no 'TIME error atomdisk-fuse: ...$what' line: $(cat "$TEST_DIR/out")"
}

step "--version prints the version as atomdiskd does"
version=$("$FUSE" --version) || fail "--version failed"
[ "$version" = "atomdisk-fuse $("$ATOMDISK_BIN_DIR/atomdiskd" --version | cut -d' ' -f2-)" ] ||
  fail "--version printed '$version'"
"$FUSE" --help | grep -q "syslog" || fail "--help does not say where logs go"

cluster_create "$TEST_DIR/cluster" 3 1024
cluster_start_all
MNT=$TEST_DIR/mnt
mkdir -p "$MNT"

step "usage and configuration errors exit 2"
expect_usage_error "--config is required"
expect_usage_error "not expected: --bogus" --config "$CLUSTER_CONFIG" "$MNT" -f --bogus
expect_usage_error "no such file" --config "$TEST_DIR/none.toml" "$MNT" -f
expect_usage_error "timeout=x" --config "$CLUSTER_CONFIG" "$MNT" -f -o timeout=x
expect_usage_error "loud" --config "$CLUSTER_CONFIG" "$MNT" -f --log-level loud
expect_usage_error "9" --config "$CLUSTER_CONFIG" --node 9 "$MNT" -f
expect_usage_error "not a directory" --config "$CLUSTER_CONFIG" "$CLUSTER_CONFIG" -f
mkdir -p "$TEST_DIR/full"
touch "$TEST_DIR/full/precious"
expect_usage_error "is not empty" --config "$CLUSTER_CONFIG" "$TEST_DIR/full" -f
! cluster_is_mounted "$TEST_DIR/full" || fail "mounted over a non-empty directory"

step "--config F --node 1 MNT -f (the README's order) mounts; the mounted line has the log form"
"$FUSE" --config "$CLUSTER_CONFIG" --node 1 "$MNT" -f >"$MNT.log" 2>&1 &
CLUSTER_MOUNT_PID[$MNT]=$!
cluster_register_cleanup "cluster_unmount '$MNT'"
deadline=$((SECONDS + 20))
until [ -e "$MNT/disk" ]; do
  cluster_pid_alive "${CLUSTER_MOUNT_PID[$MNT]}" || fail "did not mount: $(cat "$MNT.log")"
  ((SECONDS < deadline)) || fail "mount timed out"
  sleep 0.05
done
grep -Eq "$TIME_RE info atomdisk-fuse: mounted $MNT/disk " "$MNT.log" ||
  fail "mounted line: $(cat "$MNT.log")"

step "a mount point in use is refused"
expect_usage_error "already a mount point" --config "$CLUSTER_CONFIG" "$MNT" -f
cluster_unmount "$MNT"

step "a dead FUSE mount is refused with what to do"
cluster_mount "$MNT"
kill -9 "${CLUSTER_MOUNT_PID[$MNT]}"
cluster_wait_pid_gone "${CLUSTER_MOUNT_PID[$MNT]}" 10
expect_usage_error "dead FUSE mount .*fusermount3 -u -z" --config "$CLUSTER_CONFIG" "$MNT" -f

step "the unit's ExecStartPre clears exactly that, and is silent and content otherwise"
# The command as systemd runs it: $$ is a literal $, %f the mount point.
pre=$(sed -n 's/^ExecStartPre=\(\/bin\/sh .*\)$/\1/p' "$FUSE_TEST_REPO/scripts/systemd/atomdisk-fuse@.service")
[ -n "$pre" ] || fail "no ExecStartPre=/bin/sh ... in atomdisk-fuse@.service"
pre=${pre//\$\$/\$}
run_pre() {  # DIR: runs the unit's ExecStartPre for DIR, fails on any output or error
  local out
  out=$(eval "${pre//%f/$1}" 2>&1) || fail "ExecStartPre for $1 failed: $out"
  [ -z "$out" ] || fail "ExecStartPre for $1 said: $out"
}
run_pre "$MNT"
! cluster_is_mounted "$MNT" || fail "ExecStartPre left the dead mount"
run_pre "$MNT"                  # a plain empty directory: nothing to do
run_pre "$TEST_DIR/not-yet"     # not there yet (the unit's mkdir comes next)
cluster_mount "$MNT"            # a live mount is left alone
run_pre "$MNT"
[ -e "$MNT/disk" ] || fail "ExecStartPre unmounted a live mount"
cluster_unmount "$MNT"

step "background mode: after detaching, log lines go to syslog"
if [ -e /dev/log ]; then
  echo "SKIP (this part): /dev/log belongs to a running syslog here"
else
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
out = open(sys.argv[1], "ab", 0)
while True:
    out.write(s.recv(65536) + b"\n")
' "$TEST_DIR/syslog" &
  listener=$!
  cluster_register_cleanup "kill $listener 2>/dev/null; wait $listener 2>/dev/null; rm -f /dev/log"
  for _ in $(seq 1 100); do [ -S /dev/log ] && break; sleep 0.05; done
  "$FUSE" --config "$CLUSTER_CONFIG" "$MNT" >"$TEST_DIR/bg.out" 2>&1 || fail "background mount: $(cat "$TEST_DIR/bg.out")"
  cluster_register_cleanup "fusermount3 -u -z '$MNT' 2>/dev/null"
  [ -e "$MNT/disk" ] || fail "background mode returned before the mount was up"
  # 30 = facility daemon (3) * 8 + info (6)
  grep -Eq "^<30>.*atomdisk-fuse\[[0-9]+\]: mounted $MNT/disk" "$TEST_DIR/syslog" ||
    fail "no mounted line in syslog: $(cat "$TEST_DIR/syslog")"
  bgpid=$(grep -Eo 'atomdisk-fuse\[[0-9]+\]: mounted' "$TEST_DIR/syslog" | grep -Eo '[0-9]+' | head -1)
  exec 7<"$MNT/disk"
  kill -TERM "$bgpid"
  deadline=$((SECONDS + 10))
  # 28 = daemon * 8 + warning (4): a warning written after standard error went to /dev/null
  until grep -Eq "^<28>.*atomdisk-fuse\[$bgpid\]: mount busy \(process $$ " "$TEST_DIR/syslog"; do
    ((SECONDS < deadline)) || fail "no 'mount busy' warning in syslog: $(cat "$TEST_DIR/syslog")"
    sleep 0.1
  done
  exec 7<&-
  cluster_wait_pid_gone "$bgpid" 10 || fail "the background mount did not exit once released"
fi
echo "PASS"
