#!/usr/bin/env bash
# Formatting: every C++ file under src/ tests/ bench/ fuzz/ must be as
# clang-format (.clang-format at the root) would write it. Fails naming the
# files that are not; `scripts/check-format.sh --fix` rewrites them in place.
# Fast (a second or two); run by scripts/run-tests.sh before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
command -v "$CLANG_FORMAT" >/dev/null ||
  { echo "check-format: $CLANG_FORMAT not found (scripts/setup.sh installs it)" >&2; exit 1; }
mapfile -t files < <(git ls-files -- 'src/*.cc' 'src/*.h' 'tests/*.cc' 'tests/*.h' \
  'bench/*.cc' 'bench/*.h' 'fuzz/*.cc' 'fuzz/*.h')
if [ "${1:-}" = "--fix" ]; then
  printf '%s\0' "${files[@]}" | xargs -0 -n 50 "$CLANG_FORMAT" -i
  echo "check-format: formatted ${#files[@]} files"
  exit 0
fi
# One clang-format process for all files (one per file is ten times slower);
# its diagnostics name the files.
rc=0
out=$("$CLANG_FORMAT" --dry-run -Werror --ferror-limit=1 "${files[@]}" 2>&1) || rc=$?
mapfile -t bad < <(sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' \
  <<<"$out" | sort -u)
if [ "$rc" -ne 0 ] && [ ${#bad[@]} -eq 0 ]; then
  echo "check-format: $CLANG_FORMAT failed:" >&2
  echo "$out" | head -n 20 >&2
  exit 1
fi
if [ ${#bad[@]} -gt 0 ]; then
  echo "check-format: ${#bad[@]} of ${#files[@]} files differ from clang-format ($($CLANG_FORMAT --version | head -n1)):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "check-format: run scripts/check-format.sh --fix (or clang-format -i FILE) and commit the result" >&2
  exit 1
fi
echo "check-format: ok (${#files[@]} files)"
