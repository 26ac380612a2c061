"""`mop fed-sim` end to end on the real model.

Tiny data (build_dataset.py --per-task 8: 54 train / 9 test examples over 9
tasks), 3 clients, 2 rounds of 2 local steps, K = 2, P = 2, --max-len 64,
batch 2, the skewed split with ratio 2 (ratio 15 needs >= 17 examples per task).
Checks: the CSV has one row per round with finite numbers and its last
perplexity is the `perplexity: X` last line; secure aggregation gives the same
global mixture as plain FedAvg up to its fixed-point encoding (2^-32) and
float rounding, so the per-round perplexities agree within 1e-3 relative;
local DP prints the epsilon of the Gaussian mechanism, checked against
min_alpha R*alpha/(2 z^2) + log(1/delta)/(alpha - 1) over the accountant's
default orders (1e-4 relative); usage errors exit 2, missing data exits 1.
"""
import csv
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from test_bindings_core import import_libmop

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = ["--clients", "3", "--rounds", "2", "--local-steps", "2", "-K", "2", "-P", "2",
         "--max-len", "64", "--batch", "2", "--threads", "2", "--split", "skewed",
         "--skew-ratio", "2", "--seed", "7"]


@pytest.fixture(scope="module")
def mop_bin(build_dir):
    path = pathlib.Path(build_dir) / "src" / "cli" / "mop"
    if not path.exists():
        pytest.skip(f"{path} not built")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("feddata")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "8", "--seed", "1"], check=True, capture_output=True)
    return out


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900)


def last_perplexity(stdout):
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: "), stdout
    return float(last.split()[1])


def fed_sim(mop_bin, model_path, data, tmp_path, name, *extra, stderr=None):
    out_csv = tmp_path / f"{name}.csv"
    r = run(mop_bin, "fed-sim", model_path, "--data", data / "train.jsonl", "--val",
            data / "test.jsonl", "--csv", out_csv, *SMALL, *extra)
    assert r.returncode == 0, r.stderr
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    if stderr is not None:
        stderr.append(r.stderr)
    return r.stdout, rows


@pytest.fixture(scope="module")
def plain(mop_bin, model_path, data, tmp_path_factory):
    return fed_sim(mop_bin, model_path, data, tmp_path_factory.mktemp("plain"), "plain")


def test_csv_rows_and_last_line(plain):
    stdout, rows = plain
    assert [int(r["round"]) for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(float(r["val_ppl"])) and float(r["val_ppl"]) > 1.0
        assert math.isfinite(float(r["client_loss"])) and float(r["client_loss"]) > 0.0
        assert float(r["seconds"]) >= 0.0
        assert r["epsilon"] == ""  # no DP
    final = last_perplexity(stdout)
    assert final == pytest.approx(float(rows[-1]["val_ppl"]), rel=1e-6)
    # the global mixture moved: round 2 differs from the untrained round 0
    ppl0 = float(re.search(r"^round 0: validation perplexity ([0-9.]+)", stdout, re.M).group(1))
    assert abs(final - ppl0) > 1e-3 * ppl0
    # every training example went to exactly one client
    n_train = int(re.search(r"data: (\d+) training examples", stdout).group(1))
    sizes = [int(x) for x in re.search(r"client sizes: ([0-9 ]+)", stdout).group(1).split()]
    assert len(sizes) == 3 and sum(sizes) == n_train and min(sizes) > 0


def test_secure_aggregation_matches_plain(plain, mop_bin, model_path, data, tmp_path):
    stdout, rows = fed_sim(mop_bin, model_path, data, tmp_path, "secure", "--secure-agg")
    assert "(secure aggregation)" in stdout
    _, plain_rows = plain
    for a, b in zip(rows, plain_rows):
        assert float(a["val_ppl"]) == pytest.approx(float(b["val_ppl"]), rel=1e-3)
        # round 1 losses are identical; later rounds start from the quantised global
        assert float(a["client_loss"]) == pytest.approx(float(b["client_loss"]), rel=1e-3)  # later rounds start from the fixed-point-quantised global


DROP = ["--clients", "4", "--rounds", "3", "--secagg-dropout", "0.5"]


def test_secagg_with_dropouts_matches_plain_fedavg_over_survivors(mop_bin, model_path, data,
                                                                  tmp_path):
    """4 clients, 2 drop per round at the protocol stages in turn (every stage
    over the 3 rounds): --secagg recovers the sum, equal to plain FedAvg over
    the clients whose masked input arrived (same dropouts without --secagg)."""
    sec, srows = fed_sim(mop_bin, model_path, data, tmp_path, "sa2", *DROP, "--secagg",
                         "--secagg-threshold", "2")
    plain_out, prows = fed_sim(mop_bin, model_path, data, tmp_path, "pd", *DROP)
    stages = set(re.findall(r"client \d+ before ([a-z ]+);", sec))
    assert stages == {"advertising keys", "sharing keys", "its masked input",
                      "the unmasking answer"}, sec
    assert len(re.findall(r"secure aggregation \(t = 2 of 4\)", sec)) == 3
    assert len(srows) == len(prows) == 3
    for a, b in zip(srows, prows):
        assert float(a["val_ppl"]) == pytest.approx(float(b["val_ppl"]), rel=1e-4)
    assert last_perplexity(sec) == pytest.approx(last_perplexity(plain_out), rel=1e-4)


def test_secagg_refuses_below_threshold(mop_bin, model_path, data, tmp_path):
    r = run(mop_bin, "fed-sim", model_path, "--data", data / "train.jsonl", "--val",
            data / "test.jsonl", *SMALL, *DROP, "--secagg")   # default t = 4/2 + 1 = 3
    assert r.returncode == 1, r.stdout
    assert "fewer than the threshold t = 3" in r.stderr


def test_norm_bound_prints_and_clips(mop_bin, model_path, data, tmp_path):
    out, rows = fed_sim(mop_bin, model_path, data, tmp_path, "nb", "--rounds", "1",
                        "--norm-bound-median-x", "1", "--norm-bound-mode", "reject")
    m = re.search(r"round 1: norm bound ([0-9.e+-]+) \(reject\): update norms ([0-9.e+ -]+);"
                  r" (\d+) above the bound, (\d+) of 3 aggregated", out)
    assert m, out
    norms = [float(x) for x in m.group(2).split()]  # printed with 4 digits
    assert float(m.group(1)) == pytest.approx(float(np.median(norms)), rel=1e-3)
    assert int(m.group(4)) == 3 - int(m.group(3)) == sum(x <= float(m.group(1)) * (1 + 1e-3)
                                                         for x in norms)


def reference_epsilon(z, rounds, delta):
    """Classic RDP conversion, q = 1: RDP(alpha) = alpha / (2 z^2) per round."""
    orders = np.concatenate([np.arange(11, 110) / 10.0, [1.25, 1.75], np.arange(11, 64),
                             [64, 80, 96, 128, 256, 512, 1024]]).astype(float)
    eps = rounds * orders / (2 * z * z) + math.log(1 / delta) / (orders - 1)
    return float(eps.min())


def test_dp_prints_epsilon(mop_bin, model_path, data, tmp_path):
    z, clip = 1.5, 0.5
    stdout, rows = fed_sim(mop_bin, model_path, data, tmp_path, "dp", "--rounds", "1",
                           "--local-steps", "1", "--dp-clip", str(clip), "--dp-noise", str(z))
    want = reference_epsilon(z, 1, 1e-5)
    assert float(rows[0]["epsilon"]) == pytest.approx(want, rel=1e-4)
    m = re.search(r"^privacy: epsilon ([0-9.]+) at delta 1e-05 after 1 rounds", stdout, re.M)
    assert m, stdout
    assert float(m.group(1)) == pytest.approx(want, rel=1e-3)
    assert math.isfinite(last_perplexity(stdout))


@pytest.mark.parametrize("args, message", [
    (["--strategy", "fedmagic"], "unknown --strategy 'fedmagic'"),
    (["--strategy", "median", "--secure-agg"], "--secure-agg"),
    (["--secagg-dropout", "1.5"], "--secagg-dropout"),
    (["--secagg", "--secagg-threshold", "9"], "--secagg-threshold"),
    (["--norm-bound", "-1"], "--norm-bound"),
    (["--norm-bound-mode", "shrink", "--norm-bound", "1"], "--norm-bound-mode"),
    (["--secagg", "--norm-bound-median-x", "2"], "only a fixed"),
    (["--strategy", "krum", "--clients", "4"], "needs --clients >= 5"),
    (["--split", "dirichlet:-1"], "dirichlet:ALPHA"),
    (["--dp-noise", "1"], "--dp-noise needs --dp-clip"),
    (["--malicious", "9", "--clients", "8"], "--malicious"),
])
def test_usage_errors_exit_2(mop_bin, model_path, args, message):
    r = run(mop_bin, "fed-sim", model_path, "--data", "x.jsonl", "--val", "y.jsonl", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_data_exits_1(mop_bin, model_path, data, tmp_path):
    missing = tmp_path / "nope.jsonl"
    r = run(mop_bin, "fed-sim", model_path, "--data", missing, "--val", data / "test.jsonl",
            *SMALL)
    assert r.returncode == 1
    assert str(missing) in r.stderr


def test_help_lists_every_strategy(mop_bin):
    r = run(mop_bin, "fed-sim", "--help")
    assert r.returncode == 0
    for name in ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean",
                 "krum", "multi_krum", "task_arithmetic", "ties", "dare", "breadcrumbs",
                 "mop_aware", "--secure-agg", "--dp-clip", "--malicious", "--csv"]:
        assert name in r.stdout
    assert "trimmed-mean" not in r.stdout and "mop-aware" not in r.stdout


@pytest.mark.parametrize("given, canonical, deprecated", [
    ("trimmed_mean", "trimmed_mean", False), ("mop_aware", "mop_aware", False),
    ("multi_krum", "multi_krum", False), ("trimmed-mean", "trimmed_mean", True),
    ("mop-aware", "mop_aware", True), ("task-arithmetic", "task_arithmetic", True),
])
def test_strategy_names_and_deprecated_spelling(mop_bin, model_path, given, canonical, deprecated):
    """The C enum's names (trimmed_mean) are the names; the old '-' spelling
    still parses, with one deprecation line on stderr. --clients 0 stops the
    run right after the strategy is read."""
    r = run(mop_bin, "fed-sim", model_path, "--data", "x.jsonl", "--val", "y.jsonl",
            "--strategy", given, "--clients", "0")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "unknown --strategy" not in r.stderr and "--clients must be in" in r.stderr
    warning = (f"mop fed-sim: warning: --strategy '{given}' is deprecated, use '{canonical}'")
    assert (warning in r.stderr) == deprecated, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 + deprecated


def test_oracle_and_shared_baselines(mop_bin, model_path, data, tmp_path):
    """--baseline oracle routes task k to expert k (gate-stats: one-hot rows,
    expert order = sorted task names); --shared adds always-on groups,
    --gate-layer/--inject-layer are stored, and
    a K smaller than the number of tasks is refused for the oracle."""
    mix = tmp_path / "oracle.safetensors"
    err = []
    stdout, rows = fed_sim(mop_bin, model_path, data, tmp_path, "oracle", "--rounds", "1",
                           "--local-steps", "1", "-K", "9", "-P", "1", "--baseline", "oracle",
                           "--shared", "1", "--gate-layer", "3", "--inject-layer", "5", "-o", mix,
                           stderr=err)
    assert "gate=oracle" in stdout
    # progress lines with an ETA even though stderr is a pipe
    assert re.search(r"^fed-sim 0/3 round 1/1, client 1/3 ETA \d+m\d\ds$", err[0], re.M), err[0]
    libmop = import_libmop()
    with libmop.Model(model_path) as model, libmop.Mixture.load(model, mix) as m:
        c = m.config
        assert (c["n_experts"], c["n_shared"], c["gate_mode"]) == (9, 1, 2)
        assert (c["gate_layer"], c["inject_layer"]) == (3, 5)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["val_ppl"]))
    table = tmp_path / "gate.csv"
    r = run(mop_bin, "gate-stats", model_path, "--mixture", mix, "--data", data / "test.jsonl",
            "-o", table, "-t", "2")
    assert r.returncode == 0, r.stderr
    with open(table) as f:
        got = list(csv.DictReader(f))
    tasks = sorted(row["task"] for row in got)
    for row in got:
        w = np.array([float(row[f"w{k}"]) for k in range(9)])
        np.testing.assert_allclose(w, np.eye(9)[tasks.index(row["task"])], atol=1e-6)
    r = run(mop_bin, "fed-sim", model_path, "--data", data / "train.jsonl", "--val",
            data / "test.jsonl", *SMALL, "--baseline", "oracle")
    assert r.returncode == 1 and "needs --experts >= the 9 tasks" in r.stderr, r.stderr
