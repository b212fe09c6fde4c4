#!/usr/bin/env bash
# Every public header compiles as the only include of a translation unit, warning-free under
# -Wall -Wextra -Wpedantic -Werror, with each compiler given (the first thing an #include user meets).
#   compile_alone.sh INCLUDE_DIR CXX [CXX ...]
set -uo pipefail
inc="$1"; shift
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fails=0 checked=0
for cxx in "$@"; do
  for h in $(cd "$inc" && find mmfree -name '*.hpp' | sort); do
    src="$work/$(echo "$h" | tr '/.' '__').cpp"
    printf '#include <%s>\nint main() { return 0; }\n' "$h" > "$src"
    if ! out=$("$cxx" -std=c++20 -O1 -Wall -Wextra -Wpedantic -Werror -c -o /dev/null -I "$inc" "$src" 2>&1); then
      echo "FAIL $cxx $h"; echo "$out" | head -20; fails=$((fails + 1))
    fi
    checked=$((checked + 1))
  done
done
echo "$((checked - fails)) passed, $fails failed"
[ "$fails" -eq 0 ] && [ "$checked" -gt 0 ]
