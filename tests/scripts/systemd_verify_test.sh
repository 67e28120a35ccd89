#!/usr/bin/env bash
# ctest systemd_units: installs the build (cmake --install, rules in cmake/install.cmake)
# into a temporary prefix and checks every systemd unit that lands there with
# `systemd-analyze verify`, the sandboxing with `systemd-analyze security --offline`, and
# the sysusers.d snippet with `systemd-sysusers --dry-run`. A staged install (DESTDIR) must
# put the same files under DESTDIR with the units naming the real prefix.
#
#   tests/scripts/systemd_verify_test.sh BUILD_DIR
#
# `systemd-analyze verify` checks that ExecStart binaries exist, hence the install into a
# temporary prefix (not DESTDIR: there the units name /usr/local/bin/..., which need not
# exist on this host). It exits 0 on unknown keys and unparsable values, only printing a
# warning, so any line of output that names one of our units counts as a failure too. The
# checker proves itself on deliberately broken copies before it is trusted.
set -euo pipefail

BUILD_DIR=""
TMP=""
UNITDIR=""
FAILURES=0
# Highest acceptable `systemd-analyze security` exposure, times 10 (its --threshold scale).
# atomdiskd@ is sandboxed hard (1.4 when written); atomdisk-fuse@ cannot have a mount
# namespace of its own, so most of systemd's sandboxing is out (5.6 when written).
declare -A MAX_EXPOSURE=([atomdiskd@.service]=20 [atomdisk-fuse@.service]=60)

fail() {
  echo "FAIL: $*" >&2
  FAILURES=$((FAILURES + 1))
}

cleanup() { [ -z "$TMP" ] || rm -rf "$TMP"; }

# check_unit PATH: true if systemd-analyze verify accepts the unit without a word.
check_unit() {
  local path=$1 out rc=0
  out=$(SYSTEMD_UNIT_PATH="$(dirname "$path"):" systemd-analyze verify --man=no "$path" 2>&1) || rc=$?
  # Output about units of the host (pulled in as dependencies) is not ours to judge.
  if [ "$rc" != 0 ] || grep -q -e atomdisk -e "$TMP" <<<"$out"; then
    printf '%s\n' "systemd-analyze verify $path (exit $rc):" "$out" >&2
    return 1
  fi
  return 0
}

install_prefix() {
  local log="$TMP/install.log"
  if ! cmake --install "$BUILD_DIR" --prefix "$TMP/prefix" >"$log" 2>&1; then
    cat "$log" >&2
    fail "cmake --install $BUILD_DIR --prefix $TMP/prefix failed"
    return 1
  fi
  UNITDIR="$TMP/prefix/lib/systemd/system"
  local f
  for f in atomdiskd@.service atomdisk-fuse@.service atomdisk.target; do
    if [ ! -f "$UNITDIR/$f" ]; then
      fail "cmake --install did not install $UNITDIR/$f (is cmake/install.cmake included from CMakeLists.txt?)"
      return 1
    fi
  done
  for f in bin/atomdiskd bin/atomdisk bin/atomdisk-fuse bin/atomdisk-lincheck; do
    [ -x "$TMP/prefix/$f" ] || fail "cmake --install did not install $f"
  done
  for f in lib/sysusers.d/atomdisk.conf share/doc/atomdisk/cluster.toml.example \
    share/doc/atomdisk/README.md share/doc/atomdisk/OPERATIONS.md; do
    [ -f "$TMP/prefix/$f" ] || fail "cmake --install did not install $f"
  done
  if grep -n -e '@bindir@' -e '@docdir@' "$UNITDIR"/*; then
    fail "placeholders left in the installed units"
  fi
  grep -q "^ExecStart=$TMP/prefix/bin/atomdiskd " "$UNITDIR/atomdiskd@.service" ||
    fail "atomdiskd@.service does not run $TMP/prefix/bin/atomdiskd"
}

check_staged_install() {
  local stage="$TMP/stage" log="$TMP/stage.log" f
  if ! DESTDIR="$stage" cmake --install "$BUILD_DIR" --prefix /usr/local >"$log" 2>&1; then
    cat "$log" >&2
    fail "DESTDIR=$stage cmake --install --prefix /usr/local failed"
    return 0
  fi
  for f in bin/atomdiskd bin/atomdisk bin/atomdisk-fuse lib/systemd/system/atomdiskd@.service \
    lib/systemd/system/atomdisk-fuse@.service lib/systemd/system/atomdisk.target \
    lib/sysusers.d/atomdisk.conf share/doc/atomdisk/cluster.toml.example; do
    [ -e "$stage/usr/local/$f" ] || fail "staged install: $stage/usr/local/$f is missing"
  done
  grep -q '^ExecStart=/usr/local/bin/atomdiskd ' "$stage/usr/local/lib/systemd/system/atomdiskd@.service" ||
    fail "staged install: atomdiskd@.service does not run /usr/local/bin/atomdiskd"
  grep -q '^ExecStart=/usr/local/bin/atomdisk-fuse ' "$stage/usr/local/lib/systemd/system/atomdisk-fuse@.service" ||
    fail "staged install: atomdisk-fuse@.service does not run /usr/local/bin/atomdisk-fuse"
}

check_installed_units() {
  local unit name count=0
  for unit in "$UNITDIR"/*.service "$UNITDIR"/*.target; do
    [ -e "$unit" ] || continue
    name=$(basename "$unit")
    count=$((count + 1))
    check_unit "$unit" || fail "$name"
    # A template is also checked as an instance: a rank, and an escaped mount path.
    case "$name" in
      *@.service)
        check_unit "$UNITDIR/${name%@.service}@1.service" || fail "${name%@.service}@1.service"
        check_unit "$UNITDIR/${name%@.service}@mnt-atomdisk.service" ||
          fail "${name%@.service}@mnt-atomdisk.service"
        ;;
    esac
    if [ -n "${MAX_EXPOSURE[$name]:-}" ]; then
      if ! SYSTEMD_UNIT_PATH="$UNITDIR:" systemd-analyze security --offline=yes \
        --threshold="${MAX_EXPOSURE[$name]}" "$unit" >"$TMP/security.log" 2>&1; then
        grep -e '✗' -e 'Overall' "$TMP/security.log" >&2 || cat "$TMP/security.log" >&2
        fail "$name: exposure above ${MAX_EXPOSURE[$name]}/100 (systemd-analyze security)"
      fi
    fi
  done
  [ "$count" -ge 3 ] || fail "expected at least 3 units in $UNITDIR, found $count"
  echo "systemd-analyze verify: $count units checked"
}

check_sysusers() {
  local sysroot="$TMP/sysroot"
  mkdir -p "$sysroot"
  if ! systemd-sysusers --dry-run --root="$sysroot" "$TMP/prefix/lib/sysusers.d/atomdisk.conf" \
    >"$TMP/sysusers.log" 2>&1; then
    cat "$TMP/sysusers.log" >&2
    fail "systemd-sysusers rejects lib/sysusers.d/atomdisk.conf"
  fi
}

# unit_words UNIT KEY: every word of every KEY= line of the unit (all sections), one per
# line. A line `KEY=` (empty) resets the list, as systemd does.
unit_words() {
  awk -v key="$2" '
    /^[ \t]*[#;]/ { next }
    index($0, key "=") == 1 {
      v = substr($0, length(key) + 2)
      if (v == "") { n = 0; next }
      c = split(v, w, /[ \t]+/)
      for (i = 1; i <= c; i++) if (w[i] != "") list[n++] = w[i]
    }
    END { for (i = 0; i < n; i++) print list[i] }' "$1"
}

# has_word UNIT KEY WORD
has_word() { unit_words "$1" "$2" | grep -qxF -- "$3"; }

# What systemd-analyze verify cannot see (it judges each unit alone, and this host's systemd
# is not PID 1): how the units depend on each other and how the node restarts.
# - atomdisk.target groups the nodes and the mounts: both PartOf= it, so stopping or
#   restarting it reaches every one of them;
# - on that stop the mounts go first, then the nodes (a mount whose local nodes are gone
#   would return EIO): the mount is ordered After= the target, the node Before= it, and
#   systemd stops in the reverse order of start-up;
# - the node restarts after a runtime failure (exit 1) but not after a configuration error
#   (exit 2), which no restart cures.
check_dependencies() {
  local node="$UNITDIR/atomdiskd@.service" mount="$UNITDIR/atomdisk-fuse@.service"
  local target="$UNITDIR/atomdisk.target" u
  for u in "$node" "$mount"; do
    has_word "$u" PartOf atomdisk.target ||
      fail "$(basename "$u") is not PartOf=atomdisk.target: stopping the target leaves it running"
  done
  has_word "$node" Before atomdisk.target ||
    fail "atomdiskd@.service is not ordered Before=atomdisk.target (nodes must stop after the mounts)"
  has_word "$node" WantedBy atomdisk.target ||
    fail "atomdiskd@.service is not WantedBy=atomdisk.target (starting the target would not start it)"
  has_word "$mount" After atomdisk.target ||
    fail "atomdisk-fuse@.service is not ordered After=atomdisk.target (mounts must stop before the nodes)"
  # Nothing may invert that order.
  has_word "$node" After atomdisk.target && fail "atomdiskd@.service is ordered After=atomdisk.target"
  has_word "$mount" Before atomdisk.target && fail "atomdisk-fuse@.service is ordered Before=atomdisk.target"
  for u in atomdiskd@.service atomdisk-fuse@.service; do
    has_word "$target" Before "$u" && fail "atomdisk.target is ordered Before=$u"
    has_word "$target" After "$u" && fail "atomdisk.target is ordered After=$u"
  done
  [ "$(unit_words "$node" Restart)" = on-failure ] || fail "atomdiskd@.service: Restart= is not on-failure"
  has_word "$node" RestartPreventExitStatus 2 ||
    fail "atomdiskd@.service restarts after exit 2 (a configuration error): add RestartPreventExitStatus=2"
  # And the checks above must catch a unit that lacks what they demand.
  local broken="$TMP/deps"
  mkdir -p "$broken"
  grep -v '^PartOf=' "$mount" >"$broken/mount"
  has_word "$broken/mount" PartOf atomdisk.target && fail "self-check: PartOf= found in a unit without it"
  printf 'RestartPreventExitStatus=2\nRestartPreventExitStatus=\n' >"$broken/reset"
  has_word "$broken/reset" RestartPreventExitStatus 2 && fail "self-check: an emptied RestartPreventExitStatus= still counts"
  printf 'RestartPreventExitStatus=1 2 SIGABRT\n# PartOf=atomdisk.target\n' >"$broken/list"
  has_word "$broken/list" RestartPreventExitStatus 2 || fail "self-check: a list with 2 in it is missed"
  has_word "$broken/list" PartOf atomdisk.target && fail "self-check: a comment counts"
  echo "dependencies: atomdisk.target groups the nodes and the mounts"
}

# The checker must catch what verify only warns about, and what it rejects.
check_the_checker() {
  local dir="$TMP/broken" good="$UNITDIR/atomdiskd@.service"
  mkdir -p "$dir"
  sed 's/^Type=notify$/Type=notfy/' "$good" >"$dir/atomdisk-badtype@.service"
  sed 's/^Restart=on-failure$/Restart=on-failure\nRestartForever=yes/' "$good" >"$dir/atomdisk-badkey@.service"
  sed "s#^ExecStart=$TMP/prefix/bin/atomdiskd #ExecStart=$TMP/prefix/bin/atomdiskd-missing #" "$good" \
    >"$dir/atomdisk-badexec@.service"
  sed 's/^ExecStart=.*/ExecStart=atomdiskd --rank %i/' "$good" >"$dir/atomdisk-relexec@.service"
  local unit
  for unit in "$dir"/*.service; do
    if cmp -s "$unit" "$good"; then
      fail "self-check: $(basename "$unit") is not broken (the sed no longer matches the unit)"
    elif check_unit "$unit" 2>/dev/null; then
      fail "self-check: the checker accepts the broken unit $(basename "$unit")"
    fi
  done
}

# The FUSE unit: Type=notify (atomdisk-fuse sends READY=1) with no polling ExecStartPost,
# stop by SIGTERM alone (atomdisk-fuse waits while the mount is busy), and no ExecStartPre
# that fails, and logs the failure, on every normal start.
check_fuse_unit() {
  local unit="$UNITDIR/atomdisk-fuse@.service"
  grep -qx 'Type=notify' "$unit" || fail "atomdisk-fuse@.service is not Type=notify"
  ! grep -q '^ExecStartPost=' "$unit" || fail "atomdisk-fuse@.service still polls in ExecStartPost"
  ! grep -q '^ExecStop=' "$unit" || fail "atomdisk-fuse@.service has an ExecStop (SIGTERM does the stop)"
  ! grep -q '^ExecStartPre=-' "$unit" || fail "atomdisk-fuse@.service has an ExecStartPre whose failure is ignored"
}

# docs/FUSE.md's loop-device unit and fstab line for a filesystem on top, run through
# systemd-fstab-generator and systemd-analyze verify beside the installed units: the
# filesystem requires and follows the loop unit, which requires and follows the FUSE mount,
# so shutdown takes them down in the other order.
check_filesystem_on_top_example() {
  local doc repo etc="$TMP/etc" gen="$TMP/gen" generator=/lib/systemd/system-generators/systemd-fstab-generator
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  doc="$repo/docs/FUSE.md"
  mkdir -p "$etc" "$gen"
  # The fenced block after an "<!-- example: NAME -->" line of the doc.
  extract() { awk -v m="<!-- example: $1 -->" '$0 == m { on = 1; next } on && /^```/ { if (in_block) exit; in_block = 1; next } in_block { print }' "$doc"; }
  extract atomdisk-loop.service >"$etc/atomdisk-loop.service"
  extract fstab >"$TMP/fstab"
  if [ ! -s "$etc/atomdisk-loop.service" ] || [ ! -s "$TMP/fstab" ]; then
    fail "docs/FUSE.md: the atomdisk-loop.service or fstab example is missing"
    return 0
  fi
  [ -x "$generator" ] || { fail "$generator is missing"; return 0; }
  if ! SYSTEMD_FSTAB="$TMP/fstab" "$generator" "$gen" "$gen" "$gen" >"$TMP/gen.log" 2>&1; then
    cat "$TMP/gen.log" >&2
    fail "systemd-fstab-generator rejects docs/FUSE.md's fstab line"
    return 0
  fi
  local mount="$gen/srv-data.mount" out rc=0
  [ -f "$mount" ] || { fail "the fstab example generated no srv-data.mount"; return 0; }
  grep -qx 'Requires=atomdisk-loop.service' "$mount" && grep -qx 'After=atomdisk-loop.service' "$mount" ||
    fail "srv-data.mount does not require and follow atomdisk-loop.service: $(cat "$mount")"
  [ -e "$gen/remote-fs.target.requires/srv-data.mount" ] || fail "srv-data.mount is not under remote-fs.target (_netdev)"
  grep -qx 'Requires=atomdisk-fuse@mnt-atomdisk.service' "$etc/atomdisk-loop.service" &&
    grep -qx 'After=atomdisk-fuse@mnt-atomdisk.service' "$etc/atomdisk-loop.service" ||
    fail "atomdisk-loop.service does not require and follow atomdisk-fuse@mnt-atomdisk.service"
  grep -q -- '--direct-io=on --sector-size 4096' "$etc/atomdisk-loop.service" ||
    fail "atomdisk-loop.service does not set up the loop device with --direct-io=on --sector-size 4096"
  out=$(SYSTEMD_UNIT_PATH="$gen:$etc:$UNITDIR:" systemd-analyze verify --man=no "$mount" \
    "$etc/atomdisk-loop.service" 2>&1) || rc=$?
  if [ "$rc" != 0 ] || grep -q -e atomdisk -e "$TMP" -e srv-data <<<"$out"; then
    printf '%s\n' "systemd-analyze verify of the filesystem-on-top example (exit $rc):" "$out" >&2
    fail "docs/FUSE.md's filesystem-on-top example"
  fi
}

main() {
  [ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
  BUILD_DIR=$1
  command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze is missing (scripts/install-deps.sh installs systemd)" >&2; exit 1; }
  TMP=$(mktemp -d -t atomdisk-units.XXXXXX)
  trap cleanup EXIT
  if install_prefix; then
    check_installed_units
    check_dependencies
    check_fuse_unit
    check_filesystem_on_top_example
    check_sysusers
    check_the_checker
  fi
  check_staged_install
  if [ "$FAILURES" -gt 0 ]; then
    echo "systemd_units: $FAILURES failure(s)" >&2
    exit 1
  fi
  echo "systemd_units: OK"
}

main "$@"
