"""The safetensors loader on a real model: SmolLM2's GGUF converted into a
Hugging Face checkpoint directory (config.json + model.safetensors in true HF
layout, F32), loaded through the public C API next to the GGUF itself.

Both loads hold the same numbers (the conversion dequantizes with the gguf
package and undoes llama.cpp's Q/K row permutation; libmop re-applies it for
the HF directory), so their logits must agree to float32 noise:
max |diff| <= 1e-4 * max |logit| on every row of every sequence.
"""
import ctypes as C
import json
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

LOGIT_TOL = 1e-4
SEQUENCES = [[1], [1, 504, 3458, 282, 5248, 28, 314, 1695, 30], list(range(100, 4100, 100))]

# GGUF name -> HF name (per layer: "blk.N." -> "model.layers.N.")
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
               "ffn_norm.weight": "post_attention_layernorm.weight",
               "attn_q.weight": "self_attn.q_proj.weight",
               "attn_k.weight": "self_attn.k_proj.weight",
               "attn_v.weight": "self_attn.v_proj.weight",
               "attn_output.weight": "self_attn.o_proj.weight",
               "ffn_gate.weight": "mlp.gate_proj.weight",
               "ffn_up.weight": "mlp.up_proj.weight",
               "ffn_down.weight": "mlp.down_proj.weight"}


class ModelInfo(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("arch", C.c_char * 32), ("name", C.c_char * 128),
                ("n_layer", C.c_int32), ("n_embd", C.c_int32), ("n_ff", C.c_int32),
                ("n_head", C.c_int32), ("n_head_kv", C.c_int32), ("head_dim", C.c_int32),
                ("n_vocab", C.c_int32), ("n_ctx_train", C.c_int32), ("rope_theta", C.c_float),
                ("rope_scale", C.c_float), ("norm_eps", C.c_float),
                ("tied_embeddings", C.c_int32), ("n_params", C.c_uint64),
                ("weight_bytes", C.c_uint64), ("file_bytes", C.c_uint64),
                ("file_type", C.c_char * 16)]


class CtxParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_ctx", C.c_int32), ("n_batch", C.c_int32),
                ("n_threads", C.c_int32)]


def hf_from_gguf_qk(w, n_head):
    """llama.cpp stores Q/K with head row 2i+t = HF row t*hd/2 + i; undo it."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def write_safetensors(path, tensors):
    """tensors: name -> float32 array. Header JSON padded to 8 bytes, then data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


@pytest.fixture(scope="module")
def hf_dir(model_path, tmp_path_factory):
    r = gguf.GGUFReader(model_path)

    def field(key):
        return r.fields[key].contents()

    n_head, n_head_kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": field("llama.embedding_length"),
        "intermediate_size": field("llama.feed_forward_length"),
        "num_hidden_layers": field("llama.block_count"),
        "num_attention_heads": n_head, "num_key_value_heads": n_head_kv,
        "vocab_size": field("llama.vocab_size"),
        "max_position_embeddings": field("llama.context_length"),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field("llama.rope.freq_base")),
        "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            name = f"model.layers.{layer}.{LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = hf_from_gguf_qk(w, n_head)
            elif rest == "attn_k.weight":
                w = hf_from_gguf_qk(w, n_head_kv)
        else:
            name = GLOBAL_NAMES[t.name]
        tensors[name] = w
    assert "lm_head.weight" not in tensors  # tied: SmolLM2 has no output matrix
    # a buffer old HF checkpoints carry, which the loader must skip
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = (
        1.0 / config["rope_theta"] ** (np.arange(0, 64, 2, dtype=np.float32) / 64))
    d = tmp_path_factory.mktemp("smollm2_hf")
    write_safetensors(d / "model.safetensors", tensors)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    return d


@pytest.fixture(scope="module")
def lib(libmop_path):
    L = C.CDLL(libmop_path)
    L.mop_last_error.restype = C.c_char_p
    L.mop_model_load.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
    L.mop_model_free.argtypes = [C.c_void_p]
    L.mop_model_get_info.argtypes = [C.c_void_p, C.POINTER(ModelInfo)]
    return L


def check(lib, status):
    assert status == 0, lib.mop_last_error().decode()


def load(lib, path):
    m = C.c_void_p()
    check(lib, lib.mop_model_load(str(path).encode(), None, C.byref(m)))
    return m


def info(lib, m):
    i = ModelInfo(struct_size=C.sizeof(ModelInfo))
    check(lib, lib.mop_model_get_info(m, C.byref(i)))
    return i


def prototype_forward(lib):
    lib.mop_ctx_params_init_sized.argtypes = [C.POINTER(CtxParams), C.c_size_t]
    lib.mop_ctx_create.argtypes = [C.c_void_p, C.POINTER(CtxParams), C.POINTER(C.c_void_p)]
    lib.mop_ctx_free.argtypes = [C.c_void_p]
    lib.mop_ctx_decode.argtypes = [C.c_void_p, C.POINTER(C.c_int32), C.c_int32, C.c_int32]
    lib.mop_ctx_get_logits.argtypes = [C.c_void_p, C.POINTER(C.POINTER(C.c_float)),
                                       C.POINTER(C.c_int32)]


def all_logits(lib, m, tokens, n_vocab=49152):
    """(len(tokens), n_vocab) logits of one decode call from an empty cache."""
    p = CtxParams()
    assert lib.mop_ctx_params_init_sized(C.byref(p), C.sizeof(p)) == 0
    p.n_ctx, p.n_batch, p.n_threads = 128, 64, 1
    ctx = C.c_void_p()
    check(lib, lib.mop_ctx_create(m, C.byref(p), C.byref(ctx)))
    try:
        arr = (C.c_int32 * len(tokens))(*tokens)
        check(lib, lib.mop_ctx_decode(ctx, arr, len(tokens), 1))  # MOP_LOGITS_ALL
        ptr, rows = C.POINTER(C.c_float)(), C.c_int32()
        check(lib, lib.mop_ctx_get_logits(ctx, C.byref(ptr), C.byref(rows)))
        assert rows.value == len(tokens)
        return np.ctypeslib.as_array(ptr, shape=(rows.value, n_vocab)).copy()
    finally:
        lib.mop_ctx_free(ctx)


@pytest.fixture(scope="module")
def models(lib, model_path, hf_dir):
    a, b = load(lib, model_path), load(lib, hf_dir)
    yield a, b
    lib.mop_model_free(a)
    lib.mop_model_free(b)


def test_same_hparams(lib, models, hf_dir):
    g, s = info(lib, models[0]), info(lib, models[1])
    assert s.file_type == b"safetensors" and g.file_type == b"gguf"
    assert s.arch == b"llama"
    for f in ["n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_vocab",
              "n_ctx_train", "rope_theta", "rope_scale", "norm_eps", "tied_embeddings",
              "n_params"]:
        assert getattr(s, f) == getattr(g, f), f
    assert (s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_vocab) == \
        (30, 576, 9, 3, 64, 49152)
    assert s.tied_embeddings == 1
    assert s.file_bytes == (hf_dir / "model.safetensors").stat().st_size
    # every weight of the HF file except the skipped inv_freq buffer
    lib.mop_model_tensor_count.argtypes = [C.c_void_p]
    assert lib.mop_model_tensor_count(models[1]) == 2 + 9 * 30


def test_logits_match_gguf(lib, models):
    prototype_forward(lib)
    for tokens in SEQUENCES:
        a, b = all_logits(lib, models[0], tokens), all_logits(lib, models[1], tokens)
        assert np.isfinite(a).all() and np.isfinite(b).all()
        scale = np.abs(a).max()
        diff = np.abs(a - b).max()
        print(f"n={len(tokens)}: max|diff| {diff:.3g}, max|logit| {scale:.3g}, ratio {diff / scale:.3g}")
        assert diff <= LOGIT_TOL * scale, (len(tokens), diff, scale)
        # the same next-token choice everywhere
        assert (a.argmax(axis=1) == b.argmax(axis=1)).all()


def test_permutation_matters(lib, models, hf_dir, tmp_path):
    """Control: layer 0's Q rows written in llama.cpp order (an HF file
    written wrongly) change the logits far beyond the tolerance, so the
    comparison above can see a layout mistake."""
    prototype_forward(lib)
    src = (hf_dir / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", src[:8])[0]
    header = json.loads(src[8:8 + n])
    q = header["model.layers.0.self_attn.q_proj.weight"]
    b0, b1 = q["data_offsets"]
    w = np.frombuffer(src[8 + n + b0:8 + n + b1], dtype="<f4").reshape(q["shape"])
    n_head, hd = 9, 64
    wrong = w.reshape(n_head, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)
    assert not np.array_equal(wrong, w)
    out = bytearray(src)
    out[8 + n + b0:8 + n + b1] = wrong.astype("<f4").tobytes()
    (tmp_path / "model.safetensors").write_bytes(bytes(out))
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    bad = load(lib, tmp_path)
    try:
        tokens = SEQUENCES[1]
        good, wrong_logits = all_logits(lib, models[1], tokens), all_logits(lib, bad, tokens)
        # one token attends only to itself, so Q cannot matter there; later rows must move
        assert np.abs(good[1:] - wrong_logits[1:]).max() > 100 * LOGIT_TOL * np.abs(good).max()
    finally:
        lib.mop_model_free(bad)
