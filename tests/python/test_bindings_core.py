"""Python bindings (bindings/python/libmop) over mop_core.h, on the real SmolLM2 model.

The package under test is the source tree (bindings/python is put first on
sys.path); the library is the one conftest would pick (LIBMOP_LIBRARY, else
LIBMOP_BUILD_DIR/libmop.so, else build/libmop.so).

References are independent of the code under test where possible: NLL from
the decoded logits through a float64 log-softmax in numpy, greedy generation
re-done with decode + argmax, sampler frequencies against the softmax.
"""
import gc
import math
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "bindings" / "python"


def import_libmop():
    """Import the in-tree package against the test library (module-level skip if unbuilt)."""
    lib = os.environ.get("LIBMOP_LIBRARY") or str(
        pathlib.Path(os.environ.get("LIBMOP_BUILD_DIR", str(ROOT / "build"))) / "libmop.so")
    if not os.path.exists(lib):
        pytest.skip(f"libmop.so not built ({lib})", allow_module_level=True)
    if str(PKG) not in sys.path:
        sys.path.insert(0, str(PKG))
    old = os.environ.get("LIBMOP_LIBRARY")
    os.environ["LIBMOP_LIBRARY"] = lib
    try:
        import libmop
    finally:
        if old is None:
            del os.environ["LIBMOP_LIBRARY"]
        else:
            os.environ["LIBMOP_LIBRARY"] = old
    return libmop


libmop = import_libmop()
MopError = libmop.MopError

TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, museums such as "
        "the Louvre, and its cafés. Millions of tourists visit the city every year.")


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def ctx(model):
    with libmop.Context(model, n_ctx=256, n_batch=64, n_threads=2) as c:
        yield c


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def log_softmax64(logits):
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------
# package, version, loading


def test_package_version_matches_header():
    hdr = (ROOT / "include/libmop/mop_version.h").read_text()
    parts = [re.search(rf"#define MOP_VERSION_{k} (\d+)", hdr).group(1)
             for k in ("MAJOR", "MINOR", "PATCH")]
    header_version = ".".join(parts)
    assert libmop.__version__ == header_version
    py = (PKG / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', py, re.M).group(1) == header_version
    # the loaded library has the same major (checked at import too)
    assert libmop.version_number() // 10000 == int(parts[0])
    assert libmop.version().split(".")[0] == parts[0]


def _run_import(tmp_path, env_extra, pkg_dir=None, code="import libmop; print(libmop.library_path)"):
    """Import a copy of the package in a subprocess with a controlled environment."""
    if pkg_dir is None:
        pkg_dir = tmp_path / "pkg"
        if not pkg_dir.exists():
            shutil.copytree(PKG / "libmop", pkg_dir / "libmop")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LIBMOP_LIBRARY", "LIBMOP_BUILD_DIR", "PKG_CONFIG_PATH")}
    empty = tmp_path / "no-pc"
    empty.mkdir(exist_ok=True)
    env["PKG_CONFIG_LIBDIR"] = str(empty)  # no system libmop.pc
    env["PYTHONPATH"] = str(pkg_dir)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_loading_order_and_error(tmp_path, libmop_path):
    real = pathlib.Path(libmop_path).resolve()
    # nothing found: ImportError listing every place tried
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(tmp_path / "nobuild")})
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "Tried, in order" in r.stderr
    assert "LIBMOP_BUILD_DIR" in r.stderr and str(tmp_path / "nobuild") in r.stderr
    assert "build tree" in r.stderr
    # ... every place: the bundled copy, pkg-config and the system loader too
    assert "bundled: " + str(tmp_path / "pkg" / "libmop" / "libmop.so") in r.stderr
    assert "pkg-config" in r.stderr and "system loader: libmop.so.0" in r.stderr
    # LIBMOP_BUILD_DIR
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(real.parent)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(real.parent / "libmop.so")
    # pkg-config beats the build tree
    libdir = tmp_path / "prefix" / "lib"
    libdir.mkdir(parents=True)
    (libdir / "libmop.so.0").symlink_to(real)
    pc = tmp_path / "pc"
    pc.mkdir()
    (pc / "libmop.pc").write_text(f"libdir={libdir}\nName: libmop\nDescription: t\nVersion: 0\n")
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(real.parent), "PKG_CONFIG_LIBDIR": str(pc)})
    if "pkg-config not runnable" in r.stderr + r.stdout or shutil.which("pkg-config") is None:
        pytest.skip("pkg-config not installed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(libdir / "libmop.so.0")
    # a bundled libmop.so (what the wheel holds) beats pkg-config and the build tree
    bundled = tmp_path / "pkg-bundled"
    shutil.copytree(PKG / "libmop", bundled / "libmop")
    shutil.copyfile(real, bundled / "libmop" / "libmop.so")
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(real.parent), "PKG_CONFIG_LIBDIR": str(pc)},
                    pkg_dir=bundled)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(bundled / "libmop" / "libmop.so")
    # LIBMOP_LIBRARY beats everything, and a bad one is an error (no silent fallback)
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(real.parent), "PKG_CONFIG_LIBDIR": str(pc),
                               "LIBMOP_LIBRARY": str(real)})
    assert r.stdout.strip() == str(real)
    r = _run_import(tmp_path, {"LIBMOP_BUILD_DIR": str(real.parent),
                               "LIBMOP_LIBRARY": str(tmp_path / "missing.so")})
    assert r.returncode != 0 and "LIBMOP_LIBRARY: " + str(tmp_path / "missing.so") in r.stderr


def test_major_version_mismatch_refused(tmp_path, libmop_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(PKG / "libmop", pkg / "libmop")
    src = (pkg / "libmop" / "_lib.py").read_text()
    (pkg / "libmop" / "_lib.py").write_text(src.replace('VERSION = "', 'VERSION = "9', 1))
    r = _run_import(tmp_path, {"LIBMOP_LIBRARY": str(pathlib.Path(libmop_path).resolve())}, pkg_dir=pkg)
    assert r.returncode != 0 and "major versions must match" in r.stderr


def test_status_helpers_and_error_class():
    assert libmop.status_name(0) == "MOP_OK"
    assert libmop.status_name(-2) == "MOP_E_IO"
    assert libmop.status_str(-3) == "malformed or corrupt data"
    e = MopError("MOP_E_RANGE", "too big")
    assert (e.status, e.name, e.message) == (-8, "MOP_E_RANGE", "too big")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.status, e2.name, e2.message) == (-8, "MOP_E_RANGE", "too big")
    assert "MOP_E_RANGE" in str(e) and "too big" in str(e)


# ---------------------------------------------------------------------------
# model


def test_model_info(model, model_path):
    i = model.info
    assert (i.arch, i.file_type) == ("llama", "gguf")
    assert (i.n_layer, i.n_embd, i.n_ff, i.n_head, i.n_head_kv, i.head_dim, i.n_vocab) == \
        (30, 576, 1536, 9, 3, 64, 49152)
    assert i.rope_theta == 1e5 and i.rope_scale == 1.0
    assert i.tied_embeddings is True
    assert i.file_bytes == os.path.getsize(model_path)
    assert i.n_ctx_train == 8192
    # every weight dequantized to F32
    assert i.weight_bytes >= 4 * i.n_params * 0.99
    assert "llama" in repr(model)


def test_model_load_progress(model_path):
    calls = []
    live = libmop.live_handles().get("mop_model", 0)
    with libmop.Model(model_path, n_threads=2, use_mmap=False,
                      progress=lambda d, t: calls.append((d, t))) as m:
        assert m.info.n_layer == 30
    assert len(calls) == 272 and calls[-1] == (272, 272)  # one unit per tensor
    with pytest.raises(MopError) as ei:
        libmop.Model(model_path, n_threads=2, progress=lambda d, t: d >= 10)
    assert ei.value.name == "MOP_E_CANCELLED"
    assert libmop.live_handles().get("mop_model", 0) == live  # nothing left behind


def test_model_tensors(model):
    ts = model.tensors()
    assert len(ts) == 30 * 9 + 2  # 9 per block + token_embd + output_norm (tied head)
    by = {t.name: t for t in ts}
    assert by["token_embd.weight"].shape == (49152, 576) and by["token_embd.weight"].file_type == "Q8_0"
    assert by["blk.0.attn_q.weight"].shape == (576, 576) and by["blk.0.attn_q.weight"].file_type == "Q4_1"
    assert by["blk.7.attn_k.weight"].shape == (192, 576)
    assert by["blk.29.ffn_down.weight"].shape == (576, 1536)
    assert by["output_norm.weight"].file_type == "F32"
    # tied embeddings counted once: the file's tensors add up to n_params
    assert sum(int(np.prod(t.shape)) for t in ts) == model.info.n_params


def test_tokenize_roundtrip(model):
    ids = model.tokenize("The capital of France is")
    assert ids.dtype == np.int32 and ids.tolist() == [504, 3575, 282, 4649, 314]
    for s in ["", "Hello world", TEXT, "café naïve 日本語 😀", "  spaces\n\ttabs  "]:
        assert model.detokenize(model.tokenize(s)) == s
    long = "ab " * 3000  # larger than the first buffer guess after merges? exercise growth
    assert model.detokenize(model.tokenize(long)) == long
    assert model.tokenize(b"bytes in").tolist() == model.tokenize("bytes in").tolist()
    # control tokens only with special=True
    im = model.tokenize("<|im_start|>", special=True)
    assert len(im) == 1
    assert len(model.tokenize("<|im_start|>")) > 1
    assert model.detokenize(im) == "" and model.detokenize(im, special=True) == "<|im_start|>"
    with_bos = model.tokenize("Hi", add_bos=True).tolist()
    assert with_bos in (model.tokenize("Hi").tolist(), [model.bos] + model.tokenize("Hi").tolist())


def test_special_tokens(model):
    assert model.special_token("bos") == model.bos == 1
    assert model.special_token("eos") == model.eos == 2
    assert model.special_token("EOT") == model.eot == 2
    assert model.special_token(1) == 2
    assert model.detokenize([model.eot], special=True) == "<|im_end|>"
    with pytest.raises(ValueError):
        model.special_token("nope")


def test_eog_tokens_match_gguf_metadata(model, model_path):
    """The end-of-generation set (issue 14, item 2) is what llama.cpp stops on
    for SmolLM2, {0, 2, 4}, and what the GGUF metadata gives when read here
    with the gguf package: EOS (and EOT/EOM when present), the control tokens
    that end a turn or a text ("<|im_end|>", which the chat template closes
    each turn with, and "<|endoftext|>"), and the repository marker of the
    code-pretraining vocabulary ("<reponame>")."""
    eog = model.eog_tokens
    assert eog.dtype == np.int32 and eog.tolist() == [0, 2, 4]
    eog = eog.tolist()
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(model_path)

    def scalar(key):
        f = r.fields.get(key)
        return None if f is None else int(f.parts[f.data[0]][0])

    toks = r.fields["tokenizer.ggml.tokens"]
    types = r.fields["tokenizer.ggml.token_type"]
    text = [bytes(toks.parts[i]).decode() for i in toks.data]
    ttype = [int(types.parts[i][0]) for i in types.data]
    template = bytes(r.fields["tokenizer.chat_template"].parts[-1]).decode()
    want = {scalar("tokenizer.ggml.eos_token_id")}
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if scalar(key) is not None:
            want.add(scalar(key))
    ends = {"<|endoftext|>", "<reponame>"}
    assert "+ '<|im_end|>'" in template  # the end-of-turn marker of each message
    ends.add("<|im_end|>")
    want |= {i for i, t in enumerate(text) if t in ends and ttype[i] == 3}  # 3: control
    assert sorted(want) == eog
    assert [model.is_eog(t) for t in range(6)] == [True, False, True, False, True, False]
    assert not model.is_eog(-1) and not model.is_eog(10 ** 6)
    assert model.detokenize(eog, special=True) == "<|endoftext|><|im_end|><reponame>"


def test_chat_format(model):
    sys_default = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n")
    s = model.chat_format([{"role": "user", "content": "hi"}])
    assert s == sys_default + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    s = model.chat_format([("system", "Be brief."), ("user", "hi"), ("assistant", "hello")],
                          add_assistant_prompt=False)
    assert s == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                 "<|im_start|>assistant\nhello<|im_end|>\n")
    big = "x" * 5000
    assert big in model.chat_format([("user", big)])


def test_tokenize_example(model):
    toks, mask = model.tokenize_example("What is 2+2?", "4")
    assert toks.dtype == np.int32 and mask.dtype == np.uint8 and toks.shape == mask.shape
    # the targets are the response and the closing end-of-turn token
    assert model.detokenize(toks[mask == 1], special=True) == "4<|im_end|>"
    assert "What is 2+2?" in model.detokenize(toks[mask == 0], special=True)


# ---------------------------------------------------------------------------
# context


def test_decode_logits_match_nll(ctx, model):
    ids = model.tokenize(TEXT)
    n = len(ids)
    ctx.reset()
    logits = ctx.decode(ids, all_logits=True)
    assert logits.shape == (n, 49152) and logits.dtype == np.float32
    assert ctx.n_past == n
    assert np.isfinite(logits).all()
    ref = -log_softmax64(logits[:-1])[np.arange(n - 1), ids[1:]]
    nll, total = ctx.nll(ids, return_total=True)
    assert nll.shape == (n - 1,)
    np.testing.assert_allclose(nll, ref, atol=2e-3, rtol=0)  # float32 log-softmax in C
    assert abs(total - ref.sum()) < 2e-3 * n
    # LOGITS_LAST returns the last row of the same computation
    ctx.reset()
    last = ctx.decode(ids)
    assert last.shape == (49152,)
    np.testing.assert_allclose(last, logits[-1], atol=1e-4)
    # incremental: prefill n-1, then one token through the matrix-vector path
    ctx.reset()
    ctx.decode(ids[:-1])
    step = ctx.decode(ids[-1:])
    assert ctx.n_past == n
    np.testing.assert_allclose(step, logits[-1], atol=2e-3 * np.abs(logits[-1]).max())
    # zero-copy view of the same numbers, read-only
    v = ctx.logits(copy=False)
    assert v.shape == (1, 49152) and not v.flags.writeable
    np.testing.assert_array_equal(v[0], step)
    ctx.reset()
    assert ctx.n_past == 0


def test_perplexity(ctx, model):
    ids = model.tokenize(TEXT)
    n = len(ids)
    total = float(ctx.nll(ids).astype(np.float64).sum())
    assert ctx.perplexity(ids) == pytest.approx(math.exp(total / (n - 1)), rel=1e-5)
    # three windows of w tokens, each from an empty cache, first token context only
    w = n // 3
    ids3 = ids[:3 * w]
    ref = sum(float(ctx.nll(ids3[k * w:(k + 1) * w]).astype(np.float64).sum()) for k in range(3))
    calls = []
    ppl = ctx.perplexity(ids3, window=w, progress=lambda d, t: calls.append((d, t)))
    assert ppl == pytest.approx(math.exp(ref / (3 * (w - 1))), rel=1e-5)
    assert calls == [(1, 3), (2, 3), (3, 3)]  # once per window
    # cancelling from the callback; an exception in the callback propagates
    with pytest.raises(MopError) as ei:
        ctx.perplexity(ids3, window=w, progress=lambda d, t: True)
    assert ei.value.name == "MOP_E_CANCELLED"

    def boom(d, t):
        raise KeyError("from callback")
    with pytest.raises(KeyError):
        ctx.perplexity(ids3, window=w, progress=boom)
    with pytest.raises(MopError) as ei:
        ctx.perplexity(ids[:1])
    assert ei.value.name == "MOP_E_INVALID_ARG"


def greedy_reference(ctx, prompt, max_new, stop):
    ctx.reset()
    out = []
    logits = ctx.decode(prompt)
    for _ in range(max_new):
        tok = int(np.argmax(logits))
        if tok in stop:
            break
        out.append(tok)
        logits = ctx.decode([tok])
    return out


def test_generate_greedy(ctx, model):
    prompt = model.tokenize(model.chat_format([("user", "What is the capital of France?")]),
                            special=True)
    a = ctx.generate(prompt, max_new=12, temperature=0)
    assert isinstance(a, np.ndarray) and a.dtype == np.int32   # token ids: int32 arrays
    a = a.tolist()
    b = ctx.generate(prompt.tolist(), max_new=12, temperature=0).tolist()
    assert a == b and 0 < len(a) <= 12
    assert a == greedy_reference(ctx, prompt, 12, {model.eos, model.eot})
    assert "Paris" in model.detokenize(a)
    # streaming form gives the same tokens; stopping early is clean
    assert list(ctx.generate_iter(prompt, max_new=12, temperature=0)) == a
    it = ctx.generate_iter(prompt, max_new=12, temperature=0)
    first = [next(it), next(it)]
    it.close()
    assert first == a[:2]
    # callback stop after 3 tokens; exception propagates
    seen = []
    out = ctx.generate(prompt, max_new=12, temperature=0,
                       on_token=lambda t: seen.append(t) or len(seen) == 3)
    assert out.tolist() == seen == a[:3]

    def boom(t):
        raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        ctx.generate(prompt, max_new=12, temperature=0, on_token=boom)
    # the context is usable afterwards
    assert ctx.generate(prompt, max_new=12, temperature=0).tolist() == a


def test_generate_sampling_options(ctx, model):
    prompt = model.tokenize("Once upon a time")
    s1 = ctx.generate(prompt, max_new=16, temperature=1.0, top_k=0, top_p=1.0, seed=7).tolist()
    s2 = ctx.generate(prompt, max_new=16, temperature=1.0, top_k=0, top_p=1.0, seed=7).tolist()
    assert s1 == s2  # same seed, same tokens
    # top_k=1 is greedy whatever the temperature
    assert ctx.generate(prompt, max_new=8, temperature=1.5, top_k=1, seed=3).tolist() == \
        ctx.generate(prompt, max_new=8, temperature=0).tolist()
    # a Sampler object keeps its random state across calls
    with libmop.Sampler(temperature=1.0, seed=7, top_k=0, top_p=1.0) as s:
        assert ctx.generate(prompt, max_new=16, sampler=s).tolist() == s1
        again = ctx.generate(prompt, max_new=16, sampler=s)
    seeds = {tuple(ctx.generate(prompt, max_new=16, temperature=1.0, top_k=0, top_p=1.0, seed=k))
             for k in range(4)}
    assert len(seeds) > 1 and isinstance(again, np.ndarray)


def test_sampler():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    with libmop.Sampler(temperature=0) as s:
        assert s.sample(np.array([0.1, 3.0, -1.0])) == 1  # float64 converted
    # frequencies match the softmax: 4000 draws, 3-sigma bound 3*sqrt(.25/4000) = 0.024
    with libmop.Sampler(temperature=1.0, top_k=0, top_p=1.0, seed=123) as s:
        draws = np.array([s.sample(logits) for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.025)
    # top_k=2 removes token 2 and renormalises: 0.625 / 0.375
    with libmop.Sampler(temperature=1.0, top_k=2, top_p=1.0, seed=5) as s:
        draws = np.array([s.sample(logits) for _ in range(4000)])
    assert (draws != 2).all()
    assert abs((draws == 0).mean() - 0.625) < 0.025
    # top_p=0.5 keeps only the most likely token (mass 0.5 >= 0.5)
    with libmop.Sampler(temperature=1.0, top_k=0, top_p=0.5, seed=5) as s:
        assert {s.sample(logits) for _ in range(200)} == {0}
    # same seed, same stream
    a = libmop.Sampler(temperature=1.0, seed=9)
    b = libmop.Sampler(temperature=1.0, seed=9)
    assert [a.sample(logits) for _ in range(50)] == [b.sample(logits) for _ in range(50)]
    assert a.params["seed"] == 9 and a.params["top_k"] == 40  # C default kept
    a.close(), b.close()
    # invalid parameters are rejected by C
    for kw in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)):
        with pytest.raises(MopError) as ei:
            libmop.Sampler(**kw)
        assert ei.value.name == "MOP_E_INVALID_ARG" and ei.value.message
    with pytest.raises(MopError) as ei:
        libmop.Sampler(temperature=1.0).sample(np.array([0.0, np.nan], dtype=np.float32))
    assert ei.value.name == "MOP_E_INVALID_ARG"


# ---------------------------------------------------------------------------
# errors


def test_error_nonexistent_path(tmp_path):
    p = tmp_path / "does-not-exist.gguf"
    with pytest.raises(MopError) as ei:
        libmop.Model(p)
    e = ei.value
    assert (e.name, e.status) == ("MOP_E_IO", -2)
    assert str(p) in e.message and str(p) in str(e)
    assert libmop.last_error() == e.message


def test_error_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MopError) as ei:
        libmop.Model(garbage)
    assert ei.value.name == "MOP_E_FORMAT"
    bad_header = tmp_path / "bad-header.gguf"
    bad_header.write_bytes(b"GGUF" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MopError) as ei:
        libmop.Model(bad_header)
    assert ei.value.name == "MOP_E_FORMAT" and str(bad_header) in ei.value.message


def test_error_truncated_model(tmp_path, model_path):
    cut = tmp_path / "cut.gguf"
    with open(model_path, "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(MopError) as ei:
        libmop.Model(cut)
    assert ei.value.name == "MOP_E_FORMAT"


def test_wrong_shapes_and_dtypes(ctx, model):
    """Documented behaviour: non-integer token arrays -> TypeError; wrong number
    of dimensions or an empty decode -> MopError(MOP_E_SHAPE), both raised
    before C is called; out-of-range values -> MopError from C."""
    with pytest.raises(TypeError):
        ctx.decode(np.array([1.5, 2.0]))
    with pytest.raises(TypeError):
        ctx.nll(["a", "b"])
    with pytest.raises(MopError) as ei:
        ctx.decode(np.array([[1, 2], [3, 4]]))
    assert ei.value.name == "MOP_E_SHAPE"
    with pytest.raises(MopError) as ei:
        ctx.decode([])
    assert ei.value.name == "MOP_E_SHAPE"
    with pytest.raises(OverflowError):
        ctx.decode(np.array([2**40]))
    with pytest.raises(MopError) as ei:
        ctx.decode([1, 49152])
    assert ei.value.name == "MOP_E_INVALID_ARG" and "49152" in ei.value.message
    with pytest.raises(MopError) as ei:
        model.detokenize([-5])
    assert ei.value.name == "MOP_E_INVALID_ARG"
    with pytest.raises(TypeError):
        libmop.Sampler(temperature=0).sample(np.array(["x"]))
    with pytest.raises(MopError) as ei:
        libmop.Sampler(temperature=0).sample(np.zeros((2, 3), dtype=np.float32))
    assert ei.value.name == "MOP_E_SHAPE"
    # cache overflow: nothing is run
    ctx.reset()
    with pytest.raises(MopError) as ei:
        ctx.decode(np.ones(ctx.n_ctx + 1, dtype=np.int32))
    assert ei.value.name == "MOP_E_RANGE" and ctx.n_past == 0
    with pytest.raises(MopError) as ei:
        libmop.Context(model, n_ctx=0)
    assert ei.value.name == "MOP_E_RANGE"
    with pytest.raises(TypeError):
        libmop.Sampler(temprature=0.5)  # typo caught, not ignored
    with pytest.raises(ValueError):
        libmop.Model("bad\0path")


def test_log_callback(tmp_path):
    lines = []
    libmop.set_log_callback(lambda level, msg: lines.append((level, msg)))
    try:
        with pytest.raises(MopError):
            libmop.Model(tmp_path / "nothing.gguf")
    finally:
        libmop.set_log_callback(None)
    assert any("MOP_E_IO" in m for _, m in lines)
    assert all(isinstance(lv, int) and 0 <= lv <= 3 for lv, _ in lines)
    n = len(lines)
    with pytest.raises(MopError):
        libmop.Model(tmp_path / "nothing.gguf")
    assert len(lines) == n  # silenced again


# ---------------------------------------------------------------------------
# lifetimes


def test_free_order_and_closed_objects(model_path):
    m = libmop.Model(model_path, n_threads=2)
    c = libmop.Context(m, n_ctx=64, n_batch=16, n_threads=2)
    before = libmop.live_handles()["mop_model"]
    m.close()  # the context keeps its own reference on the C model
    assert libmop.live_handles()["mop_model"] == before - 1
    assert m.closed
    logits = c.decode([504, 3575, 282])
    assert np.isfinite(logits).all()
    with pytest.raises(ValueError, match="closed"):
        m.tokenize("x")
    c.close()
    c.close()  # harmless
    with pytest.raises(ValueError, match="closed"):
        c.decode([1])
    # garbage collection frees too
    with libmop.Model(model_path, n_threads=2) as m2:
        n_ctx = libmop.live_handles()["mop_ctx"]
        c2 = libmop.Context(m2, n_ctx=64, n_batch=16, n_threads=1)
        assert libmop.live_handles()["mop_ctx"] == n_ctx + 1
        del c2
        assert libmop.live_handles()["mop_ctx"] == n_ctx


def test_no_leaks_context_sampler(model):
    def cycle(k):
        for i in range(k):
            with libmop.Context(model, n_ctx=32, n_batch=8, n_threads=1) as c:
                if i % 100 == 0:
                    c.decode([1, 2, 3])
            s = libmop.Sampler(temperature=0.5, seed=i)
            s.sample(np.zeros(8, dtype=np.float32))
            del s  # freed by its finalizer
    gc.collect()  # earlier tests may leave handles in reference cycles (kept tracebacks)
    live0 = libmop.live_handles()
    cycle(50)  # warm up allocator pools
    rss0 = rss_bytes()
    cycle(1000)
    grown = rss_bytes() - rss0
    assert libmop.live_handles() == live0
    # a leaked context (KV cache 30x2x32x192 floats = 1.5 MB) would add >1 GB
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 cycles"


def test_sparse_api(model_path, tmp_path):
    """Pruning through the bindings: sparsity, perplexity change, save and reload."""
    with libmop.Model(model_path, n_threads=2) as m:
        ids = m.tokenize(TEXT)
        with libmop.Context(m, n_ctx=128, n_batch=64, n_threads=2) as c:
            ppl_dense = c.perplexity(ids)
            with pytest.raises(MopError) as ei:
                m.prune()  # a context holds the model
            assert ei.value.name == "MOP_E_STATE"
        calls = []
        m.prune(method="magnitude", pattern="nm", n=2, m=4, n_threads=2,
                progress=lambda d, t: calls.append(d))
        assert calls
        s, fmt = m.sparsity()
        assert abs(s - 0.5) < 0.01 and fmt
        out, private = tmp_path / "pruned.gguf", tmp_path / "private.gguf"
        old_mask = os.umask(0o022)
        try:  # 0666 less the umask, as open() gives; 0600 on request
            m.save(out)
            m.save(private, private=True)
        finally:
            os.umask(old_mask)
        assert os.stat(out).st_mode & 0o777 == 0o644
        assert os.stat(private).st_mode & 0o777 == 0o600
        private.unlink()
        with libmop.Context(m, n_ctx=128, n_batch=64, n_threads=2) as c:
            ppl_pruned = c.perplexity(ids)
    assert ppl_pruned > ppl_dense  # 2:4 magnitude pruning hurts a 135M model
    with libmop.Model(out, n_threads=2) as m2, \
            libmop.Context(m2, n_ctx=128, n_batch=64, n_threads=2) as c2:
        assert abs(m2.sparsity()[0] - 0.5) < 0.01
        assert c2.perplexity(ids) == pytest.approx(ppl_pruned, rel=1e-4)
    with libmop.Model(model_path, n_threads=2) as m3:
        with pytest.raises(MopError) as ei:
            m3.prune(n=5, m=4)
        assert ei.value.name == "MOP_E_RANGE"


def test_missing_symbol_is_not_implemented():
    """Parts of the C API absent from the loaded library raise NotImplementedError
    naming the symbol (so the package works against partial builds)."""
    assert not libmop.has_symbol("mop_no_such_function")
    with pytest.raises(NotImplementedError, match="mop_no_such_function"):
        libmop._lib.fn("mop_no_such_function")
    with pytest.raises(NotImplementedError, match="mop_no_such_function"):
        libmop._lib.require("mop_model_load", "mop_no_such_function")
    assert libmop.has_symbol("mop_model_load")


# C functions the bindings deliberately leave out, with the reason (docs/PYTHON.md).
NOT_WRAPPED = {"mop_set_allocator": "process-wide C allocator hooks; no use from Python"}


def test_every_exported_function_is_wrapped(libmop_path):
    """The Python API covers the whole C API: every mop_* function the shared
    library exports is called somewhere in bindings/python/libmop."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run([nm, "-D", "--defined-only", libmop_path], capture_output=True,
                         text=True, check=True).stdout
    exported = sorted({line.split()[-1].split("@")[0] for line in out.splitlines()
                       if line.split() and line.split()[-1].startswith("mop_")})
    assert len(exported) > 90
    src = "\n".join(p.read_text() for p in
                    (pathlib.Path(__file__).resolve().parents[2] / "bindings" / "python" /
                     "libmop").glob("*.py"))
    missing = [s for s in exported
               if s not in NOT_WRAPPED and not re.search(r"\b" + s + r"\b", src)]
    assert not missing, f"C functions without a Python wrapper: {missing}"
    assert set(NOT_WRAPPED) <= set(exported)
