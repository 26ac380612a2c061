"""The prompt mixture on SmolLM2: libmop's loss and every parameter gradient
(mop_mixture_forward_backward, through ctypes) against an independent
PyTorch implementation with autograd (float64, on reference.py's weights).

What the reference implements, written from PAPER.md / docs/MIXTURE.md, not
from libmop's code: the gate on the standardized mean hidden state entering
layer L_g over the user turn's content tokens (all tokens before the first
target when there is no user header), the expert groups entering layer L_p
each as its own sequence at RoPE positions -P..-1 (or, joint, all K·P rows as
one causal sequence at -K·P..-1), input queries attending to every prompt key
with + log(K·w_k) (or + log w_k; shared groups + 0) in attention-bias mode or
to one P-token prompt Σ_k w_k E_k (weighted-sum mode), top-k weights kept at
their probability, input positions 0..T-1, mean NLL over target tokens, plus
the load-balance and gate-supervision terms.

Tolerances: per tensor, max |grad_libmop − grad_torch| <= 1e-3 · max |grad_torch|;
loss relative difference <= 1e-4. libmop computes in float32, the reference
in float64 on the same dequantized weights.
"""
import ctypes as C
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import LlamaReference

GRAD_TOL = 1e-3
LOSS_TOL = 1e-4
K, P, LG, LP, HID = 4, 4, 10, 10, 16
B, T = 2, 24
LENGTHS = [24, 17]


class MixtureParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_experts", C.c_int32),
                ("prompt_len", C.c_int32), ("gate_layer", C.c_int32),
                ("inject_layer", C.c_int32), ("gate_hidden", C.c_int32),
                ("gate_act", C.c_int32), ("gate_temperature", C.c_float),
                ("top_k", C.c_int32), ("combine", C.c_int32), ("gate_mode", C.c_int32),
                ("init", C.c_int32), ("init_std", C.c_float), ("seed", C.c_uint64),
                ("gate_pool", C.c_int32), ("gate_norm", C.c_int32), ("gate_bias", C.c_int32),
                ("n_shared", C.c_int32), ("expert_attention", C.c_int32),
                ("top_k_renorm", C.c_int32)]


class Batch(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_seq", C.c_int32), ("seq_len", C.c_int32),
                ("tokens", C.POINTER(C.c_int32)), ("lengths", C.POINTER(C.c_int32)),
                ("loss_mask", C.POINTER(C.c_uint8)), ("task", C.POINTER(C.c_int32))]


class LossParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("load_balance", C.c_float),
                ("gate_supervision", C.c_float), ("gate_only", C.c_int32),
                ("prox_mu", C.c_float)]


class LossResult(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("loss", C.c_double), ("nll_sum", C.c_double),
                ("n_targets", C.c_int64)]


class CtxParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_ctx", C.c_int32), ("n_batch", C.c_int32),
                ("n_threads", C.c_int32)]


class TensorInfo(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("name", C.c_char_p), ("offset", C.c_size_t),
                ("size", C.c_size_t), ("n_dims", C.c_int32), ("dims", C.c_int64 * 4)]


@pytest.fixture(scope="module")
def lib(libmop_path):
    L = C.CDLL(libmop_path)
    L.mop_last_error.restype = C.c_char_p
    L.mop_model_load.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
    L.mop_model_free.argtypes = [C.c_void_p]
    L.mop_ctx_params_init_sized.argtypes = [C.POINTER(CtxParams), C.c_size_t]
    L.mop_ctx_create.argtypes = [C.c_void_p, C.POINTER(CtxParams), C.POINTER(C.c_void_p)]
    L.mop_ctx_free.argtypes = [C.c_void_p]
    L.mop_mixture_params_init_sized.argtypes = [C.POINTER(MixtureParams), C.c_size_t]
    L.mop_mixture_create.argtypes = [C.c_void_p, C.POINTER(MixtureParams), C.POINTER(C.c_void_p)]
    L.mop_mixture_free.argtypes = [C.c_void_p]
    L.mop_mixture_data.argtypes = [C.c_void_p, C.POINTER(C.POINTER(C.c_float)),
                                   C.POINTER(C.POINTER(C.c_float)), C.POINTER(C.c_size_t)]
    L.mop_mixture_zero_grad.argtypes = [C.c_void_p]
    L.mop_mixture_tensor_count.argtypes = [C.c_void_p]
    L.mop_mixture_tensor_get_info.argtypes = [C.c_void_p, C.c_int32, C.POINTER(TensorInfo)]
    L.mop_mixture_set_input_stats.argtypes = [C.c_void_p, C.c_double, C.POINTER(C.c_double),
                                              C.POINTER(C.c_double)]
    L.mop_tokenize.argtypes = [C.c_void_p, C.c_char_p, C.c_size_t, C.c_int32,
                               C.POINTER(C.c_int32), C.c_size_t, C.POINTER(C.c_size_t)]
    L.mop_model_special_token.argtypes = [C.c_void_p, C.c_int32]
    L.mop_loss_params_init_sized.argtypes = [C.POINTER(LossParams), C.c_size_t]
    L.mop_mixture_forward_backward.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(Batch),
                                               C.POINTER(LossParams), C.POINTER(LossResult)]
    return L


def check(lib, status):
    assert status == 0, lib.mop_last_error().decode()


@pytest.fixture(scope="module")
def ref(model_path):
    return LlamaReference(model_path, dtype=torch.float64)


@pytest.fixture(scope="module")
def model(lib, model_path):
    m = C.c_void_p()
    check(lib, lib.mop_model_load(model_path.encode(), None, C.byref(m)))
    yield m
    lib.mop_model_free(m)


# ---- the reference mixture ----------------------------------------------------

def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer(ref, l, x, pos, prefix=None, bias=None):
    """One block on x (n, d) at positions pos; prefix = (k, v) (m, Hkv, hd) after
    RoPE that every query sees, with bias (m) added to those scores.
    Returns the output and this call's (k, v) after RoPE."""
    w, p = ref.w, f"blk.{l}."
    n, hd, H, Hkv = x.shape[0], ref.head_dim, ref.n_head, ref.n_head_kv
    h = ref.rmsnorm(x, w[p + "attn_norm.weight"])
    q = ref.rope_interleaved((h @ w[p + "attn_q.weight"].T).reshape(n, H, hd), pos)
    k = ref.rope_interleaved((h @ w[p + "attn_k.weight"].T).reshape(n, Hkv, hd), pos)
    v = (h @ w[p + "attn_v.weight"].T).reshape(n, Hkv, hd)
    kk, vv = k, v
    m = 0
    if prefix is not None:
        kk, vv = torch.cat([prefix[0], k]), torch.cat([prefix[1], v])
        m = prefix[0].shape[0]
    g = H // Hkv
    kk, vv = kk.repeat_interleave(g, dim=1), vv.repeat_interleave(g, dim=1)
    s = torch.einsum("thd,shd->hts", q, kk) / math.sqrt(hd)
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    mask = torch.cat([torch.zeros(n, m, dtype=torch.bool), causal], dim=1)
    s = s.masked_fill(mask, float("-inf"))
    if bias is not None:
        s = s + torch.cat([bias, torch.zeros(n, dtype=bias.dtype)])[None, None, :]
    att = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), vv).reshape(n, -1)
    x = x + att @ w[p + "attn_output.weight"].T
    h = ref.rmsnorm(x, w[p + "ffn_norm.weight"])
    x = x + (F.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) \
        @ w[p + "ffn_down.weight"].T
    return x, (k, v)


def prompt_stream(ref, prompt):
    """prompt (S, d) entering L_p at positions -S..-1 -> per-layer (k, v)."""
    S = prompt.shape[0]
    pos = torch.arange(-S, 0)
    kv, x = [], prompt
    for l in range(LP, ref.n_layer):
        x, kvl = layer(ref, l, x, pos)
        kv.append(kvl)
    return kv


def group_streams(ref, E, joint):
    """Every group (P, d) of E on its own at -P..-1, keys/values concatenated
    in group order; or all rows as one stream (joint)."""
    G = E.shape[0]
    if joint:
        return prompt_stream(ref, E.reshape(G * P, -1))
    per = [prompt_stream(ref, E[g]) for g in range(G)]
    return [(torch.cat([p[i][0] for p in per]), torch.cat([p[i][1] for p in per]))
            for i in range(len(per[0]))]


def content_rows(tok, n_pool, header, eot):
    """Positions of the user turns' content before n_pool (all when none)."""
    rows, inside, t = [], False, 0
    h = len(header)
    while t < n_pool:
        if list(tok[t:t + h]) == header and t + h <= n_pool:
            inside, t = True, t + h
            continue
        if tok[t] == eot:
            inside = False
        if inside:
            rows.append(t)
        t += 1
    return rows or list(range(n_pool))


def reference_loss(ref, theta, tokens, lengths, mask, task, cfg, tau, stats, header, eot):
    combine, top_k, lb, sup = cfg["combine"], cfg["top_k"], cfg["lb"], cfg["sup"]
    n_shared, joint, logw = cfg["n_shared"], cfg["joint"], cfg["logw"]
    E, W1, b1, W2, b2 = theta
    mu, sd = stats
    n_tgt = sum(int(mask[b, 1:lengths[b]].sum()) for b in range(B))
    shared_kv = group_streams(ref, E, joint) if combine == 0 else None
    nll, pis = 0.0, []
    for b in range(B):
        n = lengths[b]
        pos = torch.arange(n)
        x = ref.w["token_embd.weight"][torch.as_tensor(tokens[b, :n], dtype=torch.long)]
        with torch.no_grad():
            for l in range(LG):
                x, _ = layer(ref, l, x, pos)
        # The gate averages the tokens before the first target (docs/MIXTURE.md).
        first = [t for t in range(1, n) if mask[b, t]]
        n_pool = first[0] if first else n
        u = x[content_rows(tokens[b], n_pool, header, eot)].mean(0)
        u = (u - mu) / sd
        z = W2 @ gelu_tanh(W1 @ u + b1) + b2
        pi = torch.softmax(z / tau, dim=0)
        pis.append(pi)
        print("  gate", np.round(pi.detach().numpy(), 3))
        if top_k:
            keep = torch.zeros(K, dtype=torch.bool)
            keep[torch.topk(pi.detach(), top_k).indices] = True
            wk = torch.where(keep, pi, torch.zeros_like(pi))  # kept at their probability
        else:
            wk = pi
        with torch.no_grad():
            for l in range(LG, LP):
                x, _ = layer(ref, l, x, pos)
        if combine == 0:
            routed = torch.log(wk if logw else K * wk)
            bias = torch.cat([routed, torch.zeros(n_shared, dtype=routed.dtype)])
            kv, bias = shared_kv, bias.repeat_interleave(P)
        else:
            kv, bias = prompt_stream(ref, torch.einsum("k,kpd->pd", wk, E)), None
        for i, l in enumerate(range(LP, ref.n_layer)):
            x, _ = layer(ref, l, x, pos, prefix=kv[i], bias=bias)
        logits = ref.rmsnorm(x, ref.w["output_norm.weight"]) @ ref.lm_head.T
        lp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = torch.as_tensor(tokens[b, 1:n], dtype=torch.long)
        sel = torch.as_tensor(mask[b, 1:n].astype(bool))
        nll = nll - lp.gather(1, tgt[:, None])[:, 0][sel].sum()
    loss = nll / n_tgt
    pis = torch.stack(pis)
    if lb:
        f = torch.zeros(K, dtype=pis.dtype)
        for b in range(B):
            f[int(torch.argmax(pis[b]))] += 1.0 / B
        loss = loss + lb * K * (f * pis.mean(0)).sum()
    if sup:
        loss = loss - sup * torch.log(pis[torch.arange(B), torch.as_tensor(task, dtype=torch.long)]).mean()
    return loss


# ---- the comparison ----------------------------------------------------------------

CASES = {
    "attention-bias": dict(combine=0, top_k=0, lb=0.0, sup=0.0),
    "attention-bias+lb+sup": dict(combine=0, top_k=0, lb=0.3, sup=0.2),
    "weighted-sum-top2": dict(combine=1, top_k=2, lb=0.0, sup=0.0),
    "shared-group-top1": dict(combine=0, top_k=1, lb=0.0, sup=0.0, n_shared=1),
    "joint-log-w": dict(combine=0, top_k=0, lb=0.0, sup=0.0, joint=True, logw=True),
}


def user_header(lib, model):
    ids, n = (C.c_int32 * 8)(), C.c_size_t()
    text = b"<|im_start|>user\n"
    check(lib, lib.mop_tokenize(model, text, len(text), 2, ids, 8, C.byref(n)))
    return list(ids[:n.value]), lib.mop_model_special_token(model, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_mixture_gradients_match_torch(lib, model, ref, case):
    cfg = {"n_shared": 0, "joint": False, "logw": False, **CASES[case]}
    combine, top_k, lb, sup = cfg["combine"], cfg["top_k"], cfg["lb"], cfg["sup"]
    torch.manual_seed(0)
    rng = np.random.default_rng(1 + combine)
    tau = 0.8
    mp = MixtureParams()
    check(lib, lib.mop_mixture_params_init_sized(C.byref(mp), C.sizeof(mp)))
    mp.n_experts, mp.prompt_len, mp.gate_layer, mp.inject_layer = K, P, LG, LP
    mp.gate_hidden, mp.gate_temperature, mp.top_k, mp.combine = HID, tau, top_k, combine
    mp.n_shared, mp.expert_attention, mp.gate_bias = cfg["n_shared"], int(cfg["joint"]), \
        int(cfg["logw"])
    mix = C.c_void_p()
    check(lib, lib.mop_mixture_create(model, C.byref(mp), C.byref(mix)))
    header, eot = user_header(lib, model)
    assert len(header) == 3 and eot >= 0
    cp = CtxParams()
    check(lib, lib.mop_ctx_params_init_sized(C.byref(cp), C.sizeof(cp)))
    cp.n_ctx, cp.n_batch, cp.n_threads = 128, 64, 2
    ctx = C.c_void_p()
    check(lib, lib.mop_ctx_create(model, C.byref(cp), C.byref(ctx)))
    try:
        pp, gp, n = C.POINTER(C.c_float)(), C.POINTER(C.c_float)(), C.c_size_t()
        check(lib, lib.mop_mixture_data(mix, C.byref(pp), C.byref(gp), C.byref(n)))
        params = np.ctypeslib.as_array(pp, shape=(n.value,))
        grads = np.ctypeslib.as_array(gp, shape=(n.value,))
        infos = []
        for i in range(lib.mop_mixture_tensor_count(mix)):
            ti = TensorInfo(struct_size=C.sizeof(TensorInfo))
            check(lib, lib.mop_mixture_tensor_get_info(mix, i, C.byref(ti)))
            infos.append((ti.name.decode(), ti.offset, ti.size, tuple(ti.dims[:ti.n_dims])))
        names = [i[0] for i in infos]
        assert names == ["experts", "gate.w1", "gate.b1", "gate.w2", "gate.b2"]
        # random parameters: experts at the scale of the embeddings, a non-uniform gate
        emb = ref.w["token_embd.weight"]
        scale = {"experts": float(emb.std()), "gate.w1": 0.002, "gate.b1": 0.1,
                 "gate.w2": 0.5, "gate.b2": 0.5}
        for name, off, size, _ in infos:
            params[off:off + size] = rng.normal(0.0, scale[name], size).astype(np.float32)

        tokens = rng.integers(5, ref.n_vocab, size=(B, T)).astype(np.int32)
        # sequence 0 has a user turn: the gate pools only positions 3 and 4
        tokens[0, :3], tokens[0, 5] = header, eot
        # random input statistics (the gate reads (u - mu) / sd)
        d = ref.d
        s = rng.normal(0.0, 5.0, d)
        q = s * s / 10.0 + 10.0 * rng.uniform(0.5, 2.0, d)
        check(lib, lib.mop_mixture_set_input_stats(
            mix, 10.0, s.ctypes.data_as(C.POINTER(C.c_double)),
            q.ctypes.data_as(C.POINTER(C.c_double))))
        mu = s / 10.0
        sd = np.sqrt(np.maximum(q / 10.0 - mu * mu, 0.0) + 1e-6)
        stats = (torch.tensor(mu.astype(np.float32).astype(np.float64)),
                 torch.tensor(sd.astype(np.float32).astype(np.float64)))
        lengths = np.array(LENGTHS, dtype=np.int32)
        mask = np.zeros((B, T), dtype=np.uint8)
        mask[:, 6:] = 1
        task = np.array([1, 3], dtype=np.int32)
        batch = Batch(C.sizeof(Batch), B, T, tokens.ctypes.data_as(C.POINTER(C.c_int32)),
                      lengths.ctypes.data_as(C.POINTER(C.c_int32)),
                      mask.ctypes.data_as(C.POINTER(C.c_uint8)),
                      task.ctypes.data_as(C.POINTER(C.c_int32)))
        lp = LossParams()
        check(lib, lib.mop_loss_params_init_sized(C.byref(lp), C.sizeof(lp)))
        lp.load_balance, lp.gate_supervision = lb, sup
        res = LossResult(struct_size=C.sizeof(LossResult))
        lib.mop_mixture_zero_grad(mix)
        check(lib, lib.mop_mixture_forward_backward(ctx, mix, C.byref(batch), C.byref(lp),
                                                    C.byref(res)))
        assert res.n_targets == sum(int(mask[b, 1:lengths[b]].sum()) for b in range(B))

        theta = [torch.tensor(params[off:off + size].astype(np.float64).reshape(shape),
                              requires_grad=True) for _, off, size, shape in infos]
        loss = reference_loss(ref, theta, tokens, lengths, mask, task, cfg, tau, stats, header,
                              eot)
        loss.backward()
        rel_loss = abs(res.loss - loss.item()) / abs(loss.item())
        print(f"\n  loss libmop {res.loss:.8f} torch {loss.item():.8f} rel {rel_loss:.2e}")
        assert rel_loss <= LOSS_TOL
        for (name, off, size, shape), t in zip(infos, theta):
            g_ref = t.grad.numpy().reshape(-1)
            g_mop = grads[off:off + size].astype(np.float64)
            gmax = np.abs(g_ref).max()
            err = np.abs(g_mop - g_ref).max() / gmax
            print(f"  {name:8s} max|grad| {gmax:.3e}  max rel err {err:.2e}")
            assert gmax > 0
            assert err <= GRAD_TOL, f"{name}: relative error {err:.2e}"
    finally:
        lib.mop_ctx_free(ctx)
        lib.mop_mixture_free(mix)
