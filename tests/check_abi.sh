#!/bin/sh
# Compare the built library's ABI with the committed baseline (abi/libmop.abi).
# New functions are fine (--no-added-syms). Any other change fails: abidiff
# exit bit 8 (incompatible: a symbol removed) and bit 4 (a change to review:
# a struct's layout, a parameter's type; abidiff files a field inserted into
# a by-value params struct here). An intended change (a field appended to a
# params struct, guarded by struct_size) is reviewed and then recorded by
# regenerating the baseline: scripts/update-abi-baseline.sh
set -u
lib=$1 baseline=$2 headers=$3
if ! command -v abidiff >/dev/null; then echo "abidiff not installed (abigail-tools)"; exit 77; fi
abidiff --headers-dir2 "$headers" --no-added-syms "$baseline" "$lib"
rc=$?
if [ $((rc & 12)) -ne 0 ]; then
  echo "ABI change against $baseline (abidiff exit $rc): review, then scripts/update-abi-baseline.sh"
  exit 1
fi
if [ $((rc & 1)) -ne 0 ]; then echo "abidiff failed to run"; exit 1; fi
echo "ABI compatible with the baseline (abidiff exit $rc)"
exit 0
