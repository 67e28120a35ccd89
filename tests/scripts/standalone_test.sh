#!/usr/bin/env bash
# The repository stands alone: no code comment, doc or script points at files outside it
# (the course's shared reference folder a checkout sits next to on a developer's machine).
# Usage: standalone_test.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: standalone_test.sh SOURCE_DIR}
cd "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files)
else
  mapfile -t files < <(find . -type f -not -path './build*' -not -path './.git/*')
fi
self=tests/scripts/standalone_test.sh
hits=$(printf '%s\n' "${files[@]}" | grep -v -x -F "$self" | grep -v -x -F "./$self" |
  tr '\n' '\0' | xargs -0 grep -n -I -E '\.\./shared/|shared/reference' 2>/dev/null || true)
if [ -n "$hits" ]; then
  echo "standalone_test: these lines point outside the repository; say it in the repository instead:" >&2
  echo "$hits" >&2
  exit 1
fi
echo "standalone_test: ${#files[@]} files, none points outside the repository"
