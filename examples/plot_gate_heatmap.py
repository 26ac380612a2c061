#!/usr/bin/env python3
"""Draw per-task x expert gate-weight heatmaps from `mop gate-stats` CSVs.

    mop gate-stats MODEL --mixture before.safetensors --data test.jsonl -o before.csv
    mop gate-stats MODEL --mixture after.safetensors  --data test.jsonl -o after.csv
    python examples/plot_gate_heatmap.py before.csv after.csv --titles "before,after" -o gate.png

Each CSV (columns task, n, w0..w{K-1}: the mean weight the gate gives each
expert on that task's examples) becomes one panel; panels share a colour
scale so that before/during/after training can be compared, as in the MoPs
paper's appendix figures. Rows keep the CSV's task order.
"""
import argparse
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_stats(path):
    """(tasks, counts, weights[task][expert]) from one gate-stats CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["task", "n"] or len(rows[0]) < 3:
        raise ValueError(f"{path}: not a gate-stats CSV (header must be task,n,w0,...)")
    k = len(rows[0]) - 2
    tasks, counts, weights = [], [], []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != k + 2:
            raise ValueError(f"{path}: line {i}: expected {k + 2} fields, got {len(row)}")
        tasks.append(row[0])
        counts.append(int(row[1]))
        weights.append([float(x) for x in row[2:]])
    return tasks, counts, weights


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", help="gate-stats CSV files, one panel each")
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--titles", help="comma-separated panel titles (default: file names)")
    ap.add_argument("--annotate", action="store_true", help="print each weight in its cell")
    args = ap.parse_args(argv)

    try:
        panels = [read_stats(p) for p in args.csv]
    except (OSError, ValueError) as e:
        print(f"plot_gate_heatmap: {e}", file=sys.stderr)
        return 1
    titles = args.titles.split(",") if args.titles else args.csv
    if len(titles) != len(panels):
        print("plot_gate_heatmap: --titles needs one title per CSV", file=sys.stderr)
        return 2

    vmax = max(max(max(r) for r in w) for _, _, w in panels)
    n_tasks = max(len(t) for t, _, _ in panels)
    n_exp = max(len(w[0]) for _, _, w in panels)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(1.2 + 0.55 * n_exp * len(panels) + 1.6,
                                      1.2 + 0.4 * n_tasks))
    image = None
    same_rows = all(t == panels[0][0] for t, _, _ in panels)
    if not same_rows:
        fig.subplots_adjust(wspace=0.9)  # room for each panel's own task labels
    for p, (ax, (tasks, counts, weights), title) in enumerate(zip(axes[0], panels, titles)):
        image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("expert")
        ax.set_xticks(range(len(weights[0])))
        ax.set_yticks(range(len(tasks)))
        if p == 0 or not same_rows:
            ax.set_yticklabels([f"{t} ({n})" for t, n in zip(tasks, counts)])
        else:
            ax.set_yticklabels([])
        if args.annotate:
            for i, row in enumerate(weights):
                for j, w in enumerate(row):
                    ax.text(j, i, f"{w:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if w < 0.6 * vmax else "black")
    fig.colorbar(image, ax=axes[0].tolist(), label="mean gate weight", shrink=0.9)
    fig.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
