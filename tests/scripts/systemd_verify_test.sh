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

main() {
  [ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
  BUILD_DIR=$1
  command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze is missing (scripts/install-deps.sh installs systemd)" >&2; exit 1; }
  TMP=$(mktemp -d -t atomdisk-units.XXXXXX)
  trap cleanup EXIT
  if install_prefix; then
    check_installed_units
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
