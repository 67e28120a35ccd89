#!/usr/bin/env bash
# docs/monitoring: the alert rules pass `promtool check rules`, the dashboard is valid JSON,
# and every atomdisk metric either file names is one that atomdiskd or atomdisk-fuse exports
# (listed in their sources), so neither graphs nor alerts on a name that does not exist.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
rules=$repo/docs/monitoring/atomdisk-alerts.yml
dash=$repo/docs/monitoring/atomdisk-dashboard.json
python3 -m json.tool "$dash" >/dev/null || { echo "FAIL: $dash is not valid JSON"; exit 1; }
exported=$(grep -ho '"atomdisk_[a-z_]*"' "$repo/daemon/core/node_metrics.cc" "$repo/fuse/fuse_metrics.cc" | tr -d '"' | sort -u)
for f in "$rules" "$dash"; do
  for name in $(grep -o 'atomdisk_[a-z_]*' "$f" | sort -u); do
    base=${name%_bucket}
    grep -qx "$base" <<<"$exported" || { echo "FAIL: $f uses $name, which nothing exports"; exit 1; }
  done
done
if ! command -v promtool >/dev/null; then
  echo "SKIP: promtool is not installed (Debian's prometheus package; scripts/install-deps.sh)"
  exit 77
fi
promtool check rules "$rules"
echo PASS
