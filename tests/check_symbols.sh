#!/bin/sh
# Fail if the shared or static library exports a global symbol without the
# mop_ prefix. Usage: check_symbols.sh libmop.so libmop.a
set -eu
status=0
bad=$(nm -D --defined-only "$1" | awk '$2 ~ /^[A-Z]$/ && $2 != "A" {print $3}' | sed 's/@.*//' | grep -v '^mop_' || true)
if [ -n "$bad" ]; then echo "shared library exports non-mop_ symbols:"; echo "$bad"; status=1; fi
bad=$(nm --defined-only "$2" | awk '$2 ~ /^[A-Z]$/ && $2 != "A" {print $3}' | grep -v '^mop_' || true)
if [ -n "$bad" ]; then echo "static library exports non-mop_ symbols:"; echo "$bad"; status=1; fi
n=$(nm -D --defined-only "$1" | grep -c ' T mop_' || true)
echo "$n mop_ functions exported"
[ "$n" -gt 0 ] || status=1
exit $status
