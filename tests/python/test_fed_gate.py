"""`mop fed-sim`'s gate set-up and optimizer state on the real model.

Tiny data: 3 tasks (definition, translate_fr, quote), build_dataset.py
--per-task 30 with a third held out (57 train / 30 validation examples),
3 clients on the skewed split (ratio 2), K = 3, P = 2, --max-len 64, one
round of one local step. Checks:
(a) the statistics fed-sim merged from the clients' moments equal a
    centralized pass over all training examples (Mixture.gate_inputs +
    input_moments, tokenized with fed-sim's default empty system turn);
(b) the same with --secure-agg (two secure sums: n and sum u, then
    sum (u - mean)^2), within the fixed-point/float tolerance;
(c) after federated pre-training (FedAvg rounds of one local epoch) the
    averaged gate's argmax is the task on >= 90% of the validation examples;
(d) each client's AdamW state persists across rounds: with one client and one
    local step per round, round 2's update is not lr*sign(g) (what a fresh
    AdamW gives on its first step, the old behaviour) on most weights.
"""
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASKS = "definition,translate_fr,quote"
SMALL = ["--clients", "3", "--rounds", "1", "--local-steps", "1", "-K", "3", "-P", "2",
         "--max-len", "64", "--batch", "4", "--threads", "2", "--split", "skewed",
         "--skew-ratio", "2", "--seed", "7"]


@pytest.fixture(scope="module")
def mop_bin(build_dir):
    path = pathlib.Path(build_dir) / "src" / "cli" / "mop"
    if not path.exists():
        pytest.skip(f"{path} not built")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedgate")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "30", "--seed", "1", "--tasks", TASKS, "--val-frac", "0.34",
                    "--test-frac", "0.01"], check=True, capture_output=True)
    return out


def fed_sim(mop_bin, model_path, data, out, *extra, val="validation.jsonl"):
    r = subprocess.run([mop_bin, "fed-sim", model_path, "--data", str(data / "train.jsonl"),
                        "--val", str(data / val), "-o", str(out), *SMALL, *extra],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def runs(mop_bin, model_path, data, tmp_path_factory):
    d = tmp_path_factory.mktemp("fedgate_runs")
    plain = fed_sim(mop_bin, model_path, data, d / "plain.safetensors")
    secure = fed_sim(mop_bin, model_path, data, d / "secure.safetensors", "--secure-agg")
    return {"plain": (plain, d / "plain.safetensors"), "secure": (secure, d / "secure.safetensors")}


@pytest.fixture(scope="module")
def central(model_path, data, runs):
    """Centralized statistics over the union of the clients' data."""
    rows = [json.loads(line) for line in open(data / "train.jsonl") if line.strip()]
    with libmop.Model(model_path, n_threads=2) as model, \
            libmop.Context(model, n_ctx=256, n_batch=128, n_threads=2) as ctx, \
            libmop.Mixture.load(model, runs["plain"][1]) as mix:
        batch = libmop.Batch.from_examples(model, rows, max_len=64, system="")
        u = mix.gate_inputs(ctx, batch)
    n, s, q = libmop.Mixture.input_moments(u)
    mean = s / n
    std = np.sqrt(np.maximum(q / n - mean * mean, 0.0) + 1e-6)
    return n, mean, std


def stored_stats(model_path, path):
    with libmop.Model(model_path, n_threads=2) as model, \
            libmop.Mixture.load(model, path) as mix:
        return mix.input_stats


def test_merged_stats_equal_centralized(runs, central, model_path):
    stdout, path = runs["plain"]
    n, mean, std = central
    m = re.search(r"^gate input statistics: (\d+) examples from 3 clients, merged as exact", stdout,
                  re.M)
    assert m and int(m.group(1)) == n, stdout
    got_mean, got_std = stored_stats(model_path, path)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_std, std, rtol=1e-5, atol=1e-5)


def test_secure_stats_equal_centralized(runs, central, model_path):
    stdout, path = runs["secure"]
    n, mean, std = central
    assert re.search(r"^gate input statistics: %d examples from 3 clients, merged by two secure"
                     % n, stdout, re.M), stdout
    got_mean, got_std = stored_stats(model_path, path)
    # float32 transport of the sums (relative 6e-8) and 2^-16 fixed point
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_std, std, rtol=1e-4, atol=1e-4)
    plain_mean, plain_std = stored_stats(model_path, runs["plain"][1])
    np.testing.assert_allclose(got_std, plain_std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["plain", "secure"])
def test_federated_pretraining_routes(runs, kind):
    stdout, _ = runs[kind]
    m = re.search(r"^federated gate pre-training: (\d+) rounds of 1 local epoch on 3 clients "
                  r"\(best round (\d+), .* argmax accuracy ([0-9.]+), mean weight ([0-9.]+) on "
                  r"the own expert, on 30 validation", stdout, re.M)
    assert m, stdout
    rounds, best = int(m.group(1)), int(m.group(2))
    assert 1 <= best <= rounds <= 50, stdout
    assert float(m.group(3)) >= 0.9, stdout
    assert float(m.group(4)) >= 0.5, stdout


def test_optimizer_state_persists(mop_bin, model_path, data, tmp_path):
    lr = 3e-3
    one = ["--clients", "1", "--split", "iid", "--no-gate-pretrain", "--lr", str(lr)]
    fed_sim(mop_bin, model_path, data, tmp_path / "r1.safetensors", *one, val="test.jsonl")
    fed_sim(mop_bin, model_path, data, tmp_path / "r2.safetensors", *one, "--rounds", "2",
            val="test.jsonl")
    with libmop.Model(model_path, n_threads=2) as model:
        with libmop.Mixture.load(model, tmp_path / "r1.safetensors") as a, \
                libmop.Mixture.load(model, tmp_path / "r2.safetensors") as b:
            e1, e2 = a.tensors()["experts"].copy(), b.tensors()["experts"].copy()
    step = np.abs(e2 - e1).ravel() / lr
    moved = step > 1e-3
    assert moved.mean() > 0.5
    # a fresh AdamW's first step is lr*sign(g) (plus lr*wd*p, ~1e-4 relative here):
    # every moved weight would have |delta|/lr within 1% of 1
    near_sign = np.abs(step[moved] - 1.0) < 0.01
    assert near_sign.mean() < 0.5, near_sign.mean()
