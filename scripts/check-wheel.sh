#!/usr/bin/env bash
# The pip package as a new user gets it: build the wheel with pip from
# bindings/python and from the repository root (meson-python, isolated build
# envs: needs PyPI), install each into fresh venvs (one seeing Debian's numpy
# 1.x, one isolated with numpy 2.x from PyPI) and import libmop there from
# outside the source tree with no LIBMOP_* variable. Prints one line per
# case and exits non-zero if any fails. About 3 minutes on 2 cores.
# (tests/python/test_packaging.py does the numpy 1.x case offline.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=$(scripts/model-path.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset LIBMOP_LIBRARY LIBMOP_BUILD_DIR PYTHONPATH PKG_CONFIG_PATH
fail=0
for src in bindings/python .; do
  out="$work/wheel-${src//\//_}"
  /usr/bin/python3 -m pip wheel -q --no-deps --disable-pip-version-check -w "$out" "$ROOT/$src" \
    >"$work/build.log" 2>&1 || { echo "FAIL build from $src"; grep -v "^ *$" "$work/build.log" | tail -60; fail=1; continue; }
  whl=$(ls "$out"/libmop-*.whl)
  for np in debian numpy2; do
    env="$work/venv-$np"
    rm -rf "$env"
    if [ $np = debian ]; then
      /usr/bin/python3 -m venv --system-site-packages "$env"
      "$env/bin/pip" install -q --disable-pip-version-check "$whl"
    else
      /usr/bin/python3 -m venv "$env"
      "$env/bin/pip" install -q --disable-pip-version-check "$whl" 'numpy>=2'
    fi
    if (cd "$work" && PKG_CONFIG_LIBDIR="$work" "$env/bin/python" -c "
import numpy, libmop   # PKG_CONFIG_LIBDIR: no libmop.pc, the bundled library must be found
m = libmop.Model('$MODEL', n_threads=1)
assert list(m.tokenize('hello world')) == [28120, 905]
assert libmop.library_path.startswith('$env')
print('numpy', numpy.__version__, 'libmop', libmop.version(), libmop.library_path)"); then
      echo "PASS pip install $src, $np"
    else
      echo "FAIL pip install $src, $np"; fail=1
    fi
  done
done
exit $fail
