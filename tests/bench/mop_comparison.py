#!/usr/bin/env python3
"""MoP against the single-prompt baselines on the heterogeneous task set
(docs/RESULTS.md, "Mixture of Prompts vs one prompt").

Methods, on identical data, budget and code:
  none       the frozen model, no prompt
  single     one prompt of K*P tokens injected at L_p (--baseline single)
  single_in  the same prompt at the input layer ("Compress, then Prompt")
  oracle     expert k serves task k by label: the ceiling of routing
  mop        the mixture with its defaults (content pooling, standardized
             input, log(K w) bias, independent experts, gate pre-training)
  mop_shared K experts of P/2 tokens plus K always-on shared groups of P/2
             tokens (the same K*P prompt rows)
  mop_in, mop_shared_in  the same two with the experts at the input layer
             (--inject-layer 0); the gate still reads layer L_g, of a
             prompt-free pass ("Compress, then Prompt" with routing); run by
             fed_comparison.py only so far
Models: dense SmolLM2-135M-Instruct and SparseGPT-pruned 2:4 and 75 %
unstructured. Every trained run keeps its best validation checkpoint
(--eval-every); the learning rate is chosen on validation (grid --lrs, on
the first model and seed) for single, mop and mop_shared and reused for the
other models and seeds; single_in takes single's rate and oracle mop's (to
fit the budget of a 2-core machine). Test
perplexity gains are paired bootstrap CIs over test examples.

Resumable: a run whose output exists is skipped. Runs JOBS processes of
one thread each. Writes OUT/results.md (the tables), OUT/results.json, and
gate heatmaps under OUT/.

    tests/bench/mop_comparison.py --help
"""
import argparse
import concurrent.futures as cf
import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
METHODS = ("none", "single", "single_in", "oracle", "mop", "mop_shared")
EXTRA_METHODS = ("mop_in", "mop_shared_in")   # federated only for now (fed_comparison --methods)
TRAINED = METHODS[1:]
LR_FROM = {"single_in": "single", "oracle": "mop"}  # methods without their own grid
PRUNED = {"2of4": "2:4", "u75": "unstructured:0.75"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, out_log):
    """Run cmd, tee-less: stdout+stderr to out_log; raise on failure."""
    t0 = time.time()
    with open(out_log, "w") as f:
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed ({r.returncode}); see {out_log}")
    return time.time() - t0


class Study:
    def __init__(self, a):
        self.a = a
        self.out = pathlib.Path(a.out)
        self.mop = pathlib.Path(a.build) / "src/cli/mop"
        self.base = pathlib.Path(a.model)
        self.data = self.out / "data"
        self.out.mkdir(parents=True, exist_ok=True)

    # ---- inputs ----------------------------------------------------------------
    def prepare(self):
        a = self.a
        if not (self.data / "train.jsonl").exists():
            subprocess.run([sys.executable, ROOT / "examples/data/build_dataset.py", "--out",
                            self.data, "--seed", "0", "--per-task", str(a.per_task),
                            "--task-set", "hetero"], check=True)
        self.test = self.data / f"test{a.n_test}.jsonl"
        self.val = self.data / f"validation{a.n_val}.jsonl"
        self.train_file = self.data / f"train{a.n_train}.jsonl"
        for src, dst, n in ((self.data / "test.jsonl", self.test, a.n_test),
                            (self.data / "validation.jsonl", self.val, a.n_val),
                            (self.data / "train.jsonl", self.train_file, a.n_train)):
            if not dst.exists():
                subprocess.run([sys.executable, ROOT / "tests/bench/first_per_task.py", src, dst,
                                str(n)], check=True)
        for m in a.models:
            if m in PRUNED and not self.model_file(m).exists():
                log(f"pruning {m} with SparseGPT")
                run([self.mop, "prune", self.base, "--method", "sparsegpt", "--pattern",
                     PRUNED[m], "--calib", "/usr/share/common-licenses/GPL-3", "--calib-tokens",
                     "4096", "-t", "2", "-o", self.model_file(m)], self.out / f"prune-{m}.log")

    def model_file(self, m):
        return self.base if m == "dense" else self.out / f"smollm2-{m}.gguf"

    # ---- one run -------------------------------------------------------------
    def method_args(self, method):
        a = self.a
        kp = ["-K", str(a.K), "-P", str(a.P)]
        return {"single": kp + ["--baseline", "single"],
                "single_in": kp + ["--baseline", "single", "--gate-layer", "0",
                                   "--inject-layer", "0"],
                "oracle": kp + ["--baseline", "oracle"],
                "mop": kp,
                "mop_shared": ["-K", str(a.K), "-P", str(a.P // 2), "--shared", str(a.K)],
                "mop_in": kp + ["--inject-layer", "0"],
                "mop_shared_in": ["-K", str(a.K), "-P", str(a.P // 2), "--shared", str(a.K),
                                  "--inject-layer", "0"]}[method]

    def train(self, model, method, seed, lr):
        a = self.a
        d = self.out / model / f"{method}-lr{lr}-s{seed}"
        mix = d / "mixture.safetensors"
        if (d / "train.log").exists() and mix.exists():
            return d
        d.mkdir(parents=True, exist_ok=True)
        dt = run([self.mop, "train", self.model_file(model), "--data", self.train_file,
                  "--val", self.val, "--eval-every", str(a.eval_every), "--steps", str(a.steps),
                  "--batch", str(a.batch), "--lr", str(lr), "--warmup", str(a.steps // 10),
                  "--max-len", str(a.max_len), "--seed", str(1234 + seed), "-t", "1",
                  *self.method_args(method), "-o", mix], d / "train.part.log")
        os.replace(d / "train.part.log", d / "train.log")
        log(f"trained {model} {method} lr {lr} seed {seed} in {dt:.0f} s")
        return d

    def evaluate(self, model, d, mixture=True):
        csv_path = d / "test.csv"
        if not csv_path.exists():
            d.mkdir(parents=True, exist_ok=True)
            mix = ["--mixture", d / "mixture.safetensors"] if mixture else []
            run([self.mop, "eval", self.model_file(model), "--data", self.test, "--max-len",
                 str(self.a.max_len), "-t", "1", "--per-example", csv_path, *mix],
                d / "eval.log")
        return read_per_example(csv_path)

    def gate_stats(self, model, d):
        out = d / "gate.csv"
        if not out.exists():
            run([self.mop, "gate-stats", self.model_file(model), "--mixture",
                 d / "mixture.safetensors", "--data", self.test, "-t", "1", "-o", out],
                d / "gate.log")
        return out

    # ---- the study -------------------------------------------------------------
    def run_one(self, model, method, seed, lr):
        """Train (unless done), then score the test set and, for a mixture,
        its gate: a finished run is complete on its own."""
        d = self.train(model, method, seed, lr)
        res = self.evaluate(model, d)
        gate = self.gate_stats(model, d) if method.startswith("mop") else None
        return d, res, gate

    def main(self):
        a = self.a
        self.prepare()
        pool = cf.ThreadPoolExecutor(max_workers=a.jobs)
        trained = TRAINED
        # 0. the frozen models
        none = {m: pool.submit(self.evaluate, m, self.out / m / "none", False)
                for m in a.models}
        # 1. learning rates on validation: first model, first seed
        m0, s0 = a.models[0], a.seeds[0]
        gridded = [m for m in trained if m not in LR_FROM]
        grid = {(meth, lr): pool.submit(self.train, m0, meth, s0, lr)
                for meth in gridded for lr in a.lrs}
        best_lr = {}
        for meth in gridded:
            vals = {lr: best_val(grid[(meth, lr)].result()) for lr in a.lrs}
            best_lr[meth] = min(vals, key=vals.get)
            log(f"{meth}: validation ppl by lr {vals} -> {best_lr[meth]}")
        for meth, src in LR_FROM.items():
            best_lr[meth] = best_lr[src]
        (self.out / "learning_rates.json").write_text(json.dumps(best_lr) + "\n")
        # 2. every model and seed at the chosen rates, first seed of every model first
        keys = [(m, meth, s) for s in a.seeds for m in a.models for meth in trained
                if m == "dense" or s == a.seeds[0]]
        if a.report_only:
            keys = [k for k in keys if (self.run_dir(k, best_lr) / "test.csv").exists()]
        jobs = {k: pool.submit(self.run_one, *k, best_lr[k[1]]) for k in keys}
        done = {k: f.result() for k, f in jobs.items()}
        pool.shutdown()
        dirs = {k: v[0] for k, v in done.items()}
        res = {k: v[1] for k, v in done.items()}
        gates = {k: v[2] for k, v in done.items() if v[2] is not None}
        for m, f in none.items():
            res[(m, "none", 0)] = f.result()
        self.report(dirs, res, gates, best_lr)

    def run_dir(self, key, best_lr):
        m, meth, s = key
        return self.out / m / f"{meth}-lr{best_lr[meth]}-s{s}"

    def report(self, dirs, res, gates, best_lr):
        a = self.a
        lines = [f"Data: heterogeneous task set (--task-set hetero, --per-task {a.per_task}), "
                 f"train {a.n_train} / validation {a.n_val} / test {a.n_test} examples per task; "
                 f"K={a.K}, P={a.P}; "
                 f"{a.steps} steps of batch {a.batch}, best validation checkpoint every "
                 f"{a.eval_every} steps; learning rates {best_lr} chosen on validation from "
                 f"{a.lrs} (single_in: single's, oracle: mop's); seeds {a.seeds} (dense), {a.seeds[:1]} (pruned); 95% paired "
                 f"bootstrap CI over test examples ({a.boot} resamples).", ""]
        summary = {}
        for m in a.models:
            seeds = a.seeds if m == "dense" else a.seeds[:1]
            lines += [f"### {m}", "",
                      "| method | seed | val ppl | test ppl | vs best single (test) | 95% CI |",
                      "|---|---|---|---|---|---|"]
            none = res[(m, "none", 0)]
            lines.append(f"| none | - | - | {ppl(none):.2f} | | |")
            for s in seeds:
                if any((m, meth, s) not in dirs for meth in TRAINED):
                    lines.append(f"| (seed {s}: not all runs finished; see results.json) | | | | | |")
                if any((m, meth, s) not in dirs for meth in ("single", "single_in")):
                    continue
                # the better single baseline of this seed, chosen on validation
                singles = {meth: best_val(dirs[(m, meth, s)]) for meth in ("single", "single_in")}
                ref = min(singles, key=singles.get)
                for meth in (x for x in TRAINED if (m, x, s) in dirs):
                    r = res[(m, meth, s)]
                    gain, lo, hi = paired_gain(r, res[(m, ref, s)], a.boot, seed=s)
                    tag = " (reference)" if meth == ref else ""
                    lines.append(f"| {meth}{tag} | {s} | {best_val(dirs[(m, meth, s)]):.2f} | "
                                 f"{ppl(r):.2f} | {100 * gain:+.1f}% | "
                                 f"[{100 * lo:+.1f}%, {100 * hi:+.1f}%] |")
                    summary[f"{m}/{meth}/s{s}"] = dict(test_ppl=ppl(r), gain=gain, ci=[lo, hi],
                                                       val_ppl=best_val(dirs[(m, meth, s)]),
                                                       reference=ref)
            for s, meth in ((s, meth) for s in seeds for meth in ("mop", "mop_shared") + EXTRA_METHODS
                            if (m, meth, s) in gates):
                acc, table = gate_table(gates[(m, meth, s)])
                lines += ["", f"Gate of {meth} on the test set ({m}, seed {s}): a task's examples give "
                          f"their own expert (pre-training's assignment) {100 * acc:.1f}% of "
                          f"the weight on average; mean weight per task (rows) and expert "
                          f"(columns):", "", table]
            lines.append("")
        (self.out / "results.md").write_text("\n".join(lines) + "\n")
        (self.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        print("\n".join(lines))


def read_per_example(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return (np.array([float(r["nll"]) for r in rows]), np.array([int(r["targets"]) for r in rows]),
            [r["task"] for r in rows])


def ppl(r):
    return math.exp(r[0].sum() / r[1].sum())


def best_val(d):
    text = (d / "train.log").read_text()
    m = re.search(r"validation perplexity ([0-9.]+)\)", text)
    if not m:
        raise RuntimeError(f"{d}/train.log: no best validation perplexity")
    return float(m.group(1))


def paired_gain(a, b, n_boot, seed):
    """1 - ppl_a / ppl_b on the test set and its 95% paired bootstrap CI."""
    (na, ta, _), (nb, tb, _) = a, b
    g = 1.0 - math.exp(na.sum() / ta.sum() - nb.sum() / tb.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(na), size=(n_boot, len(na)))
    la = na[idx].sum(1) / ta[idx].sum(1)
    lb = nb[idx].sum(1) / tb[idx].sum(1)
    boot = 1.0 - np.exp(la - lb)
    return g, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def gate_table(path):
    """(mean weight a task's examples give their own expert, the expert its
    pre-training assigned: the task's index in sorted order; markdown table
    of the mean weights, tasks x experts) from mop gate-stats' CSV."""
    with open(path) as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    wcols = [i for i, h in enumerate(head) if re.fullmatch(r"w\d+", h)]
    body.sort(key=lambda r: r[0])
    own, n_all = 0.0, 0
    md = ["| task | n | " + " | ".join(head[i] for i in wcols) + " |",
          "|---|---|" + "---|" * len(wcols)]
    for t, r in enumerate(body):
        n = int(r[1])
        own += n * float(r[wcols[t]]) if t < len(wcols) else 0.0
        n_all += n
        md.append(f"| {r[0]} | {n} | " + " | ".join(f"{float(r[i]):.2f}" for i in wcols) + " |")
    return own / max(n_all, 1), "\n".join(md)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=str(ROOT / "build"), help="build dir with src/cli/mop")
    p.add_argument("--model", default=None, help="the Q4_1 GGUF (default: scripts/model-path.sh)")
    p.add_argument("--out", default=str(ROOT / "build/comparison"))
    p.add_argument("--models", default="dense,2of4,u75")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--per-task", type=int, default=300)
    p.add_argument("--n-test", type=int, default=25, help="test examples per task")
    p.add_argument("--n-val", type=int, default=15, help="validation examples per task")
    p.add_argument("--n-train", type=int, default=60, help="training examples per task")
    p.add_argument("--K", type=int, default=8)
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--lrs", default="3e-3,1e-2")
    p.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing new: tables from the runs that finished")
    a = p.parse_args(argv)
    a.models = a.models.split(",")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.lrs = [float(x) for x in a.lrs.split(",")]
    if a.model is None:
        a.model = subprocess.run([ROOT / "scripts/model-path.sh"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    return a


if __name__ == "__main__":
    Study(parse_args(sys.argv[1:])).main()
