"""libmop's tokenizer against Hugging Face `tokenizers` on the real SmolLM2 vocab.

The reference is built from the SAME vocab and merges, read out of the GGUF
with the gguf package: BPE(vocab, merges), pre-tokenizer
Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]),
ByteLevel decoder, and the control tokens (token_type 3) as special tokens.
Ids must match exactly and detokenize(tokenize(x)) must give x back.
"""
import ctypes
import pathlib

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

MOP_TOKENIZE_ADD_BOS = 1
MOP_TOKENIZE_PARSE_SPECIAL = 2
MOP_E_INVALID_ARG = -1
MOP_E_RANGE = -8

TEXTS = [
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock somewhere!",
    "café, naïve, Ærøskøbing, São Paulo, Đà Nẵng, Ελληνικά, Привет мир",
    "日本語の文章です。中文，简体字。한국어 텍스트",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 rainbow 🏳️‍🌈",
    "1234567 3.14159 2026-11-25 1,000,000 ½ ² ٣٤٥ ⅷ 10⁶",
    "tabs\tand\t\ttabs, multiple    spaces, newlines\n\n\nand trailing spaces   ",
    "   leading spaces\n \n\t \r\n",
    "don't I'll she's we're they've I'm he'd DON'T It'S",
    "int add(int a, int b) {\n    return a + b; /* sum */\n}\n",
    "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]\n    return None\n",
    "mixed: Hello мир 世界 مرحبا שלום नमस्ते!!",
    "punctuation!!! ??? ... --- ((( ))) @#$%^&*_+=~`|\\<>",
    "nbsp\u00a0here, nel\u0085there, ideographic\u3000space, zwsp\u200bx",
    "<|im_start|>user\nnot special without the flag<|im_end|>",
    "a" * 300 + " " + "ab" * 200,
    "\n" * 50 + " " * 50 + "x",
]


def corpus_text():
    """A long paragraph of real text shipped by Debian."""
    for p in ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"]:
        path = pathlib.Path(p)
        if path.exists():
            return path.read_text(encoding="utf-8")
    return None


@pytest.fixture(scope="module")
def reader(model_path):
    return gguf.GGUFReader(model_path)


@pytest.fixture(scope="module")
def reference(reader):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab, pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    return tok


class Mop:
    def __init__(self, lib_path, model_path):
        lib = ctypes.CDLL(lib_path)
        self.lib = lib
        lib.mop_model_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.mop_model_load.restype = ctypes.c_int
        lib.mop_model_free.argtypes = [ctypes.c_void_p]
        lib.mop_last_error.restype = ctypes.c_char_p
        lib.mop_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32,
                                     ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                     ctypes.POINTER(ctypes.c_size_t)]
        lib.mop_detokenize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                       ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t,
                                       ctypes.POINTER(ctypes.c_size_t)]
        lib.mop_model_special_token.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.mop_model_special_token.restype = ctypes.c_int32
        self.model = ctypes.c_void_p()
        st = lib.mop_model_load(model_path.encode(), None, ctypes.byref(self.model))
        assert st == 0, lib.mop_last_error().decode()

    def tokenize_raw(self, data: bytes, flags=0, cap=None):
        n = ctypes.c_size_t(0)
        cap = 4 * len(data) + 8 if cap is None else cap
        buf = (ctypes.c_int32 * max(cap, 1))()
        st = self.lib.mop_tokenize(self.model, data, len(data), flags, buf, cap, ctypes.byref(n))
        return st, list(buf[:min(n.value, cap)]), n.value

    def tokenize(self, text: str, flags=0):
        st, ids, _ = self.tokenize_raw(text.encode("utf-8"), flags)
        assert st == 0, self.lib.mop_last_error().decode()
        return ids

    def detokenize(self, ids, flags=0, cap=None):
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        n = ctypes.c_size_t(0)
        cap = 16 * len(ids) + 8 if cap is None else cap
        buf = ctypes.create_string_buffer(max(cap, 1))
        st = self.lib.mop_detokenize(self.model, arr, len(ids), flags, buf, cap, ctypes.byref(n))
        return st, buf.raw[:min(n.value, cap)], n.value

    def chat(self, messages, add_prompt):
        class Msg(ctypes.Structure):
            _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]

        arr = (Msg * max(len(messages), 1))(*[Msg(r.encode(), c.encode()) for r, c in messages])
        n = ctypes.c_size_t(0)
        buf = ctypes.create_string_buffer(1 << 16)
        self.lib.mop_chat_format.argtypes = [ctypes.c_void_p, ctypes.POINTER(Msg), ctypes.c_size_t,
                                             ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_size_t)]
        st = self.lib.mop_chat_format(self.model, arr, len(messages), add_prompt, buf, len(buf),
                                      ctypes.byref(n))
        assert st == 0, self.lib.mop_last_error().decode()
        return buf.raw[:n.value].decode("utf-8")

    def close(self):
        self.lib.mop_model_free(self.model)


@pytest.fixture(scope="module")
def mop(libmop_path, model_path):
    m = Mop(libmop_path, model_path)
    yield m
    m.close()


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_ids_match_hf_and_round_trip(mop, reference, text):
    want = reference.encode(text, add_special_tokens=False).ids
    if "<|im_start|>" in text:
        # HF always splits added special tokens; libmop only with the flag
        got = mop.tokenize(text, MOP_TOKENIZE_PARSE_SPECIAL)
        assert got == want
        assert mop.detokenize(got, MOP_TOKENIZE_PARSE_SPECIAL)[1].decode("utf-8") == text
        plain = mop.tokenize(text)
        assert 1 not in plain and 2 not in plain
        assert mop.detokenize(plain)[1].decode("utf-8") == text
        return
    got = mop.tokenize(text)
    assert got == want
    st, out, n = mop.detokenize(got)
    assert st == 0
    assert out.decode("utf-8") == text
    assert reference.decode(got, skip_special_tokens=False) == text


def test_long_corpus(mop, reference):
    text = corpus_text()
    if text is None:
        pytest.skip("no Debian license text on this machine")
    text = text * 3  # ~100 KB
    want = reference.encode(text, add_special_tokens=False).ids
    got = mop.tokenize(text)
    assert len(got) == len(want)
    first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first_diff is None, f"first difference at token {first_diff}"
    assert mop.detokenize(got)[1].decode("utf-8") == text


def test_special_tokens_and_flags(mop, reference, reader):
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    im_end = tokens.index("<|im_end|>")
    assert mop.lib.mop_model_special_token(mop.model, 0) == reader.fields["tokenizer.ggml.bos_token_id"].contents()
    assert mop.lib.mop_model_special_token(mop.model, 1) == reader.fields["tokenizer.ggml.eos_token_id"].contents()
    assert mop.lib.mop_model_special_token(mop.model, 2) == im_end
    assert mop.lib.mop_model_special_token(mop.model, 3) == reader.fields["tokenizer.ggml.padding_token_id"].contents()
    assert mop.lib.mop_model_special_token(mop.model, 42) == -1
    # SmolLM2 does not ask for BOS, so the flag adds nothing
    assert mop.tokenize("Hi", MOP_TOKENIZE_ADD_BOS) == mop.tokenize("Hi")
    text = "<|im_start|>user\nHi<|im_end|>\n"
    ids = mop.tokenize(text, MOP_TOKENIZE_PARSE_SPECIAL)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    # control tokens are skipped unless asked for
    assert mop.detokenize(ids)[1] == b"user\nHi\n"
    assert mop.detokenize(ids, MOP_TOKENIZE_PARSE_SPECIAL)[1] == text.encode()


def test_errors(mop):
    st, _, n = mop.tokenize_raw(b"Hello world, how are you?", cap=2)
    assert st == MOP_E_RANGE and n == len(mop.tokenize("Hello world, how are you?"))
    st, _, _ = mop.tokenize_raw(b"bad \xff utf-8")
    assert st == MOP_E_INVALID_ARG
    assert mop.lib.mop_last_error().decode() == "tokenize: text is not valid UTF-8 at byte 4"
    ids = mop.tokenize("Hello world")
    st, _, n = mop.detokenize(ids, cap=3)
    assert st == MOP_E_RANGE and n == len("Hello world")
    st, _, _ = mop.detokenize([49152])
    assert st == MOP_E_INVALID_ARG


def render_chatml(template, messages, add_prompt):
    """The template's output by hand: ChatML plus its literal default system message."""
    try:
        import jinja2
    except ImportError:
        jinja2 = None
    if jinja2 is not None:
        return jinja2.Template(template).render(
            messages=[{"role": r, "content": c} for r, c in messages], add_generation_prompt=add_prompt)
    start = template.index("<|im_start|>system\n") + len("<|im_start|>system\n")
    default = template[start:template.index("<|im_end|>", start)]
    out = ""
    if messages and messages[0][0] != "system":
        out += f"<|im_start|>system\n{default}<|im_end|>\n"
    for r, c in messages:
        out += f"<|im_start|>{r}\n{c}<|im_end|>\n"
    if add_prompt:
        out += "<|im_start|>assistant\n"
    return out


@pytest.mark.parametrize("messages,add_prompt", [
    ([("user", "What is 2+2?")], 1),
    ([("system", "Answer briefly."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")], 1),
    ([("user", "Héllo 😀"), ("assistant", "Hi")], 0),
    ([], 1),
])
def test_chat_format(mop, reader, messages, add_prompt):
    template = reader.fields["tokenizer.chat_template"].contents()
    want = render_chatml(template, messages, add_prompt)
    assert "You are a helpful AI assistant named SmolLM" in want or not messages or messages[0][0] == "system"
    assert mop.chat(messages, add_prompt) == want


def test_bytes_without_a_token_are_dropped(mop, reference, reader):
    """SmolLM2's vocab has no token for some bytes (e.g. 0x04, 0x1d): HF (no
    unk_token) and libmop both drop them; the unk id 0 is a control token."""
    tokens = set(reader.fields["tokenizer.ggml.tokens"].contents())
    assert "\u0104" not in tokens and "\u011d" not in tokens  # stand-ins of 0x04, 0x1d
    text = "a\x04b\x1dc"
    got = mop.tokenize(text)
    assert got == reference.encode(text, add_special_tokens=False).ids
    assert mop.detokenize(got)[1] == b"abc"


def test_byte_without_a_token_blocks_merges(mop, reference):
    """Where HF and llama.cpp differ, libmop follows llama.cpp: a byte with no
    token (0x04 in SmolLM2) is dropped after the merges, so '|' 0x04 '|' stays
    two '|' tokens; HF drops it first and merges '||' (docs/TOKENIZER.md)."""
    bar, bars = mop.tokenize("|"), mop.tokenize("||")
    assert len(bar) == 1 and len(bars) == 1
    assert mop.tokenize("|\x04|") == bar + bar
    assert reference.encode("|\x04|", add_special_tokens=False).ids == bars


def test_concurrent_tokenize_on_shared_model(mop):
    """mop_tokenize is thread-safe on one model (ctypes drops the GIL in calls)."""
    import concurrent.futures

    texts = [t for t in TEXTS if t] * 4
    serial = [mop.tokenize(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        parallel = list(ex.map(mop.tokenize, texts))
    assert parallel == serial


# ---- code points newer than the system regex library (issue 14) -----------
# libmop's pre-tokenizer classes come from its own Unicode table
# (src/core/tokenizer_unicode.c), not from PCRE2's; these cases differed when
# they did (PCRE2 10.42 is Unicode 14: U+1E4F0 NAG MUNDARI DIGIT ZERO and
# U+11F50 KAWI DIGIT ZERO are 15.0 digits).
NEW_IN_15 = [
    ("\U0001E4F0't", [187, 248, 237, 125, 982]),
    ("   \U00011F50", [333, 187, 235, 138, 234]),
    ("\n\n\n\U0001E4F0", None),
    ("\U00011F04\U00011F05 \U0001E4D0\U0001E4D1 \U00031350\U00031351 \U0001D2C0\U0001D2C1", None),
    ("\u0CF3 \U0001E030 \U00011F50\U00011F51's", None),
]


@pytest.mark.parametrize("text,ids", NEW_IN_15, ids=range(len(NEW_IN_15)))
def test_unicode_15_minimal_cases(mop, reference, text, ids):
    want = reference.encode(text, add_special_tokens=False).ids
    if ids is not None:
        assert want == ids
    assert mop.tokenize(text) == want
    assert mop.detokenize(want)[1].decode("utf-8") == text


def assigned_code_points():
    """Assigned code points of planes 0-3 and 14 in the table's UnicodeData.txt."""
    path = pathlib.Path("/usr/share/unicode/UnicodeData.txt")
    if not path.exists():
        pytest.skip("no /usr/share/unicode/UnicodeData.txt (apt-get install unicode-data)")
    cps, first = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split(";")
        cp = int(f[0], 16)
        if f[1].endswith(", First>"):
            first = cp
            continue
        lo = first if f[1].endswith(", Last>") else cp
        first = None
        cps.extend(c for c in range(lo, cp + 1)
                   if (c >> 16) in (0, 1, 2, 3, 14) and not 0xD800 <= c <= 0xDFFF)
    return cps


# each code point X in these contexts, many per probe string joined by '|'
CONTEXTS = ["{}", "'{}", "{}'t", "{}'s", "   {}", "\n\n\n{}", "12{}", "{}3", "a{}b", " {} ",
            "\t{}\t", "({})", "{}{} x"]


def byte_stand_in(b):
    """GPT-2's printable stand-in character of byte b."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if b in keep:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in keep].index(b))


def test_every_assigned_code_point_matches_hf(mop, reference, reader):
    vocab = set(reader.fields["tokenizer.ggml.tokens"].contents())
    # bytes without a token: HF drops them before merging, libmop (as llama.cpp)
    # after, so their neighbours cannot merge across them; see
    # test_byte_without_a_token_blocks_merges
    cps = [c for c in assigned_code_points()
           if all(byte_stand_in(b) in vocab for b in chr(c).encode("utf-8"))]
    assert len(cps) > 140000
    chunk = 3000
    for ctx in CONTEXTS:
        for k in range(0, len(cps), chunk):
            part = cps[k:k + chunk]
            text = "|".join(ctx.format(chr(c), chr(c)) for c in part)
            want = reference.encode(text, add_special_tokens=False).ids
            got = mop.tokenize(text)
            if got != want:  # name the first code point that differs
                for c in part:
                    one = ctx.format(chr(c), chr(c))
                    if mop.tokenize(one) != reference.encode(one, add_special_tokens=False).ids:
                        pytest.fail(f"context {ctx!r}: U+{c:04X} differs from HF")
                pytest.fail(f"context {ctx!r}: chunk at U+{part[0]:04X} differs from HF")
