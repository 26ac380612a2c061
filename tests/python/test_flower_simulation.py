"""Flower's simulation engine (Ray) running federated MoP training on SmolLM2.

examples/flower_mop.py trains a prompt mixture over a skewed split of a small
multi-task set with 2 clients for 2 rounds, once on Flower's Ray backend and
once in-process (the clients called directly with Flower's message types).
The two must print the same per-round history (same seed, the clients run
the same libmop code whichever engine calls them), and the global validation
perplexity must fall over the rounds. About half a minute on 2 cores.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("flwr", reason="flwr not installed: pip install -r scripts/requirements-dev.txt")
pytest.importorskip("ray", reason="Flower's simulation extra (ray) not installed")

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower_mop.py"
CORPUS = "/usr/share/wordnet/data.noun"  # the dataset builder's corpora (scripts/setup.sh)


def run(engine, data, build_dir, model_path):
    env = dict(os.environ, LIBMOP_BUILD_DIR=str(build_dir))
    cmd = [sys.executable, str(EXAMPLE), "--model", model_path, "--data", str(data),
           "--per-task", "6", "--clients", "2", "--ratio", "2", "--rounds", "2",
           "--local-steps", "1", "--batch", "2", "--max-len", "64", "--threads", "1",
           "--engine", engine]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout[r.stdout.index("round  train-loss  val-ppl"):].splitlines()[1:]
    rows = [tuple(float(x) for x in line.split()) for line in table if line.strip()]
    return rows, r.stdout + r.stderr


@pytest.mark.skipif(not os.path.exists(CORPUS), reason="corpus packages not installed")
def test_ray_engine_matches_inprocess_and_learns(tmp_path, build_dir, model_path):
    data = tmp_path / "data"
    ray_rows, log = run("ray", data, build_dir, model_path)
    assert re.search(r"Strategy execution finished", log), log[-2000:]  # Flower's log
    ppl0 = re.search(r"round 0/2: val ppl ([0-9.]+)", log)  # server-side evaluation, round 0
    assert ppl0, log[-2000:]
    local_rows, _ = run("inprocess", data, build_dir, model_path)
    assert [r[0] for r in ray_rows] == [1.0, 2.0]
    assert ray_rows == local_rows
    assert ray_rows[-1][2] < float(ppl0.group(1))  # global val perplexity fell
