"""libmop's forward on SmolLM2 against the independent PyTorch reference
(reference.py), through ctypes on libmop.so.

Tolerances: logits max |diff| <= 1e-3 * max |logit|; perplexity relative
difference <= 1e-4. The reference runs in float64 on the same dequantized
weights, so differences measure libmop's float32 arithmetic only.
"""
import ctypes as C
import json
import math
import os

import numpy as np
import pytest
import torch

from reference import LlamaReference

LOGIT_TOL = 1e-3
PPL_TOL = 1e-4
LENGTHS = [1, 7, 64, 200]


class CtxParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_ctx", C.c_int32), ("n_batch", C.c_int32),
                ("n_threads", C.c_int32)]


PROGRESS = C.CFUNCTYPE(C.c_int, C.c_uint64, C.c_uint64, C.c_void_p)


@pytest.fixture(scope="module")
def lib(libmop_path):
    L = C.CDLL(libmop_path)
    L.mop_last_error.restype = C.c_char_p
    L.mop_model_load.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
    L.mop_model_free.argtypes = [C.c_void_p]
    L.mop_ctx_params_init_sized.argtypes = [C.POINTER(CtxParams), C.c_size_t]
    L.mop_ctx_create.argtypes = [C.c_void_p, C.POINTER(CtxParams), C.POINTER(C.c_void_p)]
    L.mop_ctx_free.argtypes = [C.c_void_p]
    L.mop_ctx_reset.argtypes = [C.c_void_p]
    L.mop_ctx_decode.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_int32, C.c_int32]
    L.mop_ctx_get_logits.argtypes = [C.c_void_p, C.POINTER(C.POINTER(C.c_float)),
                                     C.POINTER(C.c_int32)]
    L.mop_ctx_nll.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_int32,
                              C.POINTER(C.c_float), C.POINTER(C.c_double)]
    L.mop_ctx_perplexity.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_int32, C.c_int32,
                                     PROGRESS, C.c_void_p, C.POINTER(C.c_double)]
    return L


def check(lib, status):
    assert status == 0, lib.mop_last_error().decode()


@pytest.fixture(scope="module")
def model(lib, model_path):
    m = C.c_void_p()
    check(lib, lib.mop_model_load(model_path.encode(), None, C.byref(m)))
    yield m
    lib.mop_model_free(m)


@pytest.fixture(scope="module")
def ref(model_path):
    return LlamaReference(model_path, dtype=torch.float64)


class Ctx:
    def __init__(self, lib, model, n_ctx=512, n_batch=64, n_threads=1):
        self.lib = lib
        p = CtxParams()
        assert lib.mop_ctx_params_init_sized(C.byref(p), C.sizeof(p)) == 0
        p.n_ctx, p.n_batch, p.n_threads = n_ctx, n_batch, n_threads
        self.h = C.c_void_p()
        check(lib, lib.mop_ctx_create(model, C.byref(p), C.byref(self.h)))

    def __del__(self):
        self.lib.mop_ctx_free(self.h)

    def decode(self, tokens, all_logits=True):
        arr = (C.c_int32 * len(tokens))(*tokens)
        check(self.lib, self.lib.mop_ctx_decode(self.h, arr, len(tokens), 1 if all_logits else 0))
        ptr, rows = C.POINTER(C.c_float)(), C.c_int32()
        check(self.lib, self.lib.mop_ctx_get_logits(self.h, C.byref(ptr), C.byref(rows)))
        return np.ctypeslib.as_array(ptr, shape=(rows.value, 49152)).copy()

    def nll(self, tokens):
        arr = (C.c_int32 * len(tokens))(*tokens)
        out = (C.c_float * max(1, len(tokens) - 1))()
        total = C.c_double()
        check(self.lib, self.lib.mop_ctx_nll(self.h, arr, len(tokens), out, C.byref(total)))
        return np.array(out[: len(tokens) - 1], dtype=np.float64), total.value


def prompt(n):
    """Fixed token ids: a repeated phrase (predictable, so NLL is informative)
    mixed with pseudo-random ids."""
    rng = np.random.RandomState(1234 + n)
    phrase = [504, 3458, 282, 4649, 314, 253, 2767, 30]
    ids = [int(phrase[i % len(phrase)]) if (i // 16) % 2 == 0 else int(rng.randint(0, 49152))
           for i in range(n)]
    return ids


_ref_cache = {}


def ref_logits(ref, tokens):
    key = tuple(tokens)
    if key not in _ref_cache:
        _ref_cache[key] = ref.forward(tokens).numpy()
    return _ref_cache[key]


MEASURED = {}


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("MOP_FORWARD_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(MEASURED, f, indent=1)


def test_rope_layouts_agree(ref):
    tokens = prompt(7)
    a = ref_logits(ref, tokens)
    b = ref.forward(tokens, rope="hf").numpy()
    MEASURED["rope_interleaved_vs_hf"] = rel_err(a, b)
    assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("n", LENGTHS)
def test_logits_match_reference(lib, model, ref, n):
    tokens = prompt(n)
    ctx = Ctx(lib, model, n_threads=2)
    got = ctx.decode(tokens)
    want = ref_logits(ref, tokens)
    err = rel_err(got, want)
    MEASURED[f"logits_rel_err_T{n}"] = err
    assert err <= LOGIT_TOL
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("n", [64, 200])
def test_perplexity_matches_reference(lib, model, ref, n):
    tokens = prompt(n)
    ctx = Ctx(lib, model, n_batch=48, n_threads=2)
    nll, total = ctx.nll(tokens)
    want_logits = torch.from_numpy(ref_logits(ref, tokens))
    want = -torch.log_softmax(want_logits[:-1], -1).gather(
        1, torch.tensor(tokens[1:])[:, None])[:, 0].numpy()
    assert abs(total - nll.sum()) <= 1e-3
    ppl, ppl_ref = math.exp(total / (n - 1)), math.exp(want.sum() / (n - 1))
    MEASURED[f"ppl_T{n}"] = [ppl, ppl_ref, abs(ppl - ppl_ref) / ppl_ref]
    MEASURED[f"nll_max_abs_diff_T{n}"] = float(np.abs(nll - want).max())
    assert abs(ppl - ppl_ref) <= PPL_TOL * ppl_ref
    assert np.abs(nll - want).max() <= 1e-2


def test_windowed_perplexity(lib, model, ref):
    tokens = prompt(200)
    ctx = Ctx(lib, model, n_ctx=80, n_batch=80, n_threads=2)
    calls = []

    @PROGRESS
    def progress(done, total, user):
        calls.append((done, total))
        return 0

    arr = (C.c_int32 * 200)(*tokens)
    ppl = C.c_double()
    check(lib, lib.mop_ctx_perplexity(ctx.h, arr, 200, 64, progress, None, C.byref(ppl)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 64, 64, 64, 8
    total, count = 0.0, 0
    for s in range(0, 200, 64):
        w = tokens[s:s + 64]
        total += float(ref.nll(w).sum())
        count += len(w) - 1
    want = math.exp(total / count)
    MEASURED["ppl_windows_64"] = [ppl.value, want]
    assert abs(ppl.value - want) <= PPL_TOL * want

    @PROGRESS
    def cancel(done, total, user):
        return 1

    assert lib.mop_ctx_perplexity(ctx.h, arr, 200, 64, cancel, None, C.byref(ppl)) == -10


def test_kv_cache_decode_matches_full_recompute(lib, model, ref):
    tokens = prompt(64)
    want = ref_logits(ref, tokens)
    ctx = Ctx(lib, model, n_batch=16, n_threads=2)
    k = 9
    rows = [ctx.decode(tokens[:k], all_logits=False)[0]]
    for t in range(k, len(tokens)):
        rows.append(ctx.decode([tokens[t]], all_logits=False)[0])
    got = np.stack(rows)
    err = rel_err(got, want[k - 1:])
    MEASURED["kv_cache_rel_err_T64"] = err
    assert err <= LOGIT_TOL


def test_thread_counts_agree(lib, model):
    tokens = prompt(64)
    one = Ctx(lib, model, n_threads=1).decode(tokens)
    two = Ctx(lib, model, n_threads=2).decode(tokens)
    err = rel_err(two, one)
    MEASURED["threads_1_vs_2_rel_err"] = err
    assert err <= 1e-5
