#!/usr/bin/env bash
# No node up at mount time: atomdisk-fuse exits non-zero with a clear message and leaves no
# mount behind, in the foreground and as a daemon.
source "$(dirname "$0")/test_lib.sh"

cluster_create "$TEST_DIR/cluster" 3 1024  # no node started
mnt=$TEST_DIR/mnt
mkdir -p "$mnt"
for mode in foreground daemon; do
  step "mounting with every node down ($mode)"
  args=(--config "$CLUSTER_CONFIG" "$mnt" -o timeout=2)
  [ "$mode" = foreground ] && args+=(-f)
  start=$SECONDS
  set +e
  timeout 30 "$ATOMDISK_BIN_DIR/atomdisk-fuse" "${args[@]}" >"$TEST_DIR/out.log" 2>&1
  code=$?
  set -e
  cat "$TEST_DIR/out.log"
  [ "$code" -ne 0 ] || fail "atomdisk-fuse exited 0 with no node up"
  [ "$code" -ne 124 ] || fail "atomdisk-fuse hung (killed by timeout)"
  grep -qi "no node answered" "$TEST_DIR/out.log" || fail "no clear message"
  ! cluster_is_mounted "$mnt" || fail "a mount was left behind"
  ((SECONDS - start <= 10)) || fail "took $((SECONDS - start)) s to give up"
done
echo "PASS"
