#!/usr/bin/env bash
# Record the current public ABI as the baseline that CI checks against.
# Run at a release (after the version bump), from a debug-info build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build-abi ] || meson setup build-abi --buildtype=debugoptimized -Dtests=false -Dexamples=false >/dev/null
ninja -C build-abi >/dev/null
mkdir -p abi
abidw --headers-dir include/libmop --no-corpus-path build-abi/libmop.so > abi/libmop.abi
echo "wrote abi/libmop.abi"
