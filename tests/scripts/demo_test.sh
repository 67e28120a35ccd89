#!/usr/bin/env bash
# ctest demo: takes the demo command from the README's "Try it" block and runs it, as
# written, in a fresh copy of the source tree in a temporary directory, the way a new user
# would (only BUILD_DIR points at the tree ctest already built, to avoid a second build);
# checks that it passes and leaves nothing behind: no process, no mount, no folder. Then the
# same after a failure injected mid-run, and with --keep followed by the stop script it
# prints.
#
#   tests/scripts/demo_test.sh BUILD_DIR
#
# Exit 77 (skipped) only when FUSE is genuinely unavailable here (no /dev/fuse).
set -euo pipefail

SRC="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR=""
TMP=""
FAILURES=0

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

step() { echo; echo "==== $*"; }

# Processes whose command line names our temporary folder: the demo's nodes and mount.
our_pids() { pgrep -f -- "$TMP/" || true; }

mounts_below() { awk -v d="$TMP/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts; }

# Last resort if a check failed: undo what the demo left, by pid and by mountpoint.
cleanup() {
  local mp pid
  [ -n "$TMP" ] || return 0
  for mp in $(mounts_below); do fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; done
  for pid in $(our_pids); do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}

# expect_clean WHAT: the demo left no process, mount or folder in TMPDIR.
expect_clean() {
  local what=$1 pids mounts left
  # Processes being torn down may need a moment after the demo returned.
  local i
  for i in $(seq 50); do
    [ -z "$(our_pids)$(mounts_below)" ] && break
    sleep 0.1
  done
  pids=$(our_pids)
  mounts=$(mounts_below)
  left=$(find "$TMP/tmp" -mindepth 1 -maxdepth 1 2>/dev/null)
  [ -z "$pids" ] || { ps -o pid,args -p "$(echo "$pids" | paste -sd,)" >&2 || true; fail "$what: processes left running"; }
  [ -z "$mounts" ] || fail "$what: still mounted: $mounts"
  [ -z "$left" ] || fail "$what: left in TMPDIR: $left"
  # The next case starts from a clean slate whatever happened.
  for i in $mounts; do fusermount3 -u -z "$i" 2>/dev/null || true; done
  for i in $pids; do kill -9 "$i" 2>/dev/null || true; done
  rm -rf "${TMP:?}/tmp" && mkdir -p "$TMP/tmp"
}

# run_demo LOG ARGS...: runs scripts/demo.sh from a fresh working directory; prints its
# exit code.
run_demo() {
  local log=$1 rc=0
  shift
  (cd "$TMP/cwd" && TMPDIR="$TMP/tmp" BUILD_DIR="$BUILD_DIR" bash "$SRC/scripts/demo.sh" "$@") \
    >"$log" 2>&1 </dev/null || rc=$?
  echo "$rc"
}

# The first command of the README's "Try it" code block (comment stripped).
readme_demo_command() {
  awk '/^## Try it/ { in_section = 1; next }
       in_section && /^## / { exit }
       in_section && /^```/ { if (in_block) exit; in_block = 1; next }
       in_block { sub(/[[:space:]]*#.*/, ""); if ($0 != "") { print; exit } }' "$SRC/README.md"
}

# A copy of the source tree as a checkout holds it: what git tracks or would track (not
# the build folders), or everything but build*/ and .git without git.
copy_checkout() {
  local dest=$1
  mkdir -p "$dest"
  if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -z -co --exclude-standard |
      tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -C "$dest" -xf -
  else
    tar -C "$SRC" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$dest" -xf -
  fi
}

# expect_count LOG PATTERN N WHAT
expect_count() {
  local n
  n=$(grep -c -- "$2" "$1" || true)
  [ "$n" -ge "$3" ] || fail "demo output: $4 (\"$2\" seen $n times, expected at least $3)"
}

case_readme_command() {
  local log="$TMP/demo.log" rc=0 cmd checkout="$TMP/checkout"
  cmd=$(readme_demo_command)
  step "$cmd (the README's command, in a fresh copy of the tree)"
  case "$cmd" in
    scripts/demo.sh*) ;;
    *) fail "the README's first command is \"$cmd\", not scripts/demo.sh"; return 0 ;;
  esac
  copy_checkout "$checkout"
  [ -x "$checkout/scripts/demo.sh" ] || fail "scripts/demo.sh is not executable in a checkout"
  (cd "$checkout" && TMPDIR="$TMP/tmp" BUILD_DIR="$BUILD_DIR" bash -c "$cmd") \
    >"$log" 2>&1 </dev/null || rc=$?
  cat "$log"
  [ "$rc" = 0 ] || fail "$cmd exited $rc"
  expect_count "$log" "Created a 3-node cluster" 1 "the cluster made by atomdisk init"
  expect_count "$log" "read back intact" 5 "every read-back check"
  expect_count "$log" "quorum: OK, 3 of 3 nodes up" 2 "status with every node up"
  expect_count "$log" "quorum: OK, 2 of 3 nodes up" 1 "status with one node down"
  expect_count "$log" "DOWN" 1 "the crashed node shown as down"
  expect_count "$log" "cleaning up" 1 "the cleanup"
  expect_clean "$cmd"
  rm -rf "$checkout"
}

case_failure_cleans_up() {
  local step_name log rc
  for step_name in mount crash; do
    step "scripts/demo.sh --no-build, failing after step '$step_name'"
    log="$TMP/demo-fail-$step_name.log"
    rc=$(ATOMDISK_DEMO_INJECT_FAILURE=$step_name run_demo "$log" --no-build)
    tail -n 15 "$log"
    [ "$rc" != 0 ] || fail "the demo did not fail after step $step_name"
    grep -q "failing after step '$step_name'" "$log" || fail "the failure was not injected at $step_name"
    expect_clean "failure after $step_name"
  done
}

case_keep() {
  step "scripts/demo.sh --no-build --keep, then the printed stop script"
  local log="$TMP/demo-keep.log" rc dir stop
  rc=$(run_demo "$log" --no-build --keep)
  tail -n 20 "$log"
  [ "$rc" = 0 ] || { fail "scripts/demo.sh --keep exited $rc"; return 0; }
  dir=$(find "$TMP/tmp" -mindepth 1 -maxdepth 1 -name 'atomdisk-demo.*' | head -n 1)
  [ -n "$dir" ] || { fail "--keep left no demo folder"; return 0; }
  stop="$dir/stop.sh"
  grep -qF "$stop" "$log" || fail "--keep did not print $stop"
  grep -qF "$dir/mnt" <(mounts_below) || fail "--keep: $dir/mnt is not mounted"
  # The cluster outlives the demo: the device still answers.
  if ! dd if="$dir/mnt/disk" of=/dev/null bs=1M count=8 iflag=direct status=none; then
    fail "--keep: reading $dir/mnt/disk failed after the demo exited"
  fi
  "$BUILD_DIR/bin/atomdisk" --config "$dir/cluster/cluster.toml" status || fail "--keep: atomdisk status failed"
  bash "$stop" || fail "$stop failed"
  expect_clean "--keep and its stop script"
}

main() {
  [ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
  BUILD_DIR=$(cd "$1" && pwd)
  if [ ! -c /dev/fuse ]; then
    echo "SKIP: /dev/fuse is absent"
    exit 77
  fi
  TMP=$(mktemp -d -t atomdisk-demo-test.XXXXXX)
  trap cleanup EXIT
  mkdir -p "$TMP/cwd" "$TMP/tmp"
  case_readme_command
  case_failure_cleans_up
  case_keep
  if [ "$FAILURES" -gt 0 ]; then
    echo "demo: $FAILURES failure(s)" >&2
    exit 1
  fi
  echo "demo: PASS"
}

main "$@"
