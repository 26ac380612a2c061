"""mop_tokenize_example on the real SmolLM2 model against an independent reference.

Reference: the chat text written out here from SmolLM2's template (checked
against the template stored in the GGUF), tokenized in ONE piece by Hugging
Face `tokenizers` built from the GGUF's vocab and merges (as in
test_tokenizer.py). libmop tokenizes the prompt and the response separately;
the ids must equal the one-piece reference exactly, the sequence must end with
<|im_end|> (the newline after it is dropped), and the loss mask must be 1 on
exactly the response tokens plus that <|im_end|>.
"""
import ctypes
import json
import pathlib
import subprocess
import sys

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MOP_E_INVALID_ARG = -1
MOP_E_RANGE = -8

HANDWRITTEN = [
    ("Define the word \"career\" (noun).", "the particular occupation for which you are trained"),
    ("Translate the English word \"prince\" into Spanish.", "príncipe"),
    ("What is 1234 + 5678?", "6912"),
    ("Say hi", " leading space and trailing space "),
    ("multi\nline\ninstruction", "multi\nline\n\nresponse\n"),
    ("emoji 😀 and 日本語", "Ελληνικά, Привет мир 👍🏽"),
    ("x", "y"),
    ("control text", "literally <|im_end|> inside the response"),
]


@pytest.fixture(scope="module")
def reader(model_path):
    return gguf.GGUFReader(model_path)


def build_reference(reader, with_special):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                               [tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if with_special:
        tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    return tok


@pytest.fixture(scope="module")
def reference(reader):
    return build_reference(reader, True)


@pytest.fixture(scope="module")
def plain_reference(reader):
    """Control tokens are ordinary text (HF splits added tokens whatever the flags)."""
    return build_reference(reader, False)


@pytest.fixture(scope="module")
def mop(libmop_path, model_path):
    lib = ctypes.CDLL(libmop_path)
    lib.mop_model_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.mop_model_free.argtypes = [ctypes.c_void_p]
    lib.mop_last_error.restype = ctypes.c_char_p
    lib.mop_model_special_token.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.mop_model_special_token.restype = ctypes.c_int32
    lib.mop_tokenize_example.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.POINTER(ctypes.c_int32),
                                         ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_size_t)]
    lib.mop_tokenize_example.restype = ctypes.c_int
    model = ctypes.c_void_p()
    assert lib.mop_model_load(model_path.encode(), None, ctypes.byref(model)) == 0, \
        lib.mop_last_error().decode()
    yield lib, model
    lib.mop_model_free(model)


def tokenize_example(mop, instruction, response, cap=4096):
    lib, model = mop
    toks = (ctypes.c_int32 * max(cap, 1))()
    mask = (ctypes.c_uint8 * max(cap, 1))()
    n = ctypes.c_size_t(0)
    st = lib.mop_tokenize_example(model, instruction.encode(), response.encode(), toks, mask, cap,
                                  ctypes.byref(n))
    return st, list(toks[:min(n.value, cap)]), list(mask[:min(n.value, cap)]), n.value


def dataset_examples(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    r = subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out",
                        str(out), "--per-task", "8", "--seed", "3"], capture_output=True)
    if r.returncode != 0:
        return []
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [(d["instruction"], d["response"]) for d in map(json.loads, lines)]


def test_template_is_the_one_written_here(reader):
    tpl = reader.fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>system\n" + SYSTEM + "<|im_end|>" in tpl
    assert "'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'" in tpl


def test_ids_and_mask_match_one_piece_reference(mop, reference, plain_reference,
                                                tmp_path_factory):
    lib, model = mop
    im_end = reference.token_to_id("<|im_end|>")
    assert lib.mop_model_special_token(model, 2) == im_end  # MOP_TOKEN_EOT
    examples = HANDWRITTEN + dataset_examples(tmp_path_factory)
    assert len(examples) >= len(HANDWRITTEN) + 40
    for instruction, response in examples:
        prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                  f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n")
        if "<|im_end|>" in response:
            # the response is plain text in libmop: its "<|im_end|>" stays ordinary bytes
            resp_ids = plain_reference.encode(response).ids
            full_ids = reference.encode(prompt).ids + resp_ids + [im_end]
            assert im_end not in resp_ids
        else:
            full_ids = reference.encode(prompt + response + "<|im_end|>").ids
        n_prompt = len(reference.encode(prompt).ids)
        st, ids, mask, n = tokenize_example(mop, instruction, response)
        assert st == 0, lib.mop_last_error().decode()
        assert ids == full_ids, (instruction, response)
        assert n == len(full_ids)
        assert mask == [0] * n_prompt + [1] * (n - n_prompt), (instruction, response)
        assert ids[-1] == im_end


def test_capacity_and_arguments(mop):
    lib, model = mop
    st, _, _, n = tokenize_example(mop, "Define x.", "a letter")
    assert st == 0
    st, _, _, n_small = tokenize_example(mop, "Define x.", "a letter", cap=n - 1)
    assert st == MOP_E_RANGE and n_small == n
    assert b"capacity" in lib.mop_last_error()
    st, _, _, n0 = tokenize_example(mop, "Define x.", "a letter", cap=0)
    assert st == MOP_E_RANGE and n0 == n
    out = ctypes.c_size_t(0)
    assert lib.mop_tokenize_example(None, b"a", b"b", None, None, 0, ctypes.byref(out)) == MOP_E_INVALID_ARG
    assert lib.mop_tokenize_example(model, None, b"b", None, None, 0, ctypes.byref(out)) == MOP_E_INVALID_ARG
    assert lib.mop_tokenize_example(model, b"a", None, None, None, 0, ctypes.byref(out)) == MOP_E_INVALID_ARG
    assert lib.mop_tokenize_example(model, b"a", b"b", None, None, 8, ctypes.byref(out)) == MOP_E_INVALID_ARG
    assert lib.mop_tokenize_example(model, b"a", b"b", None, None, 0, None) == MOP_E_INVALID_ARG
