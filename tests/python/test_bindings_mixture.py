"""Python bindings over mop_gate.h: mixtures, batches, training, evaluation, optimizer.

References: base-model NLL of a
batch from Context.nll (mop_core), a hand-computed first AdamW step, central
finite differences of the loss for one parameter.
"""
import gc
import os

import numpy as np
import pytest

from test_bindings_core import import_libmop, rss_bytes

libmop = import_libmop()
MopError = libmop.MopError

GATE_SYMBOLS = [
    "mop_mixture_default_params", "mop_mixture_create", "mop_mixture_free",
    "mop_mixture_get_params", "mop_mixture_save", "mop_mixture_load", "mop_mixture_data",
    "mop_mixture_n_params", "mop_mixture_zero_grad", "mop_mixture_tensor_count",
    "mop_mixture_tensor_get_info", "mop_loss_default_params", "mop_mixture_forward_backward",
    "mop_mixture_evaluate", "mop_mixture_gate", "mop_mixture_generate", "mop_mixture_prepare",
    "mop_mixture_set_prox_reference", "mop_tokenize_example", "mop_adamw_default_params",
    "mop_optimizer_create", "mop_optimizer_free", "mop_optimizer_step", "mop_optimizer_lr_at",
]


def need(*symbols):
    for s in symbols or GATE_SYMBOLS:
        if not libmop.has_symbol(s):
            pytest.fail(f"C symbol {s} is not exported by the library")


EXAMPLES = [("What is 2+2?", "4"), ("Name a primary color.", "Blue")]
K, P, H = 4, 4, 16


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def ctx(model):
    with libmop.Context(model, n_ctx=256, n_batch=128, n_threads=2) as c:
        yield c


@pytest.fixture
def mixture(model):
    need()
    with libmop.Mixture(model, n_experts=K, prompt_len=P, gate_hidden=H, seed=11) as m:
        yield m


@pytest.fixture(scope="module")
def batch(model):
    need("mop_tokenize_example")
    return libmop.Batch.from_examples(model, EXAMPLES, max_len=64, task=[0, 1])


def test_mixture_shape_and_views(mixture, model):
    d = model.info.n_embd
    cfg = mixture.config
    assert (cfg["n_experts"], cfg["prompt_len"], cfg["gate_hidden"], cfg["seed"]) == (K, P, H, 11)
    assert cfg["gate_layer"] == 10 and cfg["inject_layer"] == 10  # -1 resolved to n_layer/3
    info = {t.name: t for t in mixture.tensor_info()}
    assert {n: t.shape for n, t in info.items()} == {
        "experts": (K, P, d), "gate.w1": (H, d), "gate.b1": (H,), "gate.w2": (K, H),
        "gate.b2": (K,)}
    assert mixture.n_params == K * P * d + H * d + H + K * H + K == mixture.params.size
    # tensors() are shaped views into the flat buffer: writes show through
    ts = mixture.tensors()
    assert all(np.shares_memory(v, mixture.params) for v in ts.values())
    assert mixture.params.dtype == np.float32 and mixture.params.flags.writeable
    ts["gate.b2"][:] = [1, 2, 3, 4]
    off = info["gate.b2"].offset
    np.testing.assert_array_equal(mixture.params[off:off + K], [1, 2, 3, 4])
    # initial state: W2 = 0, biases 0 (uniform gate), experts from the vocabulary
    assert not ts["gate.w2"].any() and not ts["gate.b1"].any()
    assert ts["experts"].std() > 0
    g = mixture.tensors(grads=True)
    assert all(np.shares_memory(v, mixture.grads) for v in g.values())
    mixture.grads[:] = 1.0
    mixture.zero_grad()
    assert not mixture.grads.any()


def test_views_keep_the_mixture_alive(model):
    need()
    live = libmop.live_handles().get("mop_mixture", 0)
    m = libmop.Mixture(model, n_experts=2, prompt_len=2, gate_hidden=4)
    v = m.params
    v[:] = 0.5
    m.close()
    assert libmop.live_handles()["mop_mixture"] == live + 1  # a view still holds it
    assert float(v.sum()) == 0.5 * v.size
    del v
    assert libmop.live_handles()["mop_mixture"] == live


def test_mixture_params_and_enums(model):
    need()
    with libmop.Mixture(model, n_experts=1, prompt_len=3, gate_mode="uniform",
                        combine="weighted_sum", init="normal", init_std=0.5) as m:
        assert [t.name for t in m.tensor_info()] == ["experts"]
        assert m.config["gate_mode"] == 1 and m.config["combine"] == 1
        assert 0.4 < float(m.params.std()) < 0.6
    with pytest.raises(MopError) as ei:
        libmop.Mixture(model, n_experts=0)
    assert ei.value.name == "MOP_E_RANGE" and ei.value.message
    with pytest.raises(MopError) as ei:
        libmop.Mixture(model, gate_layer=40)
    assert ei.value.name == "MOP_E_RANGE"
    with pytest.raises(ValueError):
        libmop.Mixture(model, gate_act="tanh")
    with pytest.raises(TypeError):
        libmop.Mixture(model, n_expert=3)


def test_batch_building(model, batch):
    assert batch.tokens.dtype == np.int32 and batch.tokens.shape[0] == 2
    assert batch.lengths.tolist() == [len(model.tokenize_example(*e)[0]) for e in EXAMPLES]
    assert batch.tokens.shape[1] == batch.lengths.max()
    for i, (ins, resp) in enumerate(EXAMPLES):
        n = batch.lengths[i]
        assert model.detokenize(batch.tokens[i, :n][batch.loss_mask[i, :n] == 1],
                                special=True) == resp + "<|im_end|>"
        assert not batch.loss_mask[i, n:].any()
    cut = libmop.Batch.from_examples(model, EXAMPLES, max_len=10)
    assert cut.tokens.shape == (2, 10)
    # documented checks before C: dtype -> TypeError, shape -> MopError(MOP_E_SHAPE)
    with pytest.raises(TypeError):
        libmop.Batch(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(MopError) as ei:
        libmop.Batch(np.zeros(5, dtype=np.int32))
    assert ei.value.name == "MOP_E_SHAPE"
    with pytest.raises(MopError) as ei:
        libmop.Batch(np.zeros((2, 5), dtype=np.int32), lengths=[5, 5, 5])
    assert ei.value.name == "MOP_E_SHAPE"
    with pytest.raises(MopError) as ei:
        libmop.Batch(np.zeros((2, 5), dtype=np.int32), loss_mask=np.ones((2, 4), dtype=np.uint8))
    assert ei.value.name == "MOP_E_SHAPE"


def test_forward_backward_and_evaluate(mixture, ctx, batch, model):
    mixture.zero_grad()
    r = mixture.forward_backward(ctx, batch)
    assert r.n_targets == int(batch.loss_mask.sum())
    assert np.isfinite(r.loss) and r.loss == pytest.approx(r.nll_sum / r.n_targets, rel=1e-6)
    g1 = mixture.grads.copy()
    assert np.isfinite(g1).all() and np.abs(g1).sum() > 0
    # gradients accumulate
    mixture.forward_backward(ctx, batch)
    np.testing.assert_allclose(mixture.grads, 2 * g1, rtol=1e-4, atol=1e-6)
    # evaluation of the same parameters
    ev = mixture.evaluate(ctx, batch)
    assert ev.nll_sum.sum() == pytest.approx(r.nll_sum, rel=1e-4)
    assert ev.n_targets.tolist() == batch.loss_mask.sum(axis=1).tolist()
    assert ev.gate_w.shape == (2, K)
    np.testing.assert_allclose(ev.gate_w.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mixture.gate(ctx, batch), ev.gate_w, atol=1e-6)
    # serving form with the base model: equals Context.nll over the targets
    base = libmop.evaluate(ctx, [], batch)
    assert base.gate_w.shape == (2, 0)
    for i in range(2):
        n = batch.lengths[i]
        nll = ctx.nll(batch.tokens[i, :n]).astype(np.float64)
        ref = nll[np.nonzero(batch.loss_mask[i, 1:n])[0]].sum()
        assert base.nll_sum[i] == pytest.approx(ref, rel=1e-3, abs=1e-3)
    mixed = libmop.evaluate(ctx, [mixture, None], batch)
    assert mixed.nll_sum[0] == pytest.approx(ev.nll_sum[0], rel=1e-5)
    assert mixed.nll_sum[1] == pytest.approx(base.nll_sum[1], rel=1e-5)
    with pytest.raises(MopError) as ei:
        libmop.evaluate(ctx, [mixture] * 3, batch)
    assert ei.value.name == "MOP_E_SHAPE"


def test_gradient_finite_difference(mixture, ctx, model):
    """The gradient handed back through the numpy view matches (L(θ+ε) − L(θ−ε))/2ε
    for the expert entry with the largest gradient (10% tolerance: float32 loss)."""
    b = libmop.Batch.from_examples(model, EXAMPLES[:1], max_len=64)
    mixture.zero_grad()
    mixture.forward_backward(ctx, b)
    g = mixture.grads.copy()
    n_exp = K * P * model.info.n_embd
    i = int(np.argmax(np.abs(g[:n_exp])))
    eps = 1e-2
    p0 = float(mixture.params[i])
    mixture.params[i] = p0 + eps
    lp = mixture.forward_backward(ctx, b).loss
    mixture.params[i] = p0 - eps
    lm = mixture.forward_backward(ctx, b).loss
    mixture.params[i] = p0
    fd = (lp - lm) / (2 * eps)
    assert fd == pytest.approx(float(g[i]), rel=0.1, abs=1e-4)


def test_loss_options(model, ctx, batch):
    need()
    with libmop.Mixture(model, n_experts=K, prompt_len=P, gate_hidden=H, seed=3) as m:
        plain = m.forward_backward(ctx, batch).loss
        with pytest.raises(MopError) as ei:
            m.forward_backward(ctx, batch, prox_mu=0.5)
        assert ei.value.name == "MOP_E_STATE"
        m.set_prox_reference()
        # at the reference the proximal term is zero
        assert m.forward_backward(ctx, batch, prox_mu=0.5).loss == pytest.approx(plain, rel=1e-6)
        # move θ: loss grows by (mu/2)·||θ − θ_ref||²
        off = m.tensor_info()[0]
        m.params[off.offset:off.offset + 8] += 0.25
        moved = m.forward_backward(ctx, batch).loss
        prox = m.forward_backward(ctx, batch, prox_mu=0.5).loss
        assert prox - moved == pytest.approx(0.25 * 8 * 0.25 ** 2, rel=1e-3)
        sup = m.forward_backward(ctx, batch, gate_supervision=1.0, gate_only=True)
        assert np.isfinite(sup.loss) and sup.loss > 0
        lb = m.forward_backward(ctx, batch, load_balance=0.1)
        assert lb.loss >= moved - 1e-6


def test_optimizer_first_step_matches_adamw():
    need("mop_optimizer_create", "mop_optimizer_step", "mop_adamw_default_params")
    rng = np.random.default_rng(1)
    n = 1000
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    lr, wd, eps = 1e-2, 0.1, 1e-8
    with libmop.Optimizer(n, lr=lr, weight_decay=wd, clip_norm=0, eps=eps) as opt:
        assert opt.params["beta1"] == pytest.approx(0.9)  # C default kept
        p_ref = p.astype(np.float64)
        # step 1: m̂ = g, v̂ = g², update = lr·(g/(|g|+eps) + wd·p)
        expect = p_ref - lr * (g / (np.abs(g) + eps) + wd * p_ref)
        lr_used, gnorm = opt.step(p, g)
        assert lr_used == pytest.approx(lr)
        assert gnorm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-5)
        np.testing.assert_allclose(p, expect, atol=1e-6)
        # arguments checked before C
        with pytest.raises(TypeError):
            opt.step(p.astype(np.float64), g)
        with pytest.raises(TypeError):
            opt.step(list(p), g)
        ro = p.copy()
        ro.flags.writeable = False
        with pytest.raises(TypeError):
            opt.step(ro, g)
        with pytest.raises(MopError) as ei:
            opt.step(p[:10].copy(), g[:10])
        assert ei.value.name == "MOP_E_SHAPE"
        with pytest.raises(TypeError):
            opt.step()  # not bound to a mixture
        bad = g.copy()
        bad[3] = np.nan
        with pytest.raises(MopError) as ei:
            opt.step(p, bad)
        assert ei.value.name == "MOP_E_INVALID_ARG"
    with libmop.Optimizer(10, lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) as opt:
        lrs = [opt.lr_at(s) for s in range(21)]
        assert lrs[:5] == sorted(lrs[:5]) and max(lrs) == pytest.approx(1.0, rel=1e-6)
        assert lrs[20] == pytest.approx(0.1, rel=1e-4)
    with pytest.raises(MopError) as ei:
        libmop.Optimizer(10, lr=-1.0)
    assert ei.value.name == "MOP_E_INVALID_ARG"


def test_training_loop_lowers_loss(model, ctx, batch):
    need()
    with libmop.Mixture(model, n_experts=2, prompt_len=4, gate_hidden=8, seed=5) as m, \
            libmop.Optimizer(m, lr=5e-2, weight_decay=0.0) as opt:
        first = None
        for step in range(6):
            m.zero_grad()
            r = m.forward_backward(ctx, batch)
            first = r.loss if first is None else first
            opt.step()
        last = m.evaluate(ctx, batch)
        assert last.nll_sum.sum() / last.n_targets.sum() < first


def test_save_load_roundtrip(mixture, model, tmp_path, ctx, batch):
    mixture.params[:5] = [1, 2, 3, 4, 5]
    path = tmp_path / "mix.safetensors"
    mixture.save(path)
    with libmop.Mixture.load(model, path) as m2:
        np.testing.assert_array_equal(m2.params, mixture.params)
        assert m2.config == mixture.config
        assert m2.evaluate(ctx, batch).nll_sum.tolist() == mixture.evaluate(ctx, batch).nll_sum.tolist()
    with pytest.raises(MopError) as ei:
        libmop.Mixture.load(model, tmp_path / "missing.safetensors")
    assert ei.value.name == "MOP_E_IO" and "missing.safetensors" in ei.value.message
    bad = tmp_path / "bad.safetensors"
    data = bytearray(path.read_bytes())
    bad.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(MopError) as ei:
        libmop.Mixture.load(model, bad)
    assert ei.value.name == "MOP_E_FORMAT"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(MopError) as ei:
        libmop.Mixture.load(model, bad)
    assert ei.value.name == "MOP_E_FORMAT"


@pytest.mark.parametrize("mask, private, want", [
    (0o022, False, 0o644), (0o077, False, 0o600), (0o022, True, 0o600), (0o077, True, 0o600)])
def test_save_mode_follows_umask(mixture, model, tmp_path, mask, private, want):
    """A saved mixture is 0666 less the umask, as open() makes it (a daemon of
    another user can read it under umask 022), or 0600 with private=True."""
    need("mop_mixture_save_v2")
    path = tmp_path / "mode.safetensors"
    old = os.umask(mask)
    try:
        mixture.save(path, private=private)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o7777 == want
    with libmop.Mixture.load(model, path) as m2:
        np.testing.assert_array_equal(m2.params, mixture.params)
    assert [p.name for p in tmp_path.iterdir()] == ["mode.safetensors"]


def test_generate_with_mixture(mixture, ctx, model):
    prompt = model.tokenize(model.chat_format([("user", "Say hello.")]), special=True)
    mixture.prepare(ctx)
    a = mixture.generate(ctx, prompt, max_new=6, temperature=0)
    b = ctx.generate(prompt, max_new=6, temperature=0, mixture=mixture)
    assert a.tolist() == b.tolist() and 0 < len(a) <= 6  # int32 arrays (docs/PYTHON.md)
    assert list(ctx.generate_iter(prompt, max_new=6, temperature=0, mixture=mixture)) == a.tolist()


def test_no_leaks_mixture(model):
    need()
    gc.collect()  # earlier tests may leave handles in reference cycles (kept tracebacks)
    live0 = libmop.live_handles()

    def cycle(k):
        for i in range(k):
            m = libmop.Mixture(model, n_experts=2, prompt_len=2, gate_hidden=4, seed=i)
            m.params[0] = 1.0
            with libmop.Optimizer(m, lr=1e-3) as opt:
                opt.step()
            m.close()
    cycle(50)
    rss0 = rss_bytes()
    cycle(1000)
    grown = rss_bytes() - rss0
    assert libmop.live_handles() == live0
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 cycles"


def test_inject_states_give_identical_training(model):
    """Mixture.inject_states + Batch.with_states: the same loss and gradients
    as running layers [0, L_p) again (bit for bit)."""
    import libmop
    with libmop.Context(model, n_ctx=128, n_batch=128, n_threads=2) as ctx, \
            libmop.Mixture(model, n_experts=2, prompt_len=2) as mix:
        ex = [("Define the word cat.", "A small animal."), ("2+2?", "4")]
        b = libmop.Batch.from_examples(model, ex, max_len=64)
        mix.zero_grad()
        r0 = mix.forward_backward(ctx, b)
        g0 = mix.grads.copy()
        states, u = mix.inject_states(ctx, b)
        assert [s.shape[0] for s in states] == list(b.lengths) and u.shape[0] == 2
        mix.zero_grad()
        r1 = mix.forward_backward(ctx, b.with_states(states, u))
        assert r1.loss == r0.loss
        assert np.array_equal(mix.grads, g0)
        with pytest.raises(libmop.MopError):
            b.with_states(states[:1], u)
