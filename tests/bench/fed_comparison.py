#!/usr/bin/env python3
"""Federated MoP against the federated single prompt on the heterogeneous
task set (docs/RESULTS.md, "Federated: MoP vs one prompt").

The centralized study's data and helpers (tests/bench/mop_comparison.py:
the same hetero set and first-per-task subsets, per-example test NLL, paired
bootstrap), trained with `mop fed-sim` instead of `mop train`: CLIENTS
clients on the paper's skewed split, every client in every round, ROUNDS x
LOCAL AdamW steps of batch BATCH per client; the final global mixture is
scored on the test set. Methods (same prompt rows, K*P):
  single     one K*P-token prompt at L_p
  single_in  the same prompt at the input layer
  oracle     expert k serves task k by label
  mop        the mixture with its defaults (gate statistics merged, gate
             pre-trained in FedAvg rounds of one local epoch)
  mop_shared K experts of P/2 tokens + K always-on shared groups of P/2
each under every strategy of --strategies (fedavg; mop_aware: the paper's
aggregation, each expert's delta weighted by the clients' gate usage).
The learning rate is not tuned here: --lr (the centralized study's choice).
The reference of each model is the single baseline (single or single_in)
with the lower final validation perplexity under fedavg.

Resumable: a run whose output exists is skipped. Runs JOBS processes of
one thread each.
"""
import argparse
import concurrent.futures as cf
import os
import pathlib
import re
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mop_comparison import (ROOT, Study, gate_table, log, paired_gain, ppl,  # noqa: E402
                            read_per_example, run)

METHODS = ("single", "single_in", "oracle", "mop", "mop_shared")
# also accepted by --methods: mop_in, mop_shared_in (mop_comparison.py)


class FedStudy(Study):
    """The centralized study's inputs (data subsets, pruned models, method
    arguments), trained with fed-sim."""

    def run_one(self, model, method, strategy):
        a = self.a
        d = self.out / model / f"{method}-{strategy}-s{a.seed}"
        mix = d / "mixture.safetensors"
        if not ((d / "fed.log").exists() and mix.exists()):
            d.mkdir(parents=True, exist_ok=True)
            dt = run([self.mop, "fed-sim", self.model_file(model), "--data", self.train_file,
                      "--val", self.val, "--clients", str(a.clients),
                      "--rounds", str(a.rounds), "--local-steps", str(a.local_steps),
                      "-b", str(a.batch), "--lr", str(a.lr), "--max-len", str(a.max_len),
                      "--strategy", strategy, "--split", "skewed", "--seed", str(1234 + a.seed),
                      "-t", "1", "--csv", d / "rounds.csv", *self.method_args(method), "-o", mix],
                     d / "fed.part.log")
            os.replace(d / "fed.part.log", d / "fed.log")
            log(f"federated {model} {method} {strategy} in {dt:.0f} s")
        csv_path = d / "test.csv"
        if not csv_path.exists():
            run([self.mop, "eval", self.model_file(model), "--data", self.test,
                 "--max-len", str(a.max_len), "-t", "1", "--per-example", csv_path,
                 "--mixture", mix], d / "eval.log")
        gate = None
        if method.startswith("mop"):
            gate = d / "gate.csv"
            if not gate.exists():
                run([self.mop, "gate-stats", self.model_file(model), "--mixture", mix, "--data",
                     self.test, "-t", "1", "-o", gate], d / "gate.log")
        return d, read_per_example(csv_path), gate

    def main(self):
        a = self.a
        self.prepare()
        # the single baselines run (and are the reference) under FedAvg only,
        # whatever --strategies says
        keys = [(m, meth, s) for m in a.models for meth in a.methods
                for s in (("fedavg",) if meth.startswith("single") else a.strategies)]
        if a.report_only:
            keys = [k for k in keys if (self.out / k[0] / f"{k[1]}-{k[2]}-s{a.seed}" /
                                        "test.csv").exists()]
        with cf.ThreadPoolExecutor(max_workers=a.jobs) as pool:
            jobs = {k: pool.submit(self.run_one, *k) for k in keys}
            done = {k: f.result() for k, f in jobs.items()}
        self.report(done)

    def report(self, done):
        a = self.a
        lines = [f"Federated: {a.clients} clients, skewed split, {a.rounds} rounds x "
                 f"{a.local_steps} local steps of batch {a.batch}, lr {a.lr}; data: hetero "
                 f"set, train {a.n_train} / validation {a.n_val} / test {a.n_test} per task; "
                 f"K={a.K}, P={a.P}; seed {a.seed}; 95% paired bootstrap CI over test "
                 f"examples ({a.boot} resamples).", ""]
        for m in a.models:
            singles = {meth: final_val(done[(m, meth, "fedavg")][0])
                       for meth in ("single", "single_in") if (m, meth, "fedavg") in done}
            lines += [f"### {m}", ""]
            if not singles:
                lines += ["(no single baseline finished)", ""]
                continue
            ref = min(singles, key=singles.get)
            lines += ["| method | strategy | final val ppl | test ppl | vs best single (test) "
                      "| 95% CI |", "|---|---|---|---|---|---|"]
            for (mm, meth, s), (d, res, _) in done.items():
                if mm != m:
                    continue
                gain, lo, hi = paired_gain(res, done[(m, ref, "fedavg")][1], a.boot, a.seed)
                tag = " (reference)" if (meth, s) == (ref, "fedavg") else ""
                lines.append(f"| {meth}{tag} | {s} | {final_val(d):.2f} | {ppl(res):.2f} | "
                             f"{100 * gain:+.1f}% | [{100 * lo:+.1f}%, {100 * hi:+.1f}%] |")
            for (mm, meth, s), (_, _, gate) in done.items():
                if mm == m and gate is not None:
                    acc, _ = gate_table(gate)
                    lines.append(f"\nGate of {meth}/{s}: {100 * acc:.1f}% of the weight on each "
                                 f"task's own expert (test set).")
            lines.append("")
        (self.out / "results.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def final_val(d):
    m = re.search(r"^perplexity: ([0-9.]+)", (d / "fed.log").read_text(), re.M)
    if not m:
        raise RuntimeError(f"{d}/fed.log: no final perplexity")
    return float(m.group(1))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=str(ROOT / "build"), help="build dir with src/cli/mop")
    p.add_argument("--model", default=None, help="the Q4_1 GGUF (default: scripts/model-path.sh)")
    p.add_argument("--out", default=str(ROOT / "build/fed_comparison"))
    p.add_argument("--models", default="dense,2of4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--strategies", default="fedavg,mop_aware")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-task", type=int, default=300, help="examples per task built")
    p.add_argument("--n-test", type=int, default=25, help="test examples per task")
    p.add_argument("--n-val", type=int, default=5, help="validation examples per task (every round)")
    p.add_argument("--n-train", type=int, default=60, help="training examples per task")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--K", type=int, default=8)
    p.add_argument("--P", type=int, default=8)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing new: tables from the runs that finished")
    a = p.parse_args(argv)
    for f in ("models", "methods", "strategies"):
        setattr(a, f, getattr(a, f).split(","))
    if a.model is None:
        a.model = subprocess.run([ROOT / "scripts/model-path.sh"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    return a


if __name__ == "__main__":
    FedStudy(parse_args(sys.argv[1:])).main()
