#!/usr/bin/env bash
# What idle strangers cost a node: one atomdiskd (a 1-node cluster on a free 127.0.0.1 port),
# then N TCP connections opened to it that send nothing (as a host without any key could),
# held open. Prints the node's RSS and open descriptors before, with them held (at 2 s and
# at 14 s, past the node's 10 s deadline for a first valid frame: docs/PROTOCOL.md), and
# after they are dropped, and whether a good client is still served throughout.
#
#   scripts/bench-strangers.sh [--bin DIR] [--connections N] [--dir DIR]
#
# --bin: the folder holding atomdiskd and atomdisk (default BUILD_DIR/bin, BUILD_DIR=build),
# so two builds can be compared side by side. The connections come from this shell's
# /dev/tcp; the shell raises its descriptor limit to N + 1024 first, and the node inherits
# it, so that N connections fit on both sides. Loopback only; everything it started goes on
# any exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/${BUILD_DIR:-build}/bin" connections=3000 dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench-strangers: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$connections" =~ ^[0-9]+$ ]] && [ "$connections" -ge 1 ] ||
  { echo "bench-strangers: --connections takes a whole number >= 1" >&2; exit 2; }
for b in atomdiskd atomdisk; do
  [ -x "$bin/$b" ] || { echo "bench-strangers: $bin/$b is missing (build first, or --bin)" >&2; exit 2; }
done
ulimit -n $((connections + 1024)) 2>/dev/null ||
  { echo "bench-strangers: cannot raise the descriptor limit to $((connections + 1024)) (ulimit -Hn: $(ulimit -Hn))" >&2; exit 2; }

export ATOMDISK_BIN_DIR="$bin" CLUSTER_NO_TRAP=1
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/atomdisk-strangers.XXXXXX)"
trap 'cluster_cleanup; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
cluster_create "$dir/cluster" 1 4096 >/dev/null
cluster_start_all >/dev/null
port=${CLUSTER_PORT[1]}

sample() { cluster_sample_node 1 "$1" 34; }

echo "bench-strangers: $("$bin/atomdiskd" --version 2>&1 | head -1), $connections idle connections"
sample "before"
fds=()
start=$SECONDS
for ((i = 0; i < connections; i++)); do
  if exec {fd}<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
    fds+=("$fd")
  fi
done
echo "opened ${#fds[@]} of $connections in $((SECONDS - start)) s"
sleep 2
sample "held, 2 s"
sleep 12
sample "held, 14 s"
for fd in "${fds[@]}"; do exec {fd}>&-; done
sleep 1
sample "dropped, 1 s later"
