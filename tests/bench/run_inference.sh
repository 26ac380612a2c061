#!/bin/sh
# Inference benchmark, libmop vs llama.cpp, on an F32 copy of SmolLM2-135M.
# Usage: tests/bench/run_inference.sh [BUILD_DIR] [extra bench_inference.py options]
# Needs llama-cpp-python in .venv (CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python).
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
[ $# -gt 0 ] && shift
PY=.venv/bin/python
F32=build/SmolLM2-135M-Instruct.F32.gguf
ninja -C "$BUILD" src/cli/mop >/dev/null
[ -f "$F32" ] || "$PY" tests/bench/convert_f32.py "$F32"
exec "$PY" tests/bench/bench_inference.py --model "$F32" --mop "$BUILD/src/cli/mop" "$@"
