#!/usr/bin/env bash
# Run every test: C unit tests (release build and ASan+UBSan build), the
# threaded C tests under ThreadSanitizer, the exported-symbol and header
# checks, pytest against PyTorch / HF tokenizers, and short fuzz runs. Ends
# with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && [ -d build ] || scripts/setup.sh || exit 1
MODEL=$(scripts/model-path.sh) || exit 1
export MOP_TEST_MODEL="$MODEL"
passed=0 failed=0
record() { # name status
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "PASS $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
count_meson() { # build dir, suite label
  local log="$1/meson-logs/testlog.json"
  [ -f "$log" ] || return
  local p f
  p=$(grep -c '"result": "OK"' "$log"); f=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR)"' "$log")
  passed=$((passed + p)); failed=$((failed + f))
  echo "$2: $p passed, $f failed"
}

echo "==> build"
ninja -C build >/dev/null || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

echo "==> C unit tests (release)"
# (suite 'threads' re-runs unit tests for the TSan step below; not again here)
meson test -C build --no-suite threads --print-errorlogs --num-processes 2 \
  >/tmp/mop-test-release.log 2>&1
tail -n 25 /tmp/mop-test-release.log | grep -E 'FAIL|ERROR|TIMEOUT' || true
count_meson build "unit (release)"

if [ "${MOP_SKIP_ASAN:-0}" != 1 ]; then
  echo "==> C unit tests (ASan+UBSan)"
  if [ ! -d build-asan ]; then
    meson setup build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false \
      -Dwerror=true -Dbench=false >/dev/null
  fi
  ninja -C build-asan >/dev/null || { record "asan build" 1; }
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 --timeout-multiplier 4 \
    >/tmp/mop-test-asan.log 2>&1
  grep -E 'FAIL|ERROR|TIMEOUT' /tmp/mop-test-asan.log | tail -n 20 || true
  count_meson build-asan "unit (asan)"
  # Mutated inputs and bad options through the ASan CLI, and the Python
  # misuse cases against the ASan library (tests/hostile_campaign.py).
  echo "==> hostile-input campaign (ASan+UBSan)"
  .venv/bin/python tests/hostile_campaign.py --mop build-asan/src/cli/mop --runs 300 \
    --seconds 180 --seed "${MOP_HOSTILE_SEED:-1}" --pytest build-asan/libmop.so \
    >/tmp/mop-hostile.log 2>&1
  rc=$?
  grep -E '^(FAIL|hostile campaign|misuse)' /tmp/mop-hostile.log | tail -n 10
  record "hostile campaign (asan)" $rc
fi

if [ "${MOP_SKIP_TSAN:-0}" != 1 ] && command -v clang >/dev/null; then
  # Every C test that runs threads (meson suite 'threads', tests/meson.build)
  # under clang's ThreadSanitizer; any report fails the test (halt_on_error).
  # No suppressions: OpenBLAS is not instrumented, and no report comes from it.
  echo "==> C thread tests (TSan)"
  if [ ! -d build-tsan ]; then
    CC=clang meson setup build-tsan --buildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false \
      -Dwerror=true -Dbench=false -Dexamples=false >/dev/null
  fi
  ninja -C build-tsan >/dev/null || { record "tsan build" 1; }
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    meson test -C build-tsan --suite threads --print-errorlogs --num-processes 2 \
    --timeout-multiplier 2 >/tmp/mop-test-tsan.log 2>&1
  grep -E 'FAIL|ERROR|TIMEOUT|ThreadSanitizer' /tmp/mop-test-tsan.log | tail -n 20 || true
  count_meson build-tsan "threads (tsan)"
fi

echo "==> pytest"
LIBMOP_BUILD_DIR="$PWD/build" .venv/bin/python -m pytest -q tests/python \
  -p no:cacheprovider >/tmp/mop-pytest.log 2>&1
rc=$?
tail -n 15 /tmp/mop-pytest.log
p=$(grep -oE '[0-9]+ passed' /tmp/mop-pytest.log | tail -1 | grep -oE '[0-9]+' || echo 0)
f=$(grep -oE '[0-9]+ (failed|errors?)' /tmp/mop-pytest.log | tail -2 | awk '{s += $1} END {print s + 0}')
[ -z "$f" ] && f=0
if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; fi
passed=$((passed + p)); failed=$((failed + f))

if [ "${MOP_SKIP_FUZZ:-0}" != 1 ] && command -v clang >/dev/null; then
  echo "==> fuzzing (bounded)"
  if [ ! -d build-fuzz ]; then
    CC=clang meson setup build-fuzz --buildtype=debug -Dfuzz=true -Db_lundef=false -Dbench=false \
      >/dev/null
  fi
  fuzzers=$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//; s|^|tests/fuzz/|')
  if ninja -C build-fuzz $fuzzers >/dev/null 2>&1; then
    for fz in build-fuzz/tests/fuzz/fuzz_*; do
      [ -f "$fz" ] && [ -x "$fz" ] || continue
      name=$(basename "$fz")
      corpus="tests/fuzz/corpus/${name#fuzz_}"
      work=$(mktemp -d)
      [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
      "$fz" -max_total_time="${MOP_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 "$work" \
        >/tmp/mop-$name.log 2>&1
      record "$name" $?
      rm -rf "$work"
    done
  else
    record "fuzz build" 1
  fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
