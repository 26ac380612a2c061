#!/bin/sh
# Compare the built library's ABI with the committed baseline (abi/libmop.abi).
# Additions are fine; an incompatible change (abidiff exit bit 8) fails.
# Regenerate the baseline at a release: scripts/update-abi-baseline.sh
set -u
lib=$1 baseline=$2 headers=$3
if ! command -v abidiff >/dev/null; then echo "abidiff not installed (abigail-tools)"; exit 77; fi
abidiff --headers-dir2 "$headers" --no-added-syms "$baseline" "$lib"
rc=$?
if [ $((rc & 8)) -ne 0 ]; then
  echo "incompatible ABI change against $baseline"
  exit 1
fi
if [ $((rc & 1)) -ne 0 ]; then echo "abidiff failed to run"; exit 1; fi
echo "ABI compatible with the baseline (abidiff exit $rc)"
exit 0
