# shellcheck shell=bash
# scripts/lib/cluster.sh: start and tear down local atomdisk clusters, for tests, the demo
# and benchmarks. Source it from bash (`source scripts/lib/cluster.sh`); it sets no shell
# options of its own and defines only cluster_* / CLUSTER_* names.
#
# Everything that needs undoing (daemons, FUSE mounts, loop devices, filesystem mounts,
# temporary folders) is registered as it is created and undone, newest first, by
# cluster_cleanup, which cluster_create installs as an EXIT/INT/TERM trap (set
# CLUSTER_NO_TRAP=1 before sourcing to install your own and call cluster_cleanup from it).
#
# Binaries: $ATOMDISK_BIN_DIR (default: build/bin of this repository) holds atomdiskd,
# atomdisk, atomdisk-fuse.
#
# Functions
#   cluster_create DIR N [SECTORS]   New cluster of N nodes in DIR (created; must not hold a
#                                    cluster.toml yet) on free 127.0.0.1 ports; SECTORS
#                                    defaults to 16384 (64 MiB). Writes DIR/cluster.toml and
#                                    the keys, with `atomdisk init` if that exists, else
#                                    directly (same format). Sets CLUSTER_DIR, CLUSTER_N,
#                                    CLUSTER_CONFIG, CLUSTER_SECTORS, CLUSTER_PORT[rank].
#                                    $CLUSTER_TLS (off or require) is passed to `init --tls`;
#                                    unset: init's default (require). "off" also works with
#                                    builds from before TLS, whose init lacks --tls.
#   cluster_start_node RANK          Starts atomdiskd for RANK in the background; its log is
#                                    DIR/node-RANK.log; pid in CLUSTER_PID[rank].
#   cluster_start_all                Starts every node, then waits until all listen and vote.
#   cluster_wait_voting [TIMEOUT_S] [COUNT]
#                                    Waits until COUNT nodes (default all) vote (atomdisk status).
#   cluster_wait_listening [TIMEOUT_S] [RANK...]
#                                    Waits until the nodes (default: all started ones) accept
#                                    TCP connections; non-zero on timeout (default 20 s).
#   cluster_kill9 RANK               SIGKILL, and waits until the process is gone.
#   cluster_stop_node RANK           SIGTERM, waits up to 10 s, then SIGKILL.
#   cluster_stop_all                 cluster_stop_node for every running node.
#   cluster_node_address RANK        Prints 127.0.0.1:PORT.
#   cluster_mount MOUNTPOINT [ARGS]  Runs atomdisk-fuse --config CLUSTER_CONFIG MOUNTPOINT -f
#                                    ARGS in the background (log MOUNTPOINT.log), waits until
#                                    MOUNTPOINT/disk exists; non-zero (and the log printed) if
#                                    it exits first. Registered for unmounting.
#   cluster_unmount MOUNTPOINT       fusermount3 -u, waits for the process to exit.
#   cluster_losetup FILE [OPTS]      Attaches FILE to a free loop device (losetup OPTS, e.g.
#                                    --direct-io=on), prints /dev/loopN, registered.
#   cluster_mount_fs DEV DIR [OPTS]  mount [OPTS] DEV DIR, registered for umount.
#   cluster_register_cleanup CMD     Registers a shell command for cluster_cleanup.
#   cluster_cleanup                  Undoes everything registered, newest first; idempotent.
#   cluster_free_port                Prints a TCP port on 127.0.0.1 that nothing listens on.
#   cluster_is_mounted DIR           True if DIR is a mountpoint (per /proc/self/mounts).

CLUSTER_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${ATOMDISK_BIN_DIR:=$(cd "$CLUSTER_LIB_DIR/../.." && pwd)/build/bin}"
CLUSTER_CLEANUP=()
declare -gA CLUSTER_PORT=() CLUSTER_PID=() CLUSTER_MOUNT_PID=()
CLUSTER_USED_PORTS=" "

cluster_log() { echo "cluster: $*" >&2; }

cluster_register_cleanup() { CLUSTER_CLEANUP+=("$*"); }

cluster_cleanup() {
  local i
  for ((i = ${#CLUSTER_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${CLUSTER_CLEANUP[$i]}" || true
  done
  CLUSTER_CLEANUP=()
}

cluster_install_trap() {
  [ -n "${CLUSTER_NO_TRAP:-}" ] && return 0
  [ -n "${CLUSTER_TRAP_SET:-}" ] && return 0
  CLUSTER_TRAP_SET=1
  # shellcheck disable=SC2154  # rc is set inside the trap; cleanup commands may read it
  trap 'rc=$?; cluster_cleanup; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

cluster_free_port() {
  local port tries=0
  while ((tries++ < 200)); do
    port=$((20000 + RANDOM % 40000))
    [[ "$CLUSTER_USED_PORTS" == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
      ! ss -Htan "( sport = :$port )" 2>/dev/null | grep -q .; then
      CLUSTER_USED_PORTS+="$port "
      echo "$port"
      return 0
    fi
  done
  cluster_log "no free port found"
  return 1
}

cluster_node_address() { echo "127.0.0.1:${CLUSTER_PORT[$1]}"; }

cluster_create() {
  local dir=$1 n=$2 sectors=${3:-16384} rank port
  [ -n "$dir" ] && [ -n "$n" ] || { cluster_log "usage: cluster_create DIR N [SECTORS]"; return 2; }
  mkdir -p "$dir" || return 1
  dir=$(cd "$dir" && pwd)
  [ -e "$dir/cluster.toml" ] && { cluster_log "$dir/cluster.toml exists"; return 1; }
  # shellcheck disable=SC2034  # CLUSTER_SECTORS is for the caller
  CLUSTER_DIR=$dir CLUSTER_N=$n CLUSTER_SECTORS=$sectors CLUSTER_CONFIG=$dir/cluster.toml
  cluster_install_trap
  cluster_register_cleanup "cluster_stop_all"
  local addresses=()
  for ((rank = 1; rank <= n; rank++)); do
    port=$(cluster_free_port) || return 1
    CLUSTER_PORT[$rank]=$port
    addresses+=("127.0.0.1:$port")
  done
  if [ -z "${CLUSTER_WRITE_CONFIG_DIRECTLY:-}" ] && [ -x "$ATOMDISK_BIN_DIR/atomdisk" ] &&
    "$ATOMDISK_BIN_DIR/atomdisk" init --help >/dev/null 2>&1; then
    local joined
    joined=$(IFS=,; echo "${addresses[*]}")
    local tls_args=()
    if [ -n "${CLUSTER_TLS:-}" ] && "$ATOMDISK_BIN_DIR/atomdisk" init --help 2>/dev/null | grep -q -- --tls; then
      tls_args=(--tls "$CLUSTER_TLS")
    elif [ -n "${CLUSTER_TLS:-}" ] && [ "$CLUSTER_TLS" != off ]; then
      cluster_log "CLUSTER_TLS=$CLUSTER_TLS but $ATOMDISK_BIN_DIR/atomdisk has no init --tls"
      return 1
    fi
    "$ATOMDISK_BIN_DIR/atomdisk" init --dir "$dir" --sectors "$sectors" --nodes "$joined" \
      "${tls_args[@]}" >"$dir/init.log" 2>&1 && return 0
    cluster_log "atomdisk init failed ($(tail -1 "$dir/init.log")); writing the config directly"
    rm -rf "$dir/cluster.toml" "$dir/client.key" "$dir/system.key" "$dir/tls"
    if [ -n "${CLUSTER_TLS:-}" ] && [ "$CLUSTER_TLS" != off ]; then return 1; fi
  fi
  # The format of common/config.h.
  (umask 077 && openssl rand -hex 32 >"$dir/client.key" && openssl rand -hex 64 >"$dir/system.key") ||
    return 1
  {
    echo "sectors = $sectors"
    echo 'client_key_file = "client.key"'
    echo 'system_key_file = "system.key"'
    for ((rank = 1; rank <= n; rank++)); do
      echo
      echo "[[nodes]]"
      echo "rank = $rank"
      echo "address = \"127.0.0.1:${CLUSTER_PORT[$rank]}\""
      echo "data_dir = \"data/$rank\""
    done
  } >"$dir/cluster.toml"
}

cluster_start_node() {
  local rank=$1
  [ -n "${CLUSTER_PORT[$rank]:-}" ] || { cluster_log "no node $rank"; return 2; }
  mkdir -p "$CLUSTER_DIR/data/$rank"
  "$ATOMDISK_BIN_DIR/atomdiskd" --config "$CLUSTER_CONFIG" --rank "$rank" \
    >>"$CLUSTER_DIR/node-$rank.log" 2>&1 &
  CLUSTER_PID[$rank]=$!
}

cluster_start_all() {
  local rank
  for ((rank = 1; rank <= CLUSTER_N; rank++)); do cluster_start_node "$rank" || return 1; done
  cluster_wait_listening 20 && cluster_wait_voting 20
}

# Waits until COUNT nodes (default: all) vote: a new cluster's nodes register with each other
# first, and a node back with an empty data_dir votes only once it caught up (docs/RESYNC.md).
cluster_wait_voting() {  # [TIMEOUT_S] [COUNT]
  local timeout=${1:-20} want=${2:-$CLUSTER_N} deadline out v
  deadline=$((SECONDS + timeout))
  while true; do
    out=$("$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" status --json --wait 1000 \
      2>/dev/null) || true
    v=$(grep -Eo '"voting": [0-9]+' <<<"$out" | tail -1 | grep -Eo '[0-9]+') || v=0
    if [ "${v:-0}" -ge "$want" ]; then return 0; fi
    if ((SECONDS >= deadline)); then
      cluster_log "fewer than $want nodes vote after ${timeout}s; status:"
      "$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" status >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

cluster_wait_listening() {
  local timeout=${1:-20} ranks=("${@:2}") rank deadline
  ((${#ranks[@]})) || ranks=("${!CLUSTER_PID[@]}")
  deadline=$((SECONDS + timeout))
  for rank in "${ranks[@]}"; do
    until (exec 3<>"/dev/tcp/127.0.0.1/${CLUSTER_PORT[$rank]}") 2>/dev/null; do
      if [ -n "${CLUSTER_PID[$rank]:-}" ] && ! cluster_pid_alive "${CLUSTER_PID[$rank]}"; then
        cluster_log "node $rank exited; its log:"
        tail -20 "$CLUSTER_DIR/node-$rank.log" >&2
        return 1
      fi
      if ((SECONDS >= deadline)); then
        cluster_log "node $rank not listening on ${CLUSTER_PORT[$rank]} after ${timeout}s"
        return 1
      fi
      sleep 0.05
    done
  done
}

# One line for the hostile-client benches (bench-strangers.sh, bench-slow-readers.sh): node
# RANK's RSS and open descriptors, and whether a good client (ATOMDISK_BIN_DIR's atomdisk) is
# served a read within 10 s; WHAT labels the line, padded to WIDTH.
cluster_sample_node() {  # RANK WHAT WIDTH
  local pid=${CLUSTER_PID[$1]} rss fds served=no
  rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  if timeout 10 "$ATOMDISK_BIN_DIR/atomdisk" --config "$CLUSTER_CONFIG" read 1 >/dev/null 2>&1; then
    served=yes
  fi
  printf "%-${3}s RSS %8d kB  fds %6d  good client served: %s\n" "$2" "$rss" "$fds" "$served"
}

cluster_pid_alive() {  # PID: running (a zombie, killed but not yet reaped, is not)
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

cluster_wait_pid_gone() {  # PID TIMEOUT_S
  local pid=$1 deadline=$((SECONDS + $2))
  while cluster_pid_alive "$pid"; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true  # reap it if it is our child
  return 0
}

cluster_kill9() {
  local rank=$1 pid=${CLUSTER_PID[$1]:-}
  [ -n "$pid" ] || return 0
  kill -9 "$pid" 2>/dev/null
  cluster_wait_pid_gone "$pid" 10
  unset "CLUSTER_PID[$rank]"
}

cluster_stop_node() {
  local rank=$1 pid=${CLUSTER_PID[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  cluster_wait_pid_gone "$pid" 10 || { kill -9 "$pid" 2>/dev/null; cluster_wait_pid_gone "$pid" 5; }
  unset "CLUSTER_PID[$rank]"
}

cluster_stop_all() {
  local rank
  for rank in "${!CLUSTER_PID[@]}"; do cluster_stop_node "$rank"; done
}

cluster_is_mounted() {
  local dir
  dir=$(cd "$1" 2>/dev/null && pwd -P) || dir=$1
  awk -v d="$dir" '$2 == d { found = 1 } END { exit !found }' /proc/self/mounts
}

cluster_mount() {
  local mp=$1 pid deadline
  shift
  mkdir -p "$mp"
  mp=$(cd "$mp" && pwd)
  "$ATOMDISK_BIN_DIR/atomdisk-fuse" --config "$CLUSTER_CONFIG" "$mp" -f "$@" >"$mp.log" 2>&1 &
  pid=$!
  CLUSTER_MOUNT_PID[$mp]=$pid
  cluster_register_cleanup "cluster_unmount '$mp'"
  deadline=$((SECONDS + 20))
  until [ -e "$mp/disk" ]; do
    if ! cluster_pid_alive "$pid"; then
      cluster_log "atomdisk-fuse on $mp exited:"
      cat "$mp.log" >&2
      return 1
    fi
    ((SECONDS >= deadline)) && { cluster_log "mount $mp timed out"; cat "$mp.log" >&2; return 1; }
    sleep 0.05
  done
}

cluster_unmount() {
  local mp=$1 pid=${CLUSTER_MOUNT_PID[$1]:-}
  if cluster_is_mounted "$mp"; then
    fusermount3 -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
  fi
  if [ -n "$pid" ]; then
    cluster_wait_pid_gone "$pid" 15 || { kill -9 "$pid" 2>/dev/null; cluster_wait_pid_gone "$pid" 5; }
    unset "CLUSTER_MOUNT_PID[$mp]"
  fi
  cluster_is_mounted "$mp" && umount -l "$mp" 2>/dev/null
  return 0
}

cluster_losetup() {
  local file=$1 dev
  shift
  dev=$(losetup --find --show "$@" "$file") || return 1
  cluster_register_cleanup "losetup -d '$dev' 2>/dev/null"
  echo "$dev"
}

cluster_mount_fs() {
  local dev=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  mount "$@" "$dev" "$dir" || return 1
  cluster_register_cleanup "umount '$dir' 2>/dev/null || umount -l '$dir' 2>/dev/null"
}
