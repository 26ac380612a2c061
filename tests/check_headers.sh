#!/bin/sh
# Every public header must compile on its own, as C11 and as C++.
set -eu
inc=$1
status=0
for h in "$inc"/libmop/*.h; do
  name=libmop/$(basename "$h")
  printf '#include <%s>\nint mop_header_check_;\n' "$name" | cc -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$inc" -x c - || { echo "not self-contained as C: $name"; status=1; }
  if command -v c++ >/dev/null; then
    printf '#include <%s>\n' "$name" | c++ -Wall -Wextra -Werror -fsyntax-only -I"$inc" -x c++ - || { echo "not self-contained as C++: $name"; status=1; }
  fi
done
exit $status
