"""libmop.flower: the gate set-up before round 1 and the clients' optimizer state.

3 tasks (build_dataset.py --per-task 30, a third held out: 57 train / 30
validation examples), split by task-skew over 3 clients, K = 3, P = 2,
--max-len 64, driven by run_inprocess. Checks: the strategy's merged
statistics equal a centralized pass over all training examples (plain and,
within the fixed-point tolerance, with secure aggregation); the averaged
pre-trained gate routes >= 90% of the validation examples to their task; and
with one client, round 2's step is not lr*sign(g) (a fresh AdamW's first step,
the old behaviour) on most weights, because the client kept its AdamW state.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()
pytest.importorskip("flwr", reason="flwr not installed: pip install -r scripts/requirements-dev.txt")
from libmop import flower as lf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = ["definition", "quote", "translate_fr"]
MIX = dict(n_experts=3, prompt_len=2, seed=7)
MAX_LEN = 64


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("flowergate")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "30", "--seed", "1", "--tasks", ",".join(TASKS),
                    "--val-frac", "0.34", "--test-frac", "0.01"], check=True, capture_output=True)
    load = lambda f: [json.loads(x) for x in open(out / f) if x.strip()]  # noqa: E731
    return load("train.jsonl"), load("validation.jsonl")


def parts(train, n_clients=3):
    """Client c gets 2/3 of task c's examples, the others share the rest."""
    out = [[] for _ in range(n_clients)]
    seen = {}
    for ex in train:
        t = TASKS.index(ex["task"])
        i = seen[t] = seen.get(t, -1) + 1
        out[t % n_clients if i % 3 else (t + 1 + i // 3 % 2) % n_clients].append(ex)
    return out


def run(model, shards, rounds=1, **kw):
    glob = libmop.Mixture(model, **MIX)
    st = Snap(glob, "fedavg", min_fit_clients=len(shards), min_available_clients=len(shards),
              fit_config={"local_steps": 1}, **kw)
    make = [lambda s=s, i=i: lf.MopClient(model, s, client_id=i, local_steps=1, batch_size=2,
                                          max_len=MAX_LEN, lr=1e-2, n_threads=2, tasks=TASKS,
                                          **MIX)
            for i, s in enumerate(shards)]
    lf.run_inprocess(st, make, rounds, log=None)
    return glob, st


class Snap(lf.MopStrategy):
    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self.snaps = getattr(self, "snaps", []) + [[a.copy() for a in self.global_arrays]]
        return out


@pytest.fixture(scope="module")
def central(model, data):
    train, _ = data
    with libmop.Context(model, n_ctx=128, n_batch=128, n_threads=2) as ctx, \
            libmop.Mixture(model, **MIX) as mix:
        u = mix.gate_inputs(ctx, libmop.Batch.from_examples(
            model, [(e["instruction"], e["response"]) for e in train], max_len=MAX_LEN))
    return libmop.Mixture.input_moments(u)


@pytest.fixture(scope="module")
def plain(model, data):
    return run(model, parts(data[0]))


def test_stats_equal_centralized(plain, central):
    glob, st = plain
    n, s, q = central
    got_n, got_s, got_q = st.gate_stats
    assert got_n == n
    np.testing.assert_allclose(got_s, s, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(got_q, q, rtol=1e-9, atol=1e-6)
    mean, std = glob.input_stats      # set on the initial mixture too
    np.testing.assert_allclose(mean, s / n, rtol=1e-6, atol=1e-6)


def test_secure_stats_and_gate(model, data, central, plain):
    glob, st = run(model, parts(data[0]), secure_aggregation=True)
    n, s, q = central
    got_n, got_s, got_q = st.gate_stats
    assert got_n == n
    var, got_var = q / n - (s / n) ** 2, got_q / got_n - (got_s / got_n) ** 2
    np.testing.assert_allclose(got_s / got_n, s / n, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.sqrt(np.maximum(got_var, 0) + 1e-6),
                               np.sqrt(np.maximum(var, 0) + 1e-6), rtol=1e-4, atol=1e-4)
    assert st.gate_setup_info["pretrained_examples"] == n


def gate_accuracy(model, arrays, stats, val):
    with libmop.Context(model, n_ctx=128, n_batch=128, n_threads=2) as ctx, \
            libmop.Mixture(model, **MIX) as mix:
        lf.set_mixture_arrays(mix, arrays)
        mix.set_input_stats(*stats)
        w = mix.gate(ctx, libmop.Batch.from_examples(
            model, [(e["instruction"], e["response"]) for e in val], max_len=MAX_LEN))
    return float((w.argmax(axis=1) == np.array([TASKS.index(e["task"]) for e in val])).mean())


def test_pretrained_gate_routes(model, data):
    train, val = data
    glob = libmop.Mixture(model, **MIX)

    class Pre(Snap):
        def configure_train(self, server_round, arrays, config, grid):
            out = super().configure_train(server_round, arrays, config, grid)
            if server_round == 1:
                self.pre_arrays = [a.copy() for a in self.global_arrays]
            return out

    shards = parts(train)
    st = Pre(glob, "fedavg", min_fit_clients=3, min_available_clients=3,
             fit_config={"local_steps": 1})
    make = [lambda s=s, i=i: lf.MopClient(model, s, client_id=i, local_steps=1, batch_size=2,
                                          max_len=MAX_LEN, n_threads=2, tasks=TASKS, **MIX)
            for i, s in enumerate(shards)]
    lf.run_inprocess(st, make, 1, log=None)
    info = st.gate_setup_info
    assert info["pretrained_clients"] == 3
    # FedAvg rounds: at least the best round + 5 without a better one, at most 50
    assert 1 <= info["pretrain_best_round"] and \
        min(info["pretrain_best_round"] + 5, 50) <= info["pretrain_rounds"] <= 50, info
    assert info["pretrain_accuracy"] >= 0.9, info     # the clients' score of the kept gate
    acc = gate_accuracy(model, st.pre_arrays, st.gate_stats, val)
    print(f"federated pre-trained gate: argmax accuracy {acc:.3f} on {len(val)} validation")
    assert acc >= 0.9


def test_optimizer_state_persists(model, data):
    lr = 1e-2
    glob, st = run(model, [data[0][:12]], rounds=2, gate_pretrain=False)
    e1, e2 = st.snaps[0][0], st.snaps[1][0]
    step = np.abs(e2 - e1).ravel() / lr
    moved = step > 1e-3
    assert moved.mean() > 0.5
    near_sign = np.abs(step[moved] - 1.0) < 0.01
    assert near_sign.mean() < 0.5, near_sign.mean()
