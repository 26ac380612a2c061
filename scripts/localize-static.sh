#!/bin/sh
# Turn an archive of library objects into libmop.a holding one relocatable
# object whose hidden (internal) symbols are local: only mop_ names stay global.
set -eu
in=$1 out=$2 dir=$3
mkdir -p "$dir"
ld -r --whole-archive "$in" -o "$dir/libmop.o"
objcopy --localize-hidden "$dir/libmop.o"
rm -f "$out"
ar rcs "$out" "$dir/libmop.o"
