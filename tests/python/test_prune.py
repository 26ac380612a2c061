"""`mop prune` on the real SmolLM2: the saved file holds exactly the magnitude
2:4 pruning of the source weights, and `mop ppl` on it equals an independent
PyTorch evaluation of those pruned weights.

Independent check: the pruned weights are read back from the saved GGUF by
decoding the documented N:M stream (docs/FORMAT.md, "Pruned models in GGUF")
in NumPy, compared with a NumPy re-derivation of magnitude 2:4 on the source
model's dequantized weights, and run through tests/python/reference.py
(float64 torch) - no libmop code is involved on the reference side."""
import ctypes as C
import math
import os
import pty
import re
import struct
import subprocess

import gguf
import numpy as np
import pytest
import torch

from reference import LlamaReference

PPL_TOL = 1e-4
WINDOW, MAX_TOKENS = 128, 256
LINEAR = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
TEXT = "/usr/share/common-licenses/GPL-3"


@pytest.fixture(scope="module")
def mop(build_dir):
    path = build_dir / "src" / "cli" / "mop"
    if not path.exists():
        pytest.skip(f"{path} not built")
    return path


def run(mop, *args, timeout=600):
    r = subprocess.run([str(mop), *map(str, args)], capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


# The progress line `mop train` prints, here over the 7 x 30 weight matrices.
PROGRESS_LOG = re.compile(r"^prune (\d+)/210 weights ETA \d+m\d\ds$")


@pytest.fixture(scope="module")
def pruned(mop, model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "smollm2-2of4.gguf"
    r = subprocess.run([str(mop), "prune", model_path, "--method", "magnitude", "--pattern",
                        "2:4", "-t", "2", "-o", str(out)], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    log = r.stdout.decode()
    assert "sparsity: 0.5000" in log and "format: nm" in log
    # stderr is not a terminal: a line for the first weight, then at most one
    # every 10 s (a run this short has none between), and one for the last
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("prune")]
    done = [int(PROGRESS_LOG.match(ln).group(1)) for ln in lines]
    assert done[0] == 1 and done[-1] == 210 and done == sorted(done), lines
    assert lines[-1] == "prune 210/210 weights ETA 0m00s"
    return out


def test_progress_in_place_on_a_terminal(mop, model_path, tmp_path):
    """On a terminal the line is rewritten in place ("\\r\\033[K") at every
    weight, with the bar of `mop train`, and ended by one newline."""
    master, slave = pty.openpty()
    p = subprocess.Popen([str(mop), "prune", model_path, "--layers", "0:1", "-t", "2",
                          "-o", str(tmp_path / "one-block.gguf")],
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert p.wait(timeout=600) == 0, err
    text = err.decode()
    updates = re.findall(r"\r\x1b\[Kprune \[([#.]{20})\] (\d)/7 weights ETA \d+m\d\ds", text)
    assert [int(n) for _, n in updates] == list(range(1, 8)), text
    assert updates[-1][0] == "#" * 20 and updates[0][0] == "##" + "." * 18
    assert text.endswith("ETA 0m00s\r\n")  # the pty turns the final "\n" into "\r\n"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    text = open(TEXT, encoding="utf-8").read()[-6000:]  # the license's last paragraphs
    path = tmp_path_factory.mktemp("text") / "held_out.txt"
    path.write_text(text, encoding="utf-8")
    return path


def decode_nm(blob):
    """Dense (rows, cols) float32 from a serialised N:M weight."""
    magic, version, fmt, _ = struct.unpack_from("<4sIII", blob, 0)
    assert magic == b"MOPS" and version == 1 and fmt == 1
    rows, cols, n, m = struct.unpack_from("<qqII", blob, 16)
    slots = -(-cols // m) * n
    vals = np.frombuffer(blob, dtype="<f4", count=rows * slots, offset=40).reshape(rows, slots)
    stride = -(-slots // 2)
    idx = np.frombuffer(blob, dtype=np.uint8, count=rows * stride,
                        offset=40 + 4 * rows * slots).reshape(rows, stride)
    nib = np.stack([idx & 15, idx >> 4], axis=-1).reshape(rows, -1)[:, :slots].astype(np.int64)
    col = (np.arange(slots) // n * m)[None, :] + nib
    assert (nib < m).all() and (col < cols).all()
    # padding slots (value 0) may repeat a column of their group: add, don't overwrite
    W = np.zeros((rows, cols), dtype=np.float32)
    np.add.at(W, (np.repeat(np.arange(rows), slots), col.reshape(-1)), vals.reshape(-1))
    return W


def magnitude_nm(W, n, m):
    """Keep the n largest |w| of every m consecutive columns; ties keep the lower column."""
    rows, cols = W.shape
    g = W.reshape(rows, cols // m, m)
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.where(keep, g, 0).reshape(rows, cols).astype(np.float32)


def test_saved_weights_are_magnitude_2_of_4(pruned, model_path):
    src = {t.name: t for t in gguf.GGUFReader(model_path).tensors}
    out = {t.name: t for t in gguf.GGUFReader(str(pruned)).tensors}
    for l in (0, 17, 29):
        for name in LINEAR:
            key = f"blk.{l}.{name}.weight"
            assert key not in out
            t = src[key]
            shape = tuple(int(s) for s in reversed(list(t.shape)))
            W = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                           dtype=np.float32).reshape(shape)
            got = decode_nm(bytes(np.asarray(out[key + ".sparse"].data, dtype=np.int8)))
            np.testing.assert_array_equal(got, magnitude_nm(W, 2, 4), err_msg=key)
    # everything else is the source's values in F32
    emb = src["token_embd.weight"]
    want = np.asarray(gguf.quants.dequantize(emb.data, emb.tensor_type), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(out["token_embd.weight"].data).reshape(want.shape), want)


def tokenize(libmop_path, model_path, text):
    L = C.CDLL(libmop_path)
    L.mop_model_load.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
    L.mop_model_free.argtypes = [C.c_void_p]
    L.mop_tokenize.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t, C.c_int32,
                               C.POINTER(C.c_int32), C.c_size_t, C.POINTER(C.c_size_t)]
    m = C.c_void_p()
    assert L.mop_model_load(str(model_path).encode(), None, C.byref(m)) == 0
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf, n = (C.c_int32 * cap)(), C.c_size_t()
    assert L.mop_tokenize(m, data, len(data), 1, buf, cap, C.byref(n)) == 0
    L.mop_model_free(m)
    return list(buf[: n.value])


def test_ppl_equals_reference_on_pruned_weights(mop, pruned, model_path, held_out,
                                                  libmop_path):
    out = run(mop, "ppl", pruned, held_out, "--ctx", WINDOW, "--max-tokens", MAX_TOKENS,
              "-t", "2")
    ppl = float(out.strip().splitlines()[-1].split()[1])

    ref = LlamaReference(model_path, dtype=torch.float64)
    for t in gguf.GGUFReader(str(pruned)).tensors:
        if t.name.endswith(".sparse"):
            W = decode_nm(bytes(np.asarray(t.data, dtype=np.int8)))
            ref.w[t.name[: -len(".sparse")]] = torch.from_numpy(W).to(torch.float64)
    tokens = tokenize(libmop_path, pruned, held_out.read_text(encoding="utf-8"))[:MAX_TOKENS]
    total, count = 0.0, 0
    for s in range(0, len(tokens), WINDOW):
        w = tokens[s:s + WINDOW]
        if len(w) >= 2:
            total += float(ref.nll(w).sum())
            count += len(w) - 1
    want = math.exp(total / count)
    print(f"mop ppl {ppl:.6f}, reference on the pruned weights {want:.6f}")
    assert abs(ppl - want) <= PPL_TOL * want


def test_info_shows_sparsity(mop, pruned):
    out = run(mop, "info", pruned)
    assert "sparsity:        0.5000" in out and "format nm" in out
