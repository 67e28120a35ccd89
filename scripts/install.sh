#!/usr/bin/env bash
# Builds atomdisk's binaries and installs them with the systemd units, the sysusers.d
# snippet, the docs and an example configuration (the rules are in cmake/install.cmake).
#
#   scripts/install.sh                          # into /usr/local (needs root)
#   scripts/install.sh --prefix /usr            # into /usr
#   DESTDIR=/tmp/stage scripts/install.sh       # staged: /tmp/stage/usr/local/...
#   scripts/install.sh --no-build               # install what BUILD_DIR already holds
#
# Options: --prefix DIR (default /usr/local), --no-deps (do not run install-deps.sh),
# --no-build. Environment: BUILD_DIR (default build), JOBS (default nproc), DESTDIR.
# On a real install (no DESTDIR, as root, prefix /usr or /usr/local) it also creates the
# `atomdisk` user (systemd-sysusers) and, if systemd is running, reloads it. It never
# enables or starts a unit: see docs/OPERATIONS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/usr/local
DEPS=1
BUILD=1
BUILD_DIR="${BUILD_DIR:-build}"
TARGETS=(atomdiskd atomdisk atomdisk-fuse atomdisk-lincheck)

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

die() {
  echo "install.sh: $*" >&2
  exit 1
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix)
        [ $# -ge 2 ] || die "--prefix needs a directory"
        PREFIX="$2"
        shift 2
        ;;
      --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
      --no-deps) DEPS=0; shift ;;
      --no-build) BUILD=0; shift ;;
      -h | --help) usage; exit 0 ;;
      *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
  done
  case "$PREFIX" in
    /*) ;;
    *) die "--prefix must be an absolute path (got $PREFIX)" ;;
  esac
  case "$BUILD_DIR" in
    /*) ;;
    *) BUILD_DIR="$ROOT/$BUILD_DIR" ;;
  esac
}

build() {
  if [ "$DEPS" = 1 ]; then
    bash "$ROOT/scripts/install-deps.sh"
  fi
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_INSTALL_PREFIX="$PREFIX" >/dev/null
  ninja -C "$BUILD_DIR" -j "${JOBS:-$(nproc)}" "${TARGETS[@]}"
}

install_files() {
  [ -f "$BUILD_DIR/cmake_install.cmake" ] || die "$BUILD_DIR is not a configured build folder"
  cmake --install "$BUILD_DIR" --prefix "$PREFIX"
  local unit="${DESTDIR:-}$PREFIX/lib/systemd/system/atomdiskd@.service"
  if [ ! -f "$unit" ]; then
    die "no systemd units were installed ($unit is missing): is cmake/install.cmake included from CMakeLists.txt?"
  fi
}

post_install() {
  # Staged installs, non-root runs and prefixes systemd does not read (a test prefix)
  # change nothing else on this host.
  [ -z "${DESTDIR:-}" ] || return 0
  [ "$(id -u)" -eq 0 ] || return 0
  case "$PREFIX" in
    /usr | /usr/local) ;;
    *)
      echo "install.sh: $PREFIX/lib/systemd/system is not where systemd looks for units;" \
        "not creating the atomdisk user (use systemctl link and systemd-sysusers by hand)" >&2
      return 0
      ;;
  esac
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$PREFIX/lib/sysusers.d/atomdisk.conf"
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
}

next_steps() {
  cat <<EOF

Installed into ${DESTDIR:-}$PREFIX. Next, on each node host (docs/OPERATIONS.md):
  1. Put cluster.toml, client.key and system.key (identical on every host) in /etc/atomdisk;
     chown atomdisk:atomdisk /etc/atomdisk/*.key; chmod 0600 /etc/atomdisk/*.key
  2. systemctl enable --now atomdisk.target atomdiskd@RANK.service
  3. Optionally mount: systemctl enable --now atomdisk-fuse@\$(systemd-escape --path /mnt/atomdisk).service
EOF
}

main() {
  parse_args "$@"
  if [ "$BUILD" = 1 ]; then
    build
  fi
  install_files
  post_install
  next_steps
}

main "$@"
