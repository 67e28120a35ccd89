#!/usr/bin/env bash
# Installs every Debian 12 package that atomdisk's build, tests, demo and benchmarks need.
# Idempotent: when everything is present it prints nothing and runs no apt command.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libboost-dev            # Boost.Asio 1.18 (header-only): sockets, timers, C++20 coroutines
  libxxhash-dev           # XXH3-64 checksums of stored sectors
  libssl-dev              # OpenSSL 3: HMAC-SHA256 through EVP_MAC, CRYPTO_memcmp, RAND_bytes
  libspdlog-dev           # logging, one line per event
  libfuse3-dev fuse3      # the FUSE front-end and fusermount3
  libtomlplusplus-dev     # cluster.toml parsing
  libcli11-dev            # command-line flags for every binary
  nlohmann-json3-dev      # JSON output (--json, histories) and parsing histories
  libsystemd-dev          # sd_notify for Type=notify units
  libgtest-dev libgmock-dev  # unit and integration tests
  libbenchmark-dev        # micro-benchmarks
  clang-format            # style check
  fio e2fsprogs util-linux   # FUSE tests and benchmarks: fio, mkfs.ext4/e2fsck, losetup
  systemd                 # systemd-analyze verify for the unit files
  iproute2 procps psmisc  # ip netns, pgrep/pkill, fuser in tests
  nftables                # DROP rules that partition nodes in the network-namespace tests
  prometheus              # promtool: checks a live /metrics scrape and the alert rules (tests)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The prometheus package is here only for promtool: if this run installed it, do not leave
# its server (port 9090) running and enabled on a host booted with systemd.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
