"""`mop train`, `mop eval` and `mop gate-stats` end to end on the real model.

Tiny data (build_dataset.py --per-task 8: 54 train / 9 test examples over 9
tasks), K = 2, P = 2, 3 steps, --max-len 64, 2 threads. Checks: a mixture
file is written; eval prints `perplexity: X` last, and without a mixture X
equals exp(Σ NLL / targets) computed independently with mop_ctx_nll over
mop_tokenize_example's targets (rel. 1e-4); gate-stats rows have K weights
summing to 1 (1e-4); usage and data errors exit non-zero with a one-line
message naming the file/line.
"""
import csv
import ctypes
import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAST = ["--threads", "2", "--max-len", "64"]


@pytest.fixture(scope="module")
def mop_bin(build_dir):
    path = pathlib.Path(build_dir) / "src" / "cli" / "mop"
    if not path.exists():
        pytest.skip(f"{path} not built")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mopdata")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "8", "--seed", "1"], check=True, capture_output=True)
    return out


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)


def last_perplexity(stdout):
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: "), stdout
    return float(last.split()[1])


@pytest.fixture(scope="module")
def trained(mop_bin, model_path, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "mix.safetensors"
    r = run(mop_bin, "train", model_path, "--data", data / "train.jsonl", "-K", "2", "-P", "2",
            "--steps", "3", "--batch", "2", "--lr", "0.01", "-o", out, *FAST)
    assert r.returncode == 0, r.stderr
    assert "train 3/3" in r.stderr  # the last progress line is always written
    return out


def reference_ppl(libmop_path, model_path, jsonl, max_len, system=b""):
    """exp(Σ NLL / targets) from mop_ctx_nll, independent of the mixture code;
    system: the examples' system turn (None = the template's default)."""
    lib = ctypes.CDLL(libmop_path)
    lib.mop_model_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.mop_model_free.argtypes = [ctypes.c_void_p]
    lib.mop_ctx_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.mop_ctx_free.argtypes = [ctypes.c_void_p]
    lib.mop_tokenize_example_v2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                            ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32),
                                            ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t,
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.mop_ctx_nll.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                                ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)]
    class CtxParams(ctypes.Structure):
        _fields_ = [("struct_size", ctypes.c_uint32), ("n_ctx", ctypes.c_int32),
                    ("n_batch", ctypes.c_int32), ("n_threads", ctypes.c_int32)]

    lib.mop_ctx_params_init_sized.argtypes = [ctypes.POINTER(CtxParams), ctypes.c_size_t]
    cp = CtxParams()
    assert lib.mop_ctx_params_init_sized(ctypes.byref(cp), ctypes.sizeof(cp)) == 0
    cp.n_threads = 2
    model, ctx = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.mop_model_load(model_path.encode(), None, ctypes.byref(model)) == 0
    assert lib.mop_ctx_create(model, ctypes.byref(cp), ctypes.byref(ctx)) == 0
    total, count = 0.0, 0
    for line in pathlib.Path(jsonl).read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        toks, mask, n = (ctypes.c_int32 * 1024)(), (ctypes.c_uint8 * 1024)(), ctypes.c_size_t()
        assert lib.mop_tokenize_example_v2(model, system, d["instruction"].encode(),
                                           d["response"].encode(), toks, mask, 1024,
                                           ctypes.byref(n)) == 0
        n = min(n.value, max_len)
        nll, tot = (ctypes.c_float * n)(), ctypes.c_double()
        assert lib.mop_ctx_nll(ctx, toks, n, nll, ctypes.byref(tot)) == 0
        total += sum(nll[t - 1] for t in range(1, n) if mask[t])
        count += sum(mask[t] for t in range(1, n))
    lib.mop_ctx_free(ctx)
    lib.mop_model_free(model)
    return math.exp(total / count)


def test_eval_base_model_matches_independent_nll(mop_bin, model_path, data, libmop_path):
    r = run(mop_bin, "eval", model_path, "--data", data / "test.jsonl", *FAST)
    assert r.returncode == 0, r.stderr
    ppl = last_perplexity(r.stdout)
    assert "mixture: (none)" in r.stdout
    want = reference_ppl(libmop_path, model_path, data / "test.jsonl", 64)
    assert ppl == pytest.approx(want, rel=1e-4)
    # the template's default system turn, on request
    r2 = run(mop_bin, "eval", model_path, "--data", data / "test.jsonl", "--template-system",
             *FAST)
    assert r2.returncode == 0, r2.stderr
    want2 = reference_ppl(libmop_path, model_path, data / "test.jsonl", 64, system=None)
    assert last_perplexity(r2.stdout) == pytest.approx(want2, rel=1e-4)
    assert want2 != pytest.approx(want, rel=1e-3)
    # the table has one row per task plus "all"
    rows = [l.split()[0] for l in r.stdout.splitlines()]
    for task in ["antonym", "definition", "gcide", "quote", "translate_fr", "all"]:
        assert task in rows


def test_train_then_eval_with_mixture(mop_bin, model_path, data, trained):
    assert trained.exists() and trained.stat().st_size > 0
    r = run(mop_bin, "eval", model_path, "--mixture", trained, "--data", data / "test.jsonl", *FAST)
    assert r.returncode == 0, r.stderr
    ppl = last_perplexity(r.stdout)
    assert math.isfinite(ppl) and ppl > 1.0
    base = last_perplexity(run(mop_bin, "eval", model_path, "--data", data / "test.jsonl",
                               *FAST).stdout)
    assert ppl != pytest.approx(base, rel=1e-6)  # the experts change the scores


def read_stats(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_gate_stats_rows_sum_to_one(mop_bin, model_path, data, trained, tmp_path):
    out = tmp_path / "stats.csv"
    r = run(mop_bin, "gate-stats", model_path, "--mixture", trained, "--data",
            data / "test.jsonl", "-o", out, *FAST)
    assert r.returncode == 0, r.stderr
    header, rows = read_stats(out)
    assert header == ["task", "n", "w0", "w1"]
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    n_test = len((data / "test.jsonl").read_text().splitlines())
    assert sum(int(row[1]) for row in rows) == n_test
    for row in rows:
        w = [float(x) for x in row[2:]]
        assert len(w) == 2 and all(0.0 <= x <= 1.0 for x in w)
        assert sum(w) == pytest.approx(1.0, abs=1e-4)


def test_baseline_single_is_one_uniform_expert(mop_bin, model_path, data, tmp_path):
    mix = tmp_path / "single.safetensors"
    r = run(mop_bin, "train", model_path, "--data", data / "train.jsonl", "-K", "2", "-P", "2",
            "--baseline", "single", "--steps", "1", "--batch", "1", "-o", mix, *FAST)
    assert r.returncode == 0, r.stderr
    assert "K=1 P=4" in r.stdout and "gate=uniform" in r.stdout
    out = tmp_path / "stats.csv"
    r = run(mop_bin, "gate-stats", model_path, "--mixture", mix, "--data", data / "test.jsonl",
            "-o", out, *FAST)
    assert r.returncode == 0, r.stderr
    header, rows = read_stats(out)
    assert header == ["task", "n", "w0"]
    assert all(float(row[2]) == pytest.approx(1.0, abs=1e-6) for row in rows)


def test_errors_exit_nonzero_with_one_line(mop_bin, model_path, data, tmp_path):
    mix = tmp_path / "m.safetensors"
    good = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()

    r = run(mop_bin, "train", model_path, "--data", tmp_path / "nope.jsonl", "-o", mix)
    assert r.returncode == 1 and "nope.jsonl" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good[:2] + ['{"task": "x", "instruction": "y"'] + good[2:4]) + "\n")
    r = run(mop_bin, "train", model_path, "--data", bad, "-o", mix, *FAST)
    assert r.returncode == 1 and "line 3" in r.stderr and "bad.jsonl" in r.stderr, r.stderr
    assert not mix.exists()

    missing = tmp_path / "missing.jsonl"
    missing.write_text(good[0] + "\n\n" + json.dumps({"task": "a", "instruction": "b"}) + "\n")
    r = run(mop_bin, "eval", model_path, "--data", missing, *FAST)
    assert r.returncode == 1 and "line 3" in r.stderr and '"response"' in r.stderr, r.stderr

    r = run(mop_bin, "train", model_path, "--data", data / "train.jsonl", "-K", "2",
            "--gate-pretrain-epochs", "2", "-o", mix, *FAST)
    assert r.returncode == 1 and "tasks" in r.stderr, r.stderr
    r = run(mop_bin, "train", model_path, "--data", data / "train.jsonl", "-K", "2",
            "--baseline", "oracle", "-o", mix, *FAST)
    assert r.returncode == 1 and "tasks" in r.stderr, r.stderr

    r = run(mop_bin, "gate-stats", model_path, "--mixture", tmp_path / "none.safetensors",
            "--data", data / "test.jsonl", "-o", tmp_path / "s.csv")
    assert r.returncode == 1 and "none.safetensors" in r.stderr

    # usage errors: exit 2
    assert run(mop_bin, "train", model_path, "--data", data / "train.jsonl").returncode == 2
    assert run(mop_bin, "train", model_path, "-o", mix).returncode == 2
    assert run(mop_bin, "train", model_path, "--data", data / "train.jsonl", "-o", mix,
               "--baseline", "triple").returncode == 2
    assert run(mop_bin, "eval", model_path).returncode == 2
    for cmd in ["train", "eval", "gate-stats"]:
        r = run(mop_bin, cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: mop {cmd}")


def read_safetensors(path):
    """{name: float32 array} of a mixture file (the format is simple enough to
    read here without the safetensors package)."""
    import numpy as np
    raw = pathlib.Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(info["shape"])
    return out


def test_gate_lr_zero_freezes_only_the_gate(mop_bin, model_path, data, tmp_path):
    """--gate-lr gives the gate its own rate: at 0 the gate tensors stay at
    their initial values bit for bit (the same seed's mixture trained with
    --lr 0) while the experts move."""
    init, frozen = tmp_path / "init.safetensors", tmp_path / "frozen.safetensors"
    common = [mop_bin, "train", model_path, "--data", data / "train.jsonl", "-K", "2", "-P", "2",
              "--steps", "2", "--batch", "2", "--weight-decay", "0.01", *FAST]
    r = run(*common, "--lr", "0", "--gate-lr", "0", "-o", init)
    assert r.returncode == 0, r.stderr
    r = run(*common, "--lr", "0.01", "--gate-lr", "0", "-o", frozen)
    assert r.returncode == 0, r.stderr
    a, b = read_safetensors(init), read_safetensors(frozen)
    gate = [k for k in a if k.startswith("gate.")]
    assert sorted(gate) == ["gate.b1", "gate.b2", "gate.input_mean", "gate.input_std",
                            "gate.w1", "gate.w2"]
    for k in gate:
        assert (a[k] == b[k]).all(), k
    assert abs(a["experts"] - b["experts"]).max() > 1e-4
    r = run(*common, "--gate-lr", "-1e-3", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--gate-lr" in r.stderr


def test_cached_states_train_the_same_mixture(mop_bin, model_path, data, tmp_path):
    """--cache-states on (layers [0, L_p) once per example, then reused) and
    off train the same mixture, byte for byte, with validation scored from
    the cache too."""
    common = [mop_bin, "train", model_path, "--data", data / "train.jsonl", "--val",
              data / "test.jsonl", "--eval-every", "1", "-K", "2", "-P", "2", "--steps", "3",
              "--batch", "2", *FAST]
    outs = {}
    for mode in ("on", "off"):
        outs[mode] = tmp_path / f"{mode}.safetensors"
        r = run(*common, "--cache-states", mode, "-o", outs[mode])
        assert r.returncode == 0, r.stderr
        assert ("cached the layer-L_p states" in r.stdout) == (mode == "on"), r.stdout
    assert outs["on"].read_bytes() == outs["off"].read_bytes()
    r = run(*common, "--cache-states", "maybe", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--cache-states" in r.stderr
