#!/usr/bin/env bash
# Checks that every C++ source of the repository is formatted as .clang-format says (Google
# style, 100 columns). Prints each file that is not and the command that formats the tree.
#
#   tools/lint/check_format.sh [SOURCE_DIR]     exit 0: formatted; 1: not; "SKIP: ..." and 0
#                                              without clang-format (a failure with CI=true)
#   tools/lint/check_format.sh --fix [SOURCE_DIR]   formats the files in place
set -euo pipefail
fix=0
if [ "${1:-}" = --fix ]; then fix=1; shift; fi
src="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$src"

# Pinned to clang-format 14 (Debian 12's): other majors format some constructs differently, so
# their verdict would depend on the machine.
cf=""
for c in clang-format-14 clang-format; do
  if command -v "$c" >/dev/null 2>&1 && "$c" --version | grep -q 'version 14\.'; then
    cf="$c"
    break
  fi
done
if [ -z "$cf" ]; then
  if [ "${CI:-}" = true ]; then
    echo "FAIL: clang-format 14 not installed; deploy/setup-debian.sh installs it"
    exit 1
  fi
  echo "SKIP: clang-format 14 not installed (deploy/setup-debian.sh installs clang-format-14)"
  exit 0
fi

# The C++ files of the tree: git's list in a checkout, else every .cc/.h outside build trees.
if [ -d .git ] || git rev-parse --git-dir >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files -- '*.cc' '*.h' '*.cpp')
else
  mapfile -t files < <(find . \( -name 'build*' -o -name '.*' \) -prune -o \
                            \( -name '*.cc' -o -name '*.h' -o -name '*.cpp' \) -print | sort)
fi
if [ ${#files[@]} -eq 0 ]; then
  echo "FAIL: no C++ sources found under $src"
  exit 1
fi

if [ "$fix" = 1 ]; then
  "$cf" -i --style=file "${files[@]}"
  echo "formatted ${#files[@]} files"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  "$cf" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'not formatted: %s\n' "${bad[@]}"
  echo "FAIL: ${#bad[@]} of ${#files[@]} files differ from .clang-format; run tools/lint/check_format.sh --fix"
  exit 1
fi
echo "ok: ${#files[@]} files formatted as .clang-format says ($("$cf" --version | head -1))"
