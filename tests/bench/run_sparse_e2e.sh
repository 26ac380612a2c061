#!/usr/bin/env bash
# End-to-end inference of pruned SmolLM2-135M against the dense model, same
# run: for each pattern, prune with magnitude (the method does not change
# the speed, only which weights survive), save, then `mop bench` prefill and
# decode tokens/s; ratios against the dense model (the Q4_1 file, F32 in
# memory once loaded) benchmarked at the start and again at the end (the
# two dense runs show how much the machine drifted). The 90 % model is also
# run with the compact LM heads (--lm-head f16 / q8_0).
#
# Usage: tests/bench/run_sparse_e2e.sh [BUILD_DIR] [THREADS] [REPS]
# Not a test; prints a markdown table. Needs ~0.5 GB of free disk at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
THREADS=${2:-2}
REPS=${3:-5}
MOP="$BUILD/src/cli/mop"
MODEL=$(scripts/model-path.sh)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/mop-sparse-e2e.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
ninja -C "$BUILD" src/cli/mop >/dev/null

bench() { # label model
  echo "  bench $1" >&2
  printf '%s\t' "$1"
  "$MOP" bench "$2" --json -t "$THREADS" -r "$REPS" --prompt-tokens 128 --gen-tokens 64
}

variants=(
  "2:4|2:4|f32" "4:8|4:8|f32" "3:4|3:4|f32" "7:8|7:8|f32"
  "50%|unstructured:0.5|f32" "75%|unstructured:0.75|f32" "90%|unstructured:0.9|f32"
  "90% + f16 head|unstructured:0.9|f16" "90% + q8_0 head|unstructured:0.9|q8_0"
)
{
  bench "dense F32 (start)" "$MODEL"
  for v in "${variants[@]}"; do
    IFS='|' read -r label pattern head <<<"$v"
    echo "  prune $label" >&2
    "$MOP" prune "$MODEL" --method magnitude --pattern "$pattern" --lm-head "$head" \
      -t "$THREADS" -o "$OUT/m.gguf" >/dev/null
    bench "$label" "$OUT/m.gguf"
    rm -f "$OUT/m.gguf"
  done
  bench "dense F32 (end)" "$MODEL"
} >"$OUT/results.tsv"

.venv/bin/python - "$OUT/results.tsv" "$THREADS" <<'EOF'
import json, sys
rows = [(l.split("\t", 1)[0], json.loads(l.split("\t", 1)[1])) for l in open(sys.argv[1])]
dense = [r for label, r in rows if label.startswith("dense")]
pre0 = sum(r["prefill_tok_s"] for r in dense) / len(dense)
dec0 = sum(r["decode_tok_s"] for r in dense) / len(dense)
print(f"threads {sys.argv[2]}; ratios against the mean of the two dense runs "
      f"(prefill {pre0:.1f} tok/s, decode {dec0:.1f} tok/s)\n")
print("| model | weight MB | prefill tok/s | x dense | decode tok/s | x dense | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, r in rows:
    print(f"| {label} | {r['weight_bytes'] / 1e6:.1f} | {r['prefill_tok_s']:.1f} | "
          f"{r['prefill_tok_s'] / pre0:.2f} | {r['decode_tok_s']:.1f} | "
          f"{r['decode_tok_s'] / dec0:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
EOF
