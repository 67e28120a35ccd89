#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole ctest suite.
#
#   scripts/test.sh                       # the default suite (warnings are errors)
#   scripts/test.sh --sanitize address,undefined   # same, built with ASan+UBSan
#   scripts/test.sh --sanitize thread     # TSan build (threaded parts)
#   scripts/test.sh --label unit          # only tests with this ctest label
#   scripts/test.sh --exclude-label fuse  # skip tests with this label (a regex)
#   scripts/test.sh --soak                # also the long simulator sweep and soak tests
#   scripts/test.sh --format-check        # fail if clang-format would change a file
# Environment: BUILD_DIR (default build, or build-<sanitizer>), JOBS (default nproc),
# CTEST_JOBS (tests at once; default JOBS).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/test.sh [OPTIONS]

Installs what is missing (scripts/install-deps.sh), configures and builds with warnings as
errors, and runs the ctest suite.

Options:
  --sanitize LIST        build with sanitizers: address,undefined or thread (a Debug build in
                         build-LIST)
  --label LABEL          run only the tests with this ctest label
  --exclude-label REGEX  skip the tests whose label matches REGEX (e.g. 'fuse|demo')
  --soak                 also run the long simulator sweep and the soak tests
  --format-check         first fail if clang-format would change a tracked .cc or .h file
  -h, --help             print this text

Environment: BUILD_DIR (default build, or build-<sanitizers>), JOBS (default nproc),
CTEST_JOBS (tests run at once; default JOBS).
EOF
}

sanitize="" label="" exclude="" soak=0 format_check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    --exclude-label) exclude="$2"; shift 2 ;;
    --soak) soak=1; shift ;;
    --format-check) format_check=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh

if [ "$format_check" = 1 ]; then
  files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find . -name '*.cc' -o -name '*.h')
  if ! clang-format --dry-run --Werror $files; then
    echo "test.sh: clang-format would change the files above (run clang-format -i)" >&2
    exit 1
  fi
  echo "clang-format: all files formatted"
fi

jobs="${JOBS:-$(nproc)}"
if [ -n "$sanitize" ]; then
  build="${BUILD_DIR:-build-$(echo "$sanitize" | tr ',' '-')}"
  build_type=Debug
else
  build="${BUILD_DIR:-build}"
  build_type=RelWithDebInfo
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DATOMDISK_WERROR=ON \
  -DATOMDISK_SANITIZE="$sanitize" >/dev/null
ninja -C "$build" -j "$jobs"

ctest_args=(--test-dir "$build" --output-on-failure --timeout 900 -j "${CTEST_JOBS:-$jobs}")
[ -n "$label" ] && ctest_args+=(-L "$label")
if [ "$soak" = 1 ]; then
  export ATOMDISK_SOAK=1
else
  exclude="soak${exclude:+|$exclude}"
fi
[ -n "$exclude" ] && ctest_args+=(-LE "$exclude")
if [ -n "$sanitize" ]; then
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
  export TSAN_OPTIONS="halt_on_error=1:${TSAN_OPTIONS:-}"
fi
ctest "${ctest_args[@]}"
