"""Serving with mixtures, on the real model (SmolLM2-135M): a mixture attached
to a context (Context.set_mixture / mixture / gate_weights), one prepared
mixture shared by four Python threads (ctypes drops the GIL during C calls,
so they run at once), and the batched Decoder across mixtures.

Tolerances: an attached context runs the same C path as
Mixture.generate (tokens compared exactly); whole-sequence scores against
mop_mixture_evaluate and the Decoder against one context per sequence are
compared to 1e-4 relative (float rounding of grouped products).
"""
import threading

import numpy as np
import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()
MopError = libmop.MopError

PROMPTS = ["What is the capital of France?", "Name a color.", "Write a haiku about rain.",
           "2 + 2 ="]


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def mixtures(model):
    """Two mixtures with input-dependent gates (random gate weights)."""
    rng = np.random.default_rng(5)
    out = []
    for seed, combine in [(3, "attention_bias"), (4, "weighted_sum")]:
        m = libmop.Mixture(model, n_experts=4, prompt_len=4, gate_hidden=16, seed=seed,
                           combine=combine)
        t = m.tensors()
        t["gate.w2"][...] = rng.normal(0, 2.0, t["gate.w2"].shape)
        t["gate.b1"][...] = rng.normal(0, 0.5, t["gate.b1"].shape)
        out.append(m)
    yield out
    for m in out:
        m.close()


def prompt_ids(model, text):
    return model.tokenize(text, add_bos=True)


def test_set_mixture_decode_nll_generate(model, mixtures):
    mx = mixtures[0]
    ids = prompt_ids(model, PROMPTS[0])
    with libmop.Context(model, n_ctx=128, n_batch=8, n_threads=2) as c, \
            libmop.Context(model, n_ctx=128, n_batch=64, n_threads=2) as ref:
        assert c.mixture is None
        c.set_mixture(mx)
        assert c.mixture is mx
        # generation through the attached context equals Mixture.generate
        a = c.generate(ids, 8, temperature=0)
        b = mx.generate(ref, ids, 8, temperature=0)
        assert a.tolist() == b.tolist()
        w = c.gate_weights()
        assert w.shape == (4,) and abs(float(w.sum()) - 1.0) < 1e-5
        # whole-sequence NLL with the mixture equals mop_mixture_evaluate (no mask)
        nll, total = c.nll(ids, return_total=True)
        batch = libmop.Batch.from_sequences([ids])
        ev = libmop.evaluate(ref, [mx], batch)
        assert abs(total - float(ev.nll_sum[0])) <= 1e-4 * abs(total)
        # decode logits of all rows score the same NLL
        c.reset()
        lg = c.decode(ids, all_logits=True)
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        step = lse[:-1] - lg[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(step, nll, rtol=1e-4, atol=1e-4)
        # detached: the base model again, and no gate
        c.set_mixture(None)
        assert c.mixture is None
        base = c.nll(ids, return_total=True)[1]
        assert abs(base - ref.nll(ids, return_total=True)[1]) <= 1e-4 * abs(base)
        with pytest.raises(MopError) as e:
            c.gate_weights()
        assert e.value.name == "MOP_E_STATE"


def test_set_mixture_errors(model, model_path, mixtures):
    with libmop.Model(model_path, n_threads=1) as other, \
            libmop.Mixture(other, n_experts=2, prompt_len=2, gate_hidden=4) as foreign, \
            libmop.Context(model, n_ctx=64, n_batch=16, n_threads=1) as c:
        with pytest.raises(MopError) as e:
            c.set_mixture(foreign)
        assert e.value.name == "MOP_E_INVALID_ARG" and "another model" in str(e.value)
        with libmop.Mixture(model, n_experts=2, prompt_len=2, gate_mode="oracle") as oracle:
            with pytest.raises(MopError) as e:
                c.set_mixture(oracle)
            assert e.value.name == "MOP_E_UNSUPPORTED"
        assert c.mixture is None


def test_attached_mixture_outlives_close(model):
    """The context keeps the C mixture alive while attached."""
    ids = prompt_ids(model, PROMPTS[1])
    with libmop.Context(model, n_ctx=64, n_batch=32, n_threads=1) as c:
        m = libmop.Mixture(model, n_experts=2, prompt_len=2, gate_hidden=4, seed=9)
        want = m.generate(c, ids, 4, temperature=0)
        c.set_mixture(m)
        m.close()
        del m
        assert c.generate(ids, 4, temperature=0).tolist() == want.tolist()
        c.set_mixture(None)


def test_four_threads_share_one_mixture(model, mixtures):
    """4 threads x 1 shared prepared mixture x greedy generation on the real
    model: every reply equals the sequential one (issue 12: 8 of 16 differed)."""
    for mx in mixtures:
        prompts = [prompt_ids(model, p) for p in PROMPTS]
        with libmop.Context(model, n_ctx=128, n_batch=16, n_threads=1) as c:
            mx.prepare(c)
            want = [mx.generate(c, p, 8, temperature=0).tolist() for p in prompts]
        got = {}
        errors = []

        def work(t):
            try:
                with libmop.Context(model, n_ctx=128, n_batch=16, n_threads=1) as c:
                    c.set_mixture(mx)
                    for j in range(len(prompts)):
                        i = (j + t) % len(prompts)
                        got[(t, i)] = c.generate(prompts[i], 8, temperature=0).tolist()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        differ = [(t, i) for (t, i), r in got.items() if r != want[i]]
        assert len(got) == 16 and not differ, differ


def test_decoder_matches_single_contexts(model, mixtures):
    """Decoder: 4 sequences (two mixtures, base, a mixture again), one joining
    late; each step's logits equal one context per sequence."""
    mxs = [mixtures[0], mixtures[1], None, mixtures[0]]
    prompts = [prompt_ids(model, p) for p in PROMPTS]
    cont = [[28, 253, 2103], [314, 29], [1116, 28, 5, 42], [11]]
    ref = []
    for mx, p, cn in zip(mxs, prompts, cont):
        with libmop.Context(model, n_ctx=128, n_batch=32, n_threads=2) as c:
            c.set_mixture(mx)
            rows = [c.decode(p)]
            rows += [c.decode([t]) for t in cn]
            ref.append(rows)
    with libmop.Decoder(model, n_seq_max=4, n_ctx=128, n_batch=32, n_threads=2) as dec:
        ids = {}
        fed = {}
        for step in range(8):
            for i in range(4):
                if i not in ids and step >= (2 if i == 3 else 0):
                    ids[i] = dec.add(mxs[i])
                    fed[i] = 0
            inputs = {}
            for i, s in ids.items():
                if fed[i] > len(cont[i]):
                    continue
                inputs[s] = prompts[i] if fed[i] == 0 else [cont[i][fed[i] - 1]]
            if not inputs:
                break
            out = dec.step(inputs)
            for i, s in ids.items():
                if s in out:
                    np.testing.assert_allclose(out[s], ref[i][fed[i]], rtol=1e-4, atol=1e-4)
                    assert dec.n_past(s) == len(prompts[i]) + fed[i]
                    fed[i] += 1
            for i, s in list(ids.items()):
                if fed[i] > len(cont[i]) and s in out:
                    dec.remove(s)
        assert all(fed[i] == len(cont[i]) + 1 for i in range(4))
        with pytest.raises(MopError) as e:
            dec.step({99: [1]})
        assert e.value.name == "MOP_E_INVALID_ARG"
        with pytest.raises(MopError) as e:
            dec.logits(99)
        assert e.value.name == "MOP_E_INVALID_ARG"
        assert dec.n_past(99) == -1


def test_cli_generate_mixture(model, mixtures, build_dir, model_path, tmp_path):
    """`mop generate --mixture FILE` prints the reply Mixture.generate gives
    (greedy, raw prompt with BOS as the CLI tokenizes it); --help names it."""
    import subprocess
    mop = build_dir / "src" / "cli" / "mop"
    if not mop.exists():
        pytest.skip(f"{mop} not built")
    path = tmp_path / "mix.safetensors"
    mixtures[0].save(path)
    with libmop.Context(model, n_ctx=64, n_batch=64, n_threads=2) as c:
        loaded = libmop.Mixture.load(model, path)
        ids = prompt_ids(model, PROMPTS[3])
        want = model.detokenize(loaded.generate(c, ids, 6, temperature=0))
        loaded.close()
    r = subprocess.run([str(mop), "generate", model_path, "--mixture", str(path), "--prompt",
                        PROMPTS[3], "-n", "6", "--temp", "0", "--threads", "2"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode("utf-8") == want + "\n"
    r = subprocess.run([str(mop), "generate", "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"--mixture" in r.stdout
    r = subprocess.run([str(mop), "generate", model_path, "--mixture", str(tmp_path / "none"),
                        "--prompt", "x"], capture_output=True, timeout=300)
    assert r.returncode == 1 and b"none" in r.stderr
