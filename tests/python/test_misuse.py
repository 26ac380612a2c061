"""Misuse of the Python bindings that must not reach freed or truncated C
memory (issue 14): closing a handle from a callback of a call that uses it,
closing a Context while a generate_iter() generator is suspended, and Python
ints that do not fit the C argument type.

Handles stay alive for the length of every C call that uses them; close()
during such a call is deferred until the call returns (docs/PYTHON.md,
"Lifetimes"). live_handles() shows when the C handle is really freed, so
these tests fail deterministically on bindings that free too early (which
then read freed memory: heap-use-after-free under ASan, SIGSEGV or garbage in
release builds)."""
import gc

import numpy as np
import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()

PROMPT = "The capital of France is"
TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
        "France. It is named after the engineer Gustave Eiffel, whose company designed "
        "and built the tower from 1887 to 1889.")


def live(kind):
    return libmop.live_handles().get(kind, 0)


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def ids(model):
    return model.tokenize(PROMPT)


def new_ctx(model):
    return libmop.Context(model, n_ctx=128, n_batch=32, n_threads=2)


@pytest.fixture(scope="module")
def expected(model, ids):
    """Greedy reference tokens, without any misuse."""
    with new_ctx(model) as c:
        return c.generate(ids, max_new=6, temperature=0).tolist()


# ---------------------------------------------------------------------------
# close() from a callback of the call that uses the handle


def test_close_context_in_on_token(model, ids, expected):
    c = new_ctx(model)
    n0 = live("mop_ctx")
    seen = []

    def on_token(tok):
        c.close()
        seen.append(live("mop_ctx"))

    out = c.generate(ids, max_new=6, temperature=0, on_token=on_token).tolist()
    assert c.closed
    assert seen == [n0] * len(out)  # the C context lived for the whole call
    assert out == expected
    assert live("mop_ctx") == n0 - 1  # and was freed when it returned
    with pytest.raises(ValueError, match="closed"):
        c.generate(ids)


def test_close_sampler_in_on_token(model, ids, expected):
    s = libmop.Sampler(temperature=0)
    n0 = live("mop_sampler")
    seen = []

    def on_token(tok):
        s.close()
        seen.append(live("mop_sampler"))

    with new_ctx(model) as c:
        out = c.generate(ids, max_new=6, sampler=s, on_token=on_token).tolist()
    assert seen == [n0] * len(out)
    assert out == expected
    assert live("mop_sampler") == n0 - 1
    with pytest.raises(ValueError, match="closed"):
        s.sample(np.zeros(4, dtype=np.float32))


def test_close_mixture_in_on_token(model, ids):
    mix = libmop.Mixture(model, n_experts=2, prompt_len=2, seed=3)
    with new_ctx(model) as c:
        ref = mix.generate(c, ids, max_new=6, temperature=0).tolist()
        n0 = live("mop_mixture")
        seen = []

        def on_token(tok):
            mix.close()
            seen.append(live("mop_mixture"))

        out = c.generate(ids, max_new=6, temperature=0, mixture=mix, on_token=on_token).tolist()
    assert seen == [n0] * len(out)
    assert out == ref
    assert live("mop_mixture") == n0 - 1
    with pytest.raises(ValueError, match="closed"):
        mix.zero_grad()


def test_close_context_in_perplexity_progress(model):
    text = model.tokenize(TEXT)
    with new_ctx(model) as c:
        ref = c.perplexity(text, window=16)
    c = new_ctx(model)
    n0 = live("mop_ctx")
    seen = []

    def progress(done, total):
        c.close()
        seen.append(live("mop_ctx"))

    ppl = c.perplexity(text, window=16, progress=progress)
    assert len(seen) >= 2 and seen == [n0] * len(seen)
    assert ppl == pytest.approx(ref, rel=1e-6)
    assert live("mop_ctx") == n0 - 1


def test_close_model_in_prune_progress(model_path):
    m = libmop.Model(model_path, n_threads=2)
    n0 = live("mop_model")
    seen = []

    def progress(done, total):
        m.close()
        seen.append(live("mop_model"))

    # layer 0 only: 7 weight matrices, each reported through progress
    m.prune(progress=progress, method="magnitude", pattern="nm", n=2, m=4,
            layer_begin=0, layer_end=1, n_threads=2)
    assert len(seen) >= 2 and seen == [n0] * len(seen)
    assert m.closed
    assert live("mop_model") == n0 - 1


# ---------------------------------------------------------------------------
# close() while a generate_iter() generator is suspended


def test_close_context_while_iterator_suspended(model, ids, expected):
    c = new_ctx(model)
    n0 = live("mop_ctx")
    it = c.generate_iter(ids, max_new=6, temperature=0)
    first = next(it)
    c.close()  # the worker thread is still inside mop_generate
    assert c.closed and live("mop_ctx") == n0
    rest = list(it)
    assert [first] + rest == expected
    assert live("mop_ctx") == n0 - 1


def test_closing_suspended_iterator_releases_context(model, ids):
    c = new_ctx(model)
    n0 = live("mop_ctx")
    it = c.generate_iter(ids, max_new=64, temperature=0)
    next(it)
    c.close()
    assert live("mop_ctx") == n0
    it.close()  # stops the worker; the call returns and the handle goes
    assert live("mop_ctx") == n0 - 1


def test_collecting_suspended_iterator_releases_context(model, ids):
    c = new_ctx(model)
    n0 = live("mop_ctx")
    it = c.generate_iter(ids, max_new=64, temperature=0)
    next(it)
    c.close()
    assert live("mop_ctx") == n0
    del it
    gc.collect()
    assert live("mop_ctx") == n0 - 1


def test_iterator_after_close_raises(model, ids):
    c = new_ctx(model)
    it = c.generate_iter(ids, max_new=4, temperature=0)
    c.close()  # before the generator started: nothing holds the handle
    with pytest.raises(ValueError, match="closed"):
        next(it)


# ---------------------------------------------------------------------------
# Python ints outside the C argument type: an error, never silent truncation
# (ctypes keeps the low bits: n_threads=2**40 became 0, Optimizer(-1) asked
# for 2**64 - 1 moments)


def test_out_of_range_ints_in_core(model_path, model, ids):
    with pytest.raises(OverflowError, match=r"n_threads: 1099511627776 is out of range"):
        libmop.Model(model_path, n_threads=2**40)
    with pytest.raises(OverflowError, match="n_threads"):
        libmop.Context(model, n_ctx=64, n_threads=2**40)
    with pytest.raises(OverflowError, match="n_ctx"):
        libmop.Context(model, n_ctx=2**32 + 64)
    with pytest.raises(OverflowError, match="n_batch"):
        libmop.Context(model, n_ctx=64, n_batch=-2**31 - 1)
    with pytest.raises(TypeError, match="n_ctx: expected an integer"):
        libmop.Context(model, n_ctx=64.5)  # not truncated to 64
    with pytest.raises(OverflowError, match="Sampler.top_k"):
        libmop.Sampler(top_k=2**32 + 1)
    with pytest.raises(OverflowError, match="Sampler.seed"):
        libmop.Sampler(seed=-1)
    with pytest.raises(OverflowError, match="which"):
        model.special_token(2**32)  # would have been 0 = BOS
    with new_ctx(model) as c:
        with pytest.raises(OverflowError, match="max_new"):
            c.generate(ids, max_new=2**32 + 1, temperature=0)  # would have been 1
        with pytest.raises(OverflowError, match="window"):
            c.perplexity(ids, window=2**32)  # would have been 0 = n_ctx
        assert c.generate(ids, max_new=2, temperature=0).size  # still usable


def test_out_of_range_ints_in_mixture_and_optimizer(model):
    with pytest.raises(OverflowError, match=r"n_params: -1 is out of range \(size_t\)"):
        libmop.Optimizer(-1)
    with pytest.raises(OverflowError, match="n_params"):
        libmop.Optimizer(2**64)
    with pytest.raises(OverflowError, match="Optimizer.total_steps"):
        libmop.Optimizer(8, total_steps=2**31)
    with pytest.raises(OverflowError, match="Mixture.n_experts"):
        libmop.Mixture(model, n_experts=2**32 + 2)  # would have been 2
    with pytest.raises(OverflowError, match="Mixture.gate_act"):
        libmop.Mixture(model, n_experts=2, gate_act=2**32)
    with libmop.Optimizer(8) as opt:
        with pytest.raises(OverflowError, match="step"):
            opt.lr_at(2**63)
        assert opt.lr_at(0) >= 0
    with new_ctx(model):  # were the check missing, C would refuse (MOP_E_STATE), not prune
        with pytest.raises(OverflowError, match="prune.n_threads"):
            model.prune(n_threads=2**40)


def test_out_of_range_ints_in_fed():
    with pytest.raises(OverflowError, match="round"):
        libmop.Update(round=2**63)
    with pytest.raises(OverflowError, match="client_id"):
        libmop.Update(client_id=-1)
    with pytest.raises(OverflowError, match="n_clients"):
        libmop.partition_iid(10, 2**32 + 2)
    with pytest.raises(OverflowError, match="seed"):
        libmop.partition_skewed(np.zeros(4, dtype=np.int32), 2, seed=2**64)
    with pytest.raises(OverflowError, match="n: -1"):
        libmop.partition_iid(-1, 2)
    with pytest.raises(OverflowError, match="steps"):
        libmop.rdp_epsilon(1.0, 0.01, 2**63, 1e-5)
    with pytest.raises(OverflowError, match="index"):
        libmop.SecAggClient(2**32, n_clients=2, length=4)
    with pytest.raises(OverflowError, match="secagg.length"):
        libmop.SecAggServer(n_clients=2, length=2**63)
