"""examples/fed_mpi.c under Open MPI: 4 ranks (server + 3 clients) on the real
model, 1 round of 1 local step, K = 2, P = 2, --max-len 64 (and a 3-task,
K = 3, 2-round case with the gate set-up). It must exit 0,
print `perplexity: X` last, and agree with `mop fed-sim` run with the same
settings (IID split, batch 2, lr 3e-3, seed 1234: same split, shuffles and
client order) within 1e-4 relative (the two differ only in thread count,
so in float summation order). Skipped when mpirun or the example is missing
(it is built only when meson finds MPI: apt-get install libopenmpi-dev openmpi-bin).
"""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpidata")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "8", "--seed", "1"], check=True, capture_output=True)
    return out


def last_perplexity(stdout):
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: "), stdout
    return float(last.split()[1])


def round_ppls(stdout):
    """{round: validation perplexity} from the per-round lines."""
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"^round (\d+): validation perplexity ([0-9.]+)", stdout, re.M)}


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_mpi_matches_fed_sim(build_dir, model_path, data, strategy):
    mpirun = shutil.which("mpirun")
    example = pathlib.Path(build_dir) / "examples" / "fed_mpi"
    if not mpirun:
        pytest.skip("mpirun not installed (apt-get install openmpi-bin)")
    if not example.exists():
        pytest.skip(f"{example} not built (meson found no MPI: apt-get install libopenmpi-dev)")
    mop = pathlib.Path(build_dir) / "src" / "cli" / "mop"
    if not mop.exists():
        pytest.skip(f"{mop} not built")
    train, val = str(data / "train.jsonl"), str(data / "test.jsonl")
    r = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "4", str(example),
                        model_path, train, val, "1", "1", strategy, "2", "2", "64"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    mpi_ppl = last_perplexity(r.stdout)

    s = subprocess.run([str(mop), "fed-sim", model_path, "--data", train, "--val", val,
                        "--clients", "3", "--rounds", "1", "--local-steps", "1", "--strategy",
                        strategy, "-K", "2", "-P", "2", "--max-len", "64", "--batch", "2",
                        "--lr", "3e-3", "--split", "iid", "--seed", "1234", "--threads", "1"],
                       capture_output=True, text=True, timeout=900)
    assert s.returncode == 0, s.stderr
    assert mpi_ppl == pytest.approx(last_perplexity(s.stdout), rel=1e-4)
    mpi_rounds, sim_rounds = round_ppls(r.stdout), round_ppls(s.stdout)
    assert sorted(mpi_rounds) == sorted(sim_rounds) == [0, 1]
    for k in mpi_rounds:
        assert mpi_rounds[k] == pytest.approx(sim_rounds[k], rel=1e-4)
    assert mpi_rounds[1] != mpi_rounds[0]  # the round changed the global mixture


def test_mpi_gate_setup_matches_fed_sim(build_dir, model_path, tmp_path):
    """3 tasks, K = 3: gate statistics and federated gate pre-training before
    round 1, then 2 rounds (the clients' AdamW states carried over): the same
    numbers as fed-sim, and the averaged gate routes the validation set."""
    mpirun = shutil.which("mpirun")
    example = pathlib.Path(build_dir) / "examples" / "fed_mpi"
    mop = pathlib.Path(build_dir) / "src" / "cli" / "mop"
    if not mpirun or not example.exists() or not mop.exists():
        pytest.skip("mpirun, examples/fed_mpi or mop missing")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out",
                    str(tmp_path), "--per-task", "30", "--seed", "1", "--tasks",
                    "definition,translate_fr,quote", "--val-frac", "0.34", "--test-frac", "0.01"],
                   check=True, capture_output=True)
    train, val = str(tmp_path / "train.jsonl"), str(tmp_path / "validation.jsonl")
    r = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "4", str(example),
                        model_path, train, val, "2", "1", "fedavg", "3", "2", "64"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    s = subprocess.run([str(mop), "fed-sim", model_path, "--data", train, "--val", val,
                        "--clients", "3", "--rounds", "2", "--local-steps", "1", "-K", "3",
                        "-P", "2", "--max-len", "64", "--batch", "2", "--lr", "3e-3", "--split",
                        "iid", "--seed", "1234", "--threads", "1"],
                       capture_output=True, text=True, timeout=900)
    assert s.returncode == 0, s.stderr
    acc = [float(re.search(r"^federated gate pre-training: .* argmax accuracy ([0-9.]+)", out,
                           re.M).group(1)) for out in (r.stdout, s.stdout)]
    assert acc[0] == pytest.approx(acc[1], abs=1e-9) and acc[0] >= 0.9
    mpi_rounds, sim_rounds = round_ppls(r.stdout), round_ppls(s.stdout)
    assert sorted(mpi_rounds) == sorted(sim_rounds) == [0, 1, 2]
    for k in mpi_rounds:
        assert mpi_rounds[k] == pytest.approx(sim_rounds[k], rel=1e-4)
