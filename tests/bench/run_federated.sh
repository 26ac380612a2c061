#!/bin/sh
# Federated prompt-mixture experiment of docs/RESULTS.md ("Federated prompt
# mixtures"): federated MoP vs federated single prompt on dense, 2:4-Wanda and
# 75%-Wanda SmolLM2-135M (skewed split, 8 clients), robustness to one
# malicious client (sign-flip / noise x fedavg / median / krum / norm bound),
# local DP and
# secure aggregation.
#
# Usage: tests/bench/run_federated.sh [BUILD_DIR] [OUT_DIR]
#   defaults: build-fedres, BUILD_DIR/federated
# Resumable: every output that already exists is kept. Runs one process at a
# time, THREADS (default 1) compute threads each. Knobs (environment):
# ROUNDS LOCAL BATCH LR MAXLEN K P CLIENTS NVAL NTEST DP_CLIP DP_NOISE PARTS.
# PARTS (default "main robust dp tables") selects what runs.
# Writes logs, CSVs, mixtures and BUILD_DIR/.../tables.md under OUT_DIR and
# the heatmap to docs/img/fed_gate_heatmap_dense.png.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build-fedres}
OUT=${2:-$BUILD/federated}
ROUNDS=${ROUNDS:-4} LOCAL=${LOCAL:-2} BATCH=${BATCH:-4} LR=${LR:-1e-2} MAXLEN=${MAXLEN:-128}
K=${K:-9} P=${P:-4} CLIENTS=${CLIENTS:-8} THREADS=${THREADS:-1} NVAL=${NVAL:-4} NTEST=${NTEST:-30}
DP_CLIP=${DP_CLIP:-2.5} DP_NOISE=${DP_NOISE:-1.0}
PARTS=${PARTS:-main robust dp tables}
PY=.venv/bin/python
MOP=$BUILD/src/cli/mop
BASE=$(scripts/model-path.sh)
DATA=$OUT/data
CALIB=/usr/share/common-licenses/GPL-3
mkdir -p "$OUT" docs/img
ninja -C "$BUILD" src/cli/mop >/dev/null

# 1. Data: the centralized section's set (9 tasks x 300 examples: 240 train /
#    30 validation / 30 test). Validation during federated training: the first
#    NVAL validation examples of every task; per-task test: the first NTEST
#    test examples of every task.
[ -f "$DATA/train.jsonl" ] || "$PY" examples/data/build_dataset.py --out "$DATA" --per-task 300 --seed 0
subset() { # in out n
    [ -f "$2" ] || "$PY" tests/bench/first_per_task.py "$1" "$2" "$3"
}
subset "$DATA/validation.jsonl" "$DATA/val$NVAL.jsonl" "$NVAL"
subset "$DATA/test.jsonl" "$DATA/test$NTEST.jsonl" "$NTEST"
VAL=$DATA/val$NVAL.jsonl
TEST=$DATA/test$NTEST.jsonl

model_file() {
    case $1 in
    dense) echo "$BASE" ;;
    2of4w) echo "$OUT/smollm2-2of4-wanda.gguf" ;;
    u75w) echo "$OUT/smollm2-u75-wanda.gguf" ;;
    esac
}

# 2. Pruned models (Wanda, calibration = the GPL-3 text, 4096 tokens), the
#    same commands as the centralized section.
prune() { # model pattern
    [ -f "$(model_file "$1")" ] ||
        "$MOP" prune "$BASE" --method wanda --pattern "$2" --calib "$CALIB" --calib-tokens 4096 \
            -t "$THREADS" -o "$(model_file "$1")"
}

# 3. One federated run: same rounds x clients x local steps x batch x max-len
#    (the same token budget) for every run; seed 1234; skewed split.
fed() { # model tag extra-args...
    m=$1 tag=$2
    shift 2
    mkdir -p "$OUT/$m"
    [ -f "$OUT/$m/$tag.log" ] && return 0
    "$MOP" fed-sim "$(model_file "$m")" --data "$DATA/train.jsonl" --val "$VAL" \
        --clients "$CLIENTS" --rounds "$ROUNDS" --local-steps "$LOCAL" -b "$BATCH" --lr "$LR" \
        -K "$K" -P "$P" --max-len "$MAXLEN" --split skewed --seed 1234 -t "$THREADS" "$@" \
        --csv "$OUT/$m/$tag.csv" -o "$OUT/$m/$tag.safetensors" >"$OUT/$m/$tag.tmp" 2>"$OUT/$m/$tag.err"
    mv "$OUT/$m/$tag.tmp" "$OUT/$m/$tag.log"
}

evaluate() { # model tag
    m=$1 tag=$2
    [ -f "$OUT/$m/$tag.test$NTEST.txt" ] && return 0
    "$MOP" eval "$(model_file "$m")" --mixture "$OUT/$m/$tag.safetensors" --data "$TEST" \
        -b 8 -t "$THREADS" >"$OUT/$m/$tag.test$NTEST.tmp"
    mv "$OUT/$m/$tag.test$NTEST.tmp" "$OUT/$m/$tag.test$NTEST.txt"
}

gate_stats() { # model tag
    m=$1 tag=$2
    [ -f "$OUT/$m/$tag.gate$NTEST.csv" ] ||
        "$MOP" gate-stats "$(model_file "$m")" --mixture "$OUT/$m/$tag.safetensors" --data "$TEST" \
            -t "$THREADS" -o "$OUT/$m/$tag.gate$NTEST.csv" >/dev/null
}

case " $PARTS " in *" main "*)
    # Initial global mixture, as the federation sees it before round 1:
    # fed-sim refuses --rounds 0, so one round of one local step whose deltas
    # are clipped to norm 1e-9 (no noise): the init to within 1e-9.
    fed dense init --rounds 1 --local-steps 1 --dp-clip 1e-9
    fed dense mop
    fed dense single --baseline single
    evaluate dense mop
    evaluate dense single
    gate_stats dense init
    gate_stats dense mop
    "$PY" examples/plot_gate_heatmap.py --annotate \
        --titles "federated MoP: initial global mixture,after $ROUNDS rounds (fedavg)" \
        -o docs/img/fed_gate_heatmap_dense.png "$OUT/dense/init.gate$NTEST.csv" "$OUT/dense/mop.gate$NTEST.csv"
    for m in 2of4w u75w; do
        case $m in 2of4w) prune "$m" 2:4 ;; u75w) prune "$m" unstructured:0.75 ;; esac
        fed "$m" mop
        fed "$m" single --baseline single
        evaluate "$m" mop
        evaluate "$m" single
    done ;;
esac

case " $PARTS " in *" robust "*)
    # One malicious client (id 0) of 8; the no-attack fedavg reference is
    # dense/mop.
    for attack in sign-flip noise; do
        for s in fedavg median krum; do
            fed dense "mal-$attack-$s" --malicious 1 --attack "$attack" --strategy "$s"
        done
        # norm bounding before FedAvg: clip every delta to 2x the round's median norm
        fed dense "mal-$attack-nbclip2" --malicious 1 --attack "$attack" --strategy fedavg \
            --norm-bound-median-x 2 --norm-bound-mode clip
    done ;;
esac

case " $PARTS " in *" dp "*)
    fed dense dp --dp-clip "$DP_CLIP" --dp-noise "$DP_NOISE"
    fed dense secagg --secure-agg ;;
esac

case " $PARTS " in *" tables "*)
    "$PY" - "$OUT" "$NTEST" >"$OUT/tables.md" <<'EOF'
import csv, os, sys
out, ntest = sys.argv[1], sys.argv[2]
def final(m, tag):
    p = f"{out}/{m}/{tag}.log"
    if not os.path.exists(p):
        return float("nan")
    for line in open(p):
        if line.startswith("perplexity:"):
            return float(line.split()[1])
    return float("nan")
def eps(m, tag):
    p = f"{out}/{m}/{tag}.csv"
    rows = list(csv.DictReader(open(p))) if os.path.exists(p) else []
    return rows[-1]["epsilon"] if rows else ""
def evals(m, tag):
    rows, p = {}, f"{out}/{m}/{tag}.test{ntest}.txt"
    if os.path.exists(p):
        for line in open(p):
            f = line.split()
            if len(f) == 5 and f[0] != "task":
                try:
                    rows[f[0]] = (int(f[2]), float(f[4]))
                except ValueError:
                    pass
    return rows
print("### validation (final global mixture)\n")
print("| model | MoP | single |\n|---|---:|---:|")
for m in ["dense", "2of4w", "u75w"]:
    print(f"| {m} | {final(m, 'mop'):.2f} | {final(m, 'single'):.2f} |")
print(f"\ninitial (dense, untrained): {final('dense', 'init'):.2f}\n")
for m in ["dense", "2of4w", "u75w"]:
    a, b = evals(m, "mop"), evals(m, "single")
    print(f"### test ({ntest} per task) {m}\n\n| task | targets | MoP | single |\n|---|---:|---:|---:|")
    for t in sorted(x for x in a if x != "all") + ["all"]:
        if t in a and t in b:
            print(f"| {t} | {a[t][0]} | {a[t][1]:.1f} | {b[t][1]:.1f} |")
    print()
print("### robustness (dense MoP, 1 of 8 malicious)\n")
print("| attack | fedavg | median | krum |\n|---|---:|---:|---:|")
print(f"| none | {final('dense', 'mop'):.2f} | | |")
for att in ["sign-flip", "noise"]:
    print(f"| {att} | " + " | ".join(f"{final('dense', f'mal-{att}-{s}'):.2f}"
                                    for s in ["fedavg", "median", "krum"]) + " |")
print("\n### DP / secure aggregation (dense MoP, fedavg)\n")
print(f"plain {final('dense', 'mop'):.6f}; dp {final('dense', 'dp'):.4f} (epsilon {eps('dense', 'dp')});"
      f" secagg {final('dense', 'secagg'):.6f}")
EOF
    cat "$OUT/tables.md" ;;
esac
