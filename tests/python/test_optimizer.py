"""libmop's AdamW (mop_optimizer_step) against torch.optim.AdamW.

Both minimise the same random quadratic f(x) = ½ xᵀAx − bᵀx for 20 steps
from the same start, in float32. Each side's gradient is computed by the
same torch expression from its own parameters, so any difference comes from
the optimizer. libmop's warmup + cosine schedule is fed to torch through the
param group's lr (read with mop_optimizer_lr_at), and clipping is done on
the torch side with clip_grad_norm_ (which divides by norm + 1e-6; the 1e-6
changes the update by far less than the tolerance). Tolerance: max |Δx| <= 1e-6 at every step, with |x| <= ~1 (float32 spacing
~1e-7) and every gradient component far from zero (see quadratic()).
"""
import ctypes

import numpy as np
import pytest

torch = pytest.importorskip("torch")


class AdamWParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("lr", ctypes.c_float),
                ("beta1", ctypes.c_float), ("beta2", ctypes.c_float), ("eps", ctypes.c_float),
                ("weight_decay", ctypes.c_float), ("clip_norm", ctypes.c_float),
                ("warmup_steps", ctypes.c_int32), ("total_steps", ctypes.c_int32),
                ("min_lr_ratio", ctypes.c_float)]


@pytest.fixture(scope="module")
def lib(libmop_path):
    lib = ctypes.CDLL(libmop_path)
    lib.mop_adamw_params_init_sized.argtypes = [ctypes.POINTER(AdamWParams), ctypes.c_size_t]
    lib.mop_optimizer_create.argtypes = [ctypes.c_size_t, ctypes.POINTER(AdamWParams),
                                         ctypes.POINTER(ctypes.c_void_p)]
    lib.mop_optimizer_create.restype = ctypes.c_int
    lib.mop_optimizer_free.argtypes = [ctypes.c_void_p]
    lib.mop_optimizer_step.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                       ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                       ctypes.c_float, ctypes.POINTER(ctypes.c_float),
                                       ctypes.POINTER(ctypes.c_float)]
    lib.mop_optimizer_step.restype = ctypes.c_int
    lib.mop_optimizer_lr_at.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.mop_optimizer_lr_at.restype = ctypes.c_float
    lib.mop_last_error.restype = ctypes.c_char_p
    return lib


def quadratic(n, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n)) / np.sqrt(n)
    a = torch.tensor(q.T @ q + 0.5 * np.eye(n), dtype=torch.float32)
    # the minimum is far from the start, so no gradient component passes near
    # zero in 20 steps (Adam divides by |g|: near zero, float rounding of g
    # would be amplified and no float32 implementation could agree to 1e-6)
    b = torch.tensor(10.0 * rng.standard_normal(n), dtype=torch.float32)
    x0 = torch.tensor(0.25 * rng.standard_normal(n), dtype=torch.float32)
    return a, b, x0


def grad_of(a, b, x):
    return (a @ x - b).contiguous()


@pytest.mark.parametrize("cfg", [
    dict(lr=0.01, weight_decay=0.01, clip_norm=0.0, warmup_steps=0, total_steps=0, scale=1.0),
    dict(lr=0.01, weight_decay=0.1, clip_norm=1.0, warmup_steps=5, total_steps=20, scale=1.0),
    dict(lr=0.02, weight_decay=0.0, clip_norm=0.5, warmup_steps=3, total_steps=0, scale=0.25),
], ids=["constant", "warmup-cosine-clip", "scaled-clip"])
def test_adamw_matches_torch(lib, cfg):
    n, steps = 64, 20
    a, b, x0 = quadratic(n, seed=7)

    p = AdamWParams()
    assert lib.mop_adamw_params_init_sized(ctypes.byref(p), ctypes.sizeof(p)) == 0
    p.lr, p.weight_decay, p.clip_norm = cfg["lr"], cfg["weight_decay"], cfg["clip_norm"]
    p.warmup_steps, p.total_steps = cfg["warmup_steps"], cfg["total_steps"]
    opt = ctypes.c_void_p()
    assert lib.mop_optimizer_create(n, ctypes.byref(p), ctypes.byref(opt)) == 0, \
        lib.mop_last_error().decode()

    x_mop = x0.clone().numpy().astype(np.float32)
    x_t = torch.nn.Parameter(x0.clone())
    t_opt = torch.optim.AdamW([x_t], lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=cfg["weight_decay"])
    fp = ctypes.POINTER(ctypes.c_float)
    try:
        for step in range(steps):
            # libmop
            g = grad_of(a, b, torch.from_numpy(x_mop)).numpy().astype(np.float32)
            g_raw = g / np.float32(cfg["scale"])  # the library multiplies by grad_scale
            lr_used, norm = ctypes.c_float(), ctypes.c_float()
            st = lib.mop_optimizer_step(opt, x_mop.ctypes.data_as(fp), g_raw.ctypes.data_as(fp),
                                        n, cfg["scale"], ctypes.byref(lr_used), ctypes.byref(norm))
            assert st == 0, lib.mop_last_error().decode()
            # torch, with libmop's schedule value for this step
            lr = lib.mop_optimizer_lr_at(opt, step)
            assert lr == pytest.approx(lr_used.value, abs=0)
            for group in t_opt.param_groups:
                group["lr"] = lr
            t_opt.zero_grad()
            x_t.grad = grad_of(a, b, x_t.detach()).clone()
            if cfg["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_([x_t], cfg["clip_norm"])
            t_opt.step()
            diff = np.max(np.abs(x_mop - x_t.detach().numpy()))
            assert diff <= 1e-6, f"step {step}: max |x_mop - x_torch| = {diff:.3g}"
        # the run really moved: the loss went down
        f = lambda x: float(0.5 * x @ (a @ x) - b @ x)
        assert f(torch.from_numpy(x_mop)) < f(x0) - 0.1
    finally:
        lib.mop_optimizer_free(opt)
