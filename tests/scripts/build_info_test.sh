#!/usr/bin/env bash
# Build info (common/build_info.h, cmake/build_revision.cmake): `--version` of atomdiskd,
# atomdisk-fuse and atomdisk prints "PROGRAM VERSION (revision REV)" with the revision of the
# source the build came from; the revision script says "unknown" outside a git checkout (a
# tarball, also one unpacked inside another repository), honours -DATOMDISK_REVISION, marks
# a tree with changes "-dirty" and leaves the header untouched when nothing changed; and a
# tarball of the tree configures and builds its build info with revision "unknown".
# Usage: build_info_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
cmake_cmd=${CMAKE_COMMAND:-cmake}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/atomdisk-build-info.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "== --version of the three programs"
if [ "$(git -C "$src" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$src" && pwd -P)" ]; then
  head=$(git -C "$src" rev-parse --short=12 HEAD)
  want_re="($head|$head-dirty)"
else
  head=unknown
  want_re=unknown
fi
version=$(sed -n 's/^project(atomdisk VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
[ -n "$version" ] || fail "no project version in $src/CMakeLists.txt"
revisions=()
for prog in atomdiskd atomdisk-fuse atomdisk; do
  line=$("$build/bin/$prog" --version) || fail "$prog --version failed"
  echo "$line"
  [[ $line =~ ^$prog\ ${version//./\\.}\ \(revision\ $want_re\)$ ]] ||
    fail "$prog --version printed '$line', not '$prog $version (revision $head...)' (rebuilt since the last commit?)"
  revisions+=("${line##* }")
done
if [ "${revisions[0]}" != "${revisions[1]}" ] || [ "${revisions[1]}" != "${revisions[2]}" ]; then
  fail "the programs name different revisions: ${revisions[*]}"
fi

echo "== cmake/build_revision.cmake"
take() {  # DIR [REVISION] [GIT]: prints the revision the script writes for DIR
  local out=$tmp/out.h
  rm -f "$out"
  "$cmake_cmd" -DSOURCE_DIR="$1" -DOUTPUT="$out" -DREVISION="${2:-}" -DGIT="${3-$(command -v git)}" \
    -P "$src/cmake/build_revision.cmake" || return 1
  sed -n 's/^#define ATOMDISK_BUILD_REVISION "\(.*\)"$/\1/p' "$out"
}
mkdir -p "$tmp/tarball"
[ "$(take "$tmp/tarball")" = unknown ] || fail "a folder outside git: '$(take "$tmp/tarball")', not unknown"
[ "$(take "$tmp/tarball" 1a2b3c4d5e6f)" = 1a2b3c4d5e6f ] || fail "-DATOMDISK_REVISION was not used"
repo=$tmp/repo
git init -q "$repo"
echo a >"$repo/file"
git -C "$repo" add file
git -C "$repo" -c user.name=t -c user.email=t@t commit -qm one
mkdir -p "$repo/unpacked"
[ "$(take "$repo/unpacked")" = unknown ] ||
  fail "a tarball unpacked inside another repository took its revision: $(take "$repo/unpacked")"
rev=$(git -C "$repo" rev-parse --short=12 HEAD)
[ "$(take "$repo")" = "$rev" ] || fail "a clean checkout: '$(take "$repo")', not $rev"
[ "$(take "$repo" "" "")" = unknown ] || fail "without git: '$(take "$repo" "" "")', not unknown"
echo b >"$repo/file"
[ "$(take "$repo")" = "$rev-dirty" ] || fail "a changed tracked file: '$(take "$repo")', not $rev-dirty"
# Unchanged revision: the header keeps its time stamp, so nothing recompiles.
out=$tmp/keep.h
"$cmake_cmd" -DSOURCE_DIR="$repo" -DOUTPUT="$out" -DGIT="$(command -v git)" -P "$src/cmake/build_revision.cmake"
touch -d '2001-01-01' "$out"
"$cmake_cmd" -DSOURCE_DIR="$repo" -DOUTPUT="$out" -DGIT="$(command -v git)" -P "$src/cmake/build_revision.cmake"
[ "$(stat -c %Y "$out")" = "$(date -d 2001-01-01 +%s)" ] || fail "an unchanged revision rewrote the header"

echo "== a tarball of the tree (no .git) configures and builds its build info"
if [ "$head" != unknown ]; then
  mkdir -p "$tmp/src"
  (cd "$src" && git ls-files -z | xargs -0 cp --parents -t "$tmp/src")
  [ ! -e "$tmp/src/.git" ] || fail "the copy holds .git"
  "$cmake_cmd" -S "$tmp/src" -B "$tmp/b" -G Ninja -DATOMDISK_BUILD_TESTS=OFF >"$tmp/configure.log" 2>&1 ||
    { cat "$tmp/configure.log"; fail "configuring the tarball failed"; }
  nice ninja -C "$tmp/b" atomdisk_build_info >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; fail "building the tarball's build info failed"; }
  grep -q '"unknown"' "$tmp/b/generated/common/build_revision.h" ||
    fail "the tarball's revision: $(cat "$tmp/b/generated/common/build_revision.h")"
else
  echo "(the source is not a git checkout: the programs above said unknown)"
fi
echo PASS
