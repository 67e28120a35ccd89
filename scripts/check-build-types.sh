#!/usr/bin/env bash
# Builds every target in each CMake build type with warnings as errors, one build folder per
# type (build-types/TYPE), so that a type nobody tests daily (Release and MinSizeRel inline
# and warn differently from RelWithDebInfo, Debug not at all) cannot rot unseen. Builds
# only; the tests run in scripts/test.sh's build.
#
#   scripts/check-build-types.sh                  # Debug Release RelWithDebInfo MinSizeRel
#   scripts/check-build-types.sh Release MinSizeRel
# Environment: BUILD_ROOT (default build-types), JOBS (default nproc). Uses ccache when
# installed. Exit 0 when every type built; otherwise 1, naming the types that failed (each
# one's log is BUILD_ROOT/TYPE.log).
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Debug Release RelWithDebInfo MinSizeRel)
for type in "${types[@]}"; do
  case $type in
    Debug|Release|RelWithDebInfo|MinSizeRel) ;;
    *) echo "check-build-types: unknown build type '$type' (Debug, Release, RelWithDebInfo, MinSizeRel)" >&2; exit 2 ;;
  esac
done
root=${BUILD_ROOT:-build-types}
jobs=${JOBS:-$(nproc)}
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
mkdir -p "$root"
failed=()
for type in "${types[@]}"; do
  start=$(date +%s)
  if cmake -S . -B "$root/$type" -G Ninja -DCMAKE_BUILD_TYPE="$type" -DATOMDISK_WERROR=ON \
      "${launcher[@]}" >"$root/$type.log" 2>&1 &&
     nice -n 10 ninja -C "$root/$type" -j "$jobs" >>"$root/$type.log" 2>&1; then
    echo "check-build-types: $type built in $(( $(date +%s) - start )) s"
  else
    echo "check-build-types: $type FAILED (last lines of $root/$type.log):" >&2
    grep -E 'error|warning' "$root/$type.log" | head -20 >&2 || tail -20 "$root/$type.log" >&2
    failed+=("$type")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "check-build-types: failed: ${failed[*]}" >&2
  exit 1
fi
