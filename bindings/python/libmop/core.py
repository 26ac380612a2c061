"""Models, tokenizer, inference contexts, perplexity, sampling and generation
(include/libmop/mop_core.h)."""
from __future__ import annotations

import ctypes
import dataclasses
import os
import queue
import threading
from ctypes import byref, c_double, c_float, c_int32, c_size_t, c_uint8
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _lib as L
from ._errors import MopError

if TYPE_CHECKING:
    from .mixture import Mixture

__all__ = ["Model", "ModelInfo", "TensorInfo", "Context", "Sampler", "set_log_callback",
           "status_name", "status_str", "last_error", "version", "version_number"]

PathLike = Union[str, bytes, "os.PathLike[str]"]
TokenIds = Union[Sequence[int], np.ndarray]

TOKENIZE_ADD_BOS = 1
TOKENIZE_PARSE_SPECIAL = 2
LOGITS_LAST = 0
LOGITS_ALL = 1
SPECIAL_TOKENS = {"bos": 0, "eos": 1, "eot": 2, "pad": 3}


def version() -> str:
    """Version string of the loaded C library, e.g. "0.1.0"."""
    return L.fn("mop_version")().decode()


def version_number() -> int:
    """major*10000 + minor*100 + patch of the loaded C library."""
    return int(L.fn("mop_version_number")())


def status_name(status: int) -> str:
    """Name of a status code, e.g. status_name(-2) == "MOP_E_IO"."""
    return L.status_name(status)


def status_str(status: int) -> str:
    """Short description of a status code."""
    return L.fn("mop_status_str")(status).decode()


def last_error() -> str:
    """mop_last_error() of this thread (the message MopError already carries)."""
    return L.last_error()


_log_keepalive: Any = None


def set_log_callback(fn: Optional[Callable[[int, str], Any]]) -> None:
    """Route libmop's log lines to ``fn(level, message)`` (0 error .. 3 debug);
    None silences the library (the default). Set it before creating handles.
    Exceptions raised by ``fn`` are swallowed (a log line cannot fail a call)."""
    global _log_keepalive
    if fn is None:
        L.fn("mop_set_log_callback")(L.LOG_FN(), None)
        _log_keepalive = None
        return

    def tramp(level: int, msg: bytes, user: Any) -> None:
        try:
            fn(int(level), (msg or b"").decode("utf-8", "replace"))
        except BaseException:  # noqa: BLE001 - a log callback must not unwind into C
            pass

    cb = L.LOG_FN(tramp)
    L.fn("mop_set_log_callback")(cb, None)
    _log_keepalive = cb  # the C side keeps the pointer: keep the thunk alive


# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Architecture and size of a loaded model (mop_model_info)."""
    arch: str
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    rope_scale: float
    norm_eps: float
    tied_embeddings: bool
    n_params: int
    weight_bytes: int
    file_bytes: int
    file_type: str


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor as stored in the model file (mop_tensor_info)."""
    name: str
    file_type: str
    shape: tuple[int, ...]


def _grow(call: Callable[[Any, int, Any], int], cap: int, make: Callable[[int], Any]) -> tuple[Any, int]:
    """Run a size-query style call (MOP_E_RANGE + n_out when cap is too small)
    with a buffer of ``cap``, growing it once to the reported size."""
    n = c_size_t(0)
    buf = make(cap)
    status = call(buf, cap, byref(n))
    if status == -8 and n.value > cap:  # MOP_E_RANGE: buffer too small, n holds the need
        cap = n.value + 1
        buf = make(cap)
        status = call(buf, cap, byref(n))
    L.check(status)
    return buf, n.value


class Model(L.Closable):
    """A loaded, frozen model (``mop_model``): GGUF (F32/F16/BF16/Q8_0/Q4_0/Q4_1)
    or Hugging Face safetensors. Read-only and shareable between threads.

    >>> with libmop.Model("SmolLM2-135M-Instruct.Q4_1.gguf") as model:
    ...     ids = model.tokenize("Hello")

    Raises MopError: MOP_E_IO (cannot open; the message names the path),
    MOP_E_FORMAT (corrupt), MOP_E_UNSUPPORTED, MOP_E_SHAPE, MOP_E_CANCELLED.
    """

    def __init__(self, path: PathLike, n_threads: int = 0, use_mmap: bool = True,
                 progress: Optional[Callable[[int, int], Any]] = None) -> None:
        """Load ``path``. ``progress``(done, total) is called per tensor; return
        True from it to cancel (MopError MOP_E_CANCELLED)."""
        p = L.params_init(L.ModelParams, "mop_model_params_init_sized")
        p.n_threads = L.check_c_int("n_threads", n_threads)
        p.use_mmap = int(bool(use_mmap))
        guard = L.CallbackGuard()
        cb = L.progress_callback(progress, guard)
        p.progress = cb
        bpath = L.cstr(path, "path")
        try:
            self._h = L.create("mop_model", lambda out: L.fn("mop_model_load")(bpath, byref(p), out))
        finally:
            guard.reraise()
        self.path = os.fsdecode(bpath)
        self._info: Optional[ModelInfo] = None

    def __repr__(self) -> str:
        if self.closed:
            return "<libmop.Model closed>"
        i = self.info
        return f"<libmop.Model {i.arch} {i.name!r} layers={i.n_layer} d={i.n_embd} vocab={i.n_vocab}>"

    # -- description -------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """Architecture and sizes (mop_model_get_info). Refreshed after prune()."""
        if self._info is None:
            ci = L.ModelInfoC()
            ci.struct_size = ctypes.sizeof(ci)
            L.check(L.call("mop_model_get_info", self, byref(ci)))
            self._info = ModelInfo(
                arch=ci.arch.decode(), name=ci.name.decode("utf-8", "replace"),
                n_layer=ci.n_layer, n_embd=ci.n_embd, n_ff=ci.n_ff, n_head=ci.n_head,
                n_head_kv=ci.n_head_kv, head_dim=ci.head_dim, n_vocab=ci.n_vocab,
                n_ctx_train=ci.n_ctx_train, rope_theta=ci.rope_theta,
                rope_scale=ci.rope_scale, norm_eps=ci.norm_eps,
                tied_embeddings=bool(ci.tied_embeddings), n_params=ci.n_params,
                weight_bytes=ci.weight_bytes, file_bytes=ci.file_bytes,
                file_type=ci.file_type.decode())
        return self._info

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    def tensors(self) -> list[TensorInfo]:
        """The tensors read from the file(s), in file order."""
        n = L.call("mop_model_tensor_count", self)
        out = []
        for i in range(n):
            ti = L.TensorInfoC()
            ti.struct_size = ctypes.sizeof(ti)
            L.check(L.call("mop_model_tensor_get_info", self, i, byref(ti)))
            out.append(TensorInfo(ti.name.decode(), ti.file_type.decode(),
                                  tuple(int(ti.dims[d]) for d in range(ti.n_dims))))
        return out

    # -- tokenizer ---------------------------------------------------------
    def special_token(self, which: Union[str, int]) -> Optional[int]:
        """Id of "bos", "eos", "eot" (end of turn) or "pad", or None if the model has none."""
        w = L.enum_value(which, SPECIAL_TOKENS, "which")
        t = int(L.call("mop_model_special_token", self, w))
        return None if t < 0 else t

    @property
    def bos(self) -> Optional[int]:
        return self.special_token("bos")

    @property
    def eos(self) -> Optional[int]:
        return self.special_token("eos")

    @property
    def eot(self) -> Optional[int]:
        return self.special_token("eot")

    @property
    def eog_tokens(self) -> np.ndarray:
        """The end-of-generation ids (ascending, int32): generation stops when
        one is sampled (mop_model_eog_tokens). Empty for a model without a
        tokenizer."""
        f = L.fn("mop_model_eog_tokens")
        with L.using(self) as (h,):  # the model stays alive for the call
            buf, n = _grow(lambda b, cap, n_out: f(h, b, cap, n_out), 16,
                           lambda cap: (c_int32 * cap)())
        return np.array([buf[i] for i in range(n)], dtype=np.int32)

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (mop_model_is_eog)."""
        return bool(L.call("mop_model_is_eog", self, L.check_c_int("token", token)))

    def tokenize(self, text: Union[str, bytes], add_bos: bool = False,
                 special: bool = False) -> np.ndarray:
        """UTF-8 text -> int32 token ids. ``special`` matches control tokens such
        as "<|im_start|>" in the text; ``add_bos`` prepends BOS if the model asks for it."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        flags = (TOKENIZE_ADD_BOS if add_bos else 0) | (TOKENIZE_PARSE_SPECIAL if special else 0)
        f = L.fn("mop_tokenize")
        with L.using(self) as (h,):  # the model stays alive for the call
            buf, n = _grow(lambda b, cap, n_out: f(h, data, len(data), flags,
                                                    L.ptr(b, c_int32), cap, n_out),
                           len(data) + 2, lambda cap: np.empty(cap, dtype=np.int32))
        return buf[:n].copy() if n < len(buf) // 2 else buf[:n]

    def detokenize_bytes(self, ids: TokenIds, special: bool = False) -> bytes:
        """Token ids -> raw UTF-8 bytes (a cut in the middle of a character is kept as is)."""
        a = L.int32_array(ids, "ids")
        f = L.fn("mop_detokenize")
        flags = TOKENIZE_PARSE_SPECIAL if special else 0
        with L.using(self) as (h,):  # the model stays alive for the call
            buf, n = _grow(lambda b, cap, n_out: f(h, L.ptr(a, c_int32), a.size, flags, b, cap,
                                                    n_out),
                           8 * a.size + 16, lambda cap: ctypes.create_string_buffer(cap))
        return buf.raw[:n]

    def detokenize(self, ids: TokenIds, special: bool = False, errors: str = "replace") -> str:
        """Token ids -> text. Control tokens are skipped unless ``special``."""
        return self.detokenize_bytes(ids, special).decode("utf-8", errors)

    def chat_format(self, messages: Iterable[Any], add_assistant_prompt: bool = True) -> str:
        """Render ``[{"role": ..., "content": ...}, ...]`` (or (role, content)
        pairs) with the model's chat template (ChatML family)."""
        keep = []
        for m in messages:
            role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
            keep.append((L.cstr(role, "role"), L.cstr(content, "content")))
        arr = (L.ChatMessage * max(1, len(keep)))()
        for i, (r, c) in enumerate(keep):
            arr[i].role, arr[i].content = r, c
        f = L.fn("mop_chat_format")
        total = sum(len(r) + len(c) for r, c in keep)
        add = int(bool(add_assistant_prompt))
        with L.using(self) as (h,):  # the model stays alive for the call
            buf, n = _grow(lambda b, cap, n_out: f(h, arr, len(keep), add, b, cap, n_out),
                           total + 256, lambda cap: ctypes.create_string_buffer(cap))
        return buf.raw[:n].decode("utf-8", "replace")

    def tokenize_example(self, instruction: str, response: str,
                         system: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        """One instruction example through the chat template: (tokens int32,
        loss_mask uint8) with the mask on the response and its end-of-turn
        token (mop_tokenize_example_v2, mop_gate.h). ``system``: None keeps
        the template's default system turn, "" an empty one, else its text."""
        f = L.fn("mop_tokenize_example_v2")
        ins, resp = L.cstr(instruction, "instruction"), L.cstr(response, "response")
        sys_b = None if system is None else L.cstr(system, "system")
        cap = len(ins) + len(resp) + len(sys_b or b"") + 64
        with L.using(self) as (h,):  # the model stays alive for the call
            for _ in range(2):
                toks = np.empty(cap, dtype=np.int32)
                mask = np.empty(cap, dtype=np.uint8)
                n = c_size_t(0)
                status = f(h, sys_b, ins, resp, L.ptr(toks, c_int32), L.ptr(mask, c_uint8), cap,
                           byref(n))
                if status == -8 and n.value > cap:
                    cap = n.value
                    continue
                L.check(status)
                return toks[:n.value].copy(), mask[:n.value].copy()
            raise MopError("MOP_E_INTERNAL", "mop_tokenize_example: size changed between calls")

    # -- sparse (mop_sparse.h) ----------------------------------------------
    def prune(self, progress: Optional[Callable[[int, int], Any]] = None, *,
              calib_tokens: Any = None,
              method: Optional[Union[str, int]] = None,
              pattern: Optional[Union[str, int]] = None,
              n: Optional[int] = None,
              m: Optional[int] = None,
              ratio: Optional[float] = None,
              granularity: Optional[Union[str, int]] = None,
              layer_begin: Optional[int] = None,
              layer_end: Optional[int] = None,
              calib_seq_len: Optional[int] = None,
              sparsegpt_damp: Optional[float] = None,
              sparsegpt_block: Optional[int] = None,
              lm_head_format: Optional[Union[str, int]] = None,
              n_threads: Optional[int] = None) -> None:
        """Prune in place (mop_model_prune): :func:`libmop.sparse.prune` on
        this model, which documents every parameter. None keeps the library's
        default (magnitude, 2:4); only the parameters passed are set.

        :param progress: ``progress(done, total)`` per weight matrix; a true
            return value cancels
        :param calib_tokens: calibration token ids for Wanda and SparseGPT
        :param method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"`` [magnitude]
        :param pattern: ``"nm"`` or ``"unstructured"`` [nm]
        :param n: N of N:M [2]
        :param m: M of N:M [4]
        :param ratio: unstructured: fraction removed [0.5]
        :param granularity: ``"row"`` or ``"layer"`` [row]
        :param layer_begin: first block pruned [0]
        :param layer_end: one past the last block pruned; -1 = all [-1]
        :param calib_seq_len: length of the calibration sequences [256]
        :param sparsegpt_damp: SparseGPT's dampening [0.01]
        :param sparsegpt_block: SparseGPT's block width [128]
        :param lm_head_format: ``"f32"``, ``"f16"`` or ``"q8_0"`` [f32]
        :param n_threads: worker threads; 0 = all cores [0]
        """
        args = dict(locals())  # every parameter, passed on by name
        del args["self"]
        from .sparse import prune
        prune(self, **args)

    def sparsity(self) -> tuple[float, str]:
        """(fraction of zero weights in the pruned layers, storage format name)."""
        from .sparse import sparsity
        return sparsity(self)

    def save(self, path: PathLike, *, private: bool = False) -> None:
        """Write the model (pruned or not) as one GGUF file, atomically
        (mop_model_save_v2). Mode 0666 less the umask, as open() gives, or
        0600 with ``private=True`` (MOP_SAVE_PRIVATE)."""
        L.check(L.call("mop_model_save_v2", self, L.cstr(path, "path"), 1 if private else 0))


# ---------------------------------------------------------------------------


class Sampler(L.Closable):
    """Token sampler (``mop_sampler``): temperature (0 = greedy), top-k, top-p and
    a seeded random state. Arguments left as None take the C defaults
    (temperature 0.8, top_k 40, top_p 0.95, seed 42)."""

    def __init__(self, temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None) -> None:
        p = L.params_init(L.SamplerParams, "mop_sampler_params_init_sized")
        L.fill_params(p, dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
                      "Sampler")
        self.params = {k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "seed")}
        self._h = L.create("mop_sampler", lambda out: L.fn("mop_sampler_create")(byref(p), out))

    def sample(self, logits: Any) -> int:
        """Draw one token id from a 1-D row of logits (float32; other float
        dtypes are converted)."""
        a = L.float32_in(logits, "logits", ndim=1)
        tok = c_int32(0)
        n = L.check_c_int("logits size", a.size)
        L.check(L.call("mop_sampler_sample", self, L.ptr(a, c_float), n, byref(tok)))
        return int(tok.value)


# ---------------------------------------------------------------------------


class Context(L.Closable):
    """Inference state on a model (``mop_ctx``): KV cache and scratch. One
    thread at a time. Holds its own C reference on the model, so the Model may
    be closed first.

    Logits: :meth:`decode` returns a **copy** (safe to keep). :meth:`logits`
    with ``copy=False`` returns a zero-copy, read-only view of the C buffer that
    is valid only until the next call on this context.

    Every parameter after ``model`` is a field of ``mop_ctx_params``; None
    keeps the library's default (in brackets).

    :param model: the model (the context holds its own reference)
    :param n_ctx: KV cache capacity in tokens, at most the model's [2048]
    :param n_batch: most tokens one forward call processes [512]
    :param n_threads: compute threads, 0 = all cores [0]
    :raises MopError: values the library rejects
    """

    def __init__(self, model: Model, n_ctx: Optional[int] = None,
                 n_batch: Optional[int] = None, n_threads: Optional[int] = None) -> None:
        p = L.params_init(L.CtxParams, "mop_ctx_params_init_sized")
        L.fill_params(p, L.passed_fields(locals(), L.CtxParams), "context")
        self._h = L.create("mop_ctx", lambda out: L.call("mop_ctx_create", model, byref(p), out))
        self.model = model
        self.n_ctx, self.n_batch, self.n_threads = p.n_ctx, p.n_batch, p.n_threads
        self.n_vocab = model.info.n_vocab

    def reset(self) -> None:
        """Forget all cached tokens."""
        L.call("mop_ctx_reset", self)

    # -- a mixture attached (mop_ctx_set_mixture) --------------------------------
    def set_mixture(self, mixture: Optional["Mixture"]) -> None:
        """Attach ``mixture`` (None = the base model); the context is reset.
        Afterwards :meth:`decode`, :meth:`nll`, :meth:`perplexity`,
        :meth:`generate` run with it: the gate reads the first decode after a
        reset (the prompt). The context keeps the mixture's C handle alive
        while it is attached (also after ``mixture.close()``). One mixture may
        be attached to contexts in several threads at once."""
        L.check(L.call("mop_ctx_set_mixture", self, mixture))
        self._mixture = mixture
        self._mixture_h = mixture._h if mixture is not None else None

    @property
    def mixture(self) -> Optional["Mixture"]:
        """The attached mixture (mop_ctx_get_mixture), or None."""
        p = L.call("mop_ctx_get_mixture", self)
        return getattr(self, "_mixture", None) if p else None

    def gate_weights(self) -> np.ndarray:
        """Gate weights (K,) of the current sequence (mop_ctx_gate_weights);
        MopError MOP_E_STATE without a mixture or before the first decode."""
        n = c_int32(0)
        w = np.zeros(256, dtype=np.float32)
        L.check(L.call("mop_ctx_gate_weights", self, L.ptr(w, c_float), 256, byref(n)))
        return w[:n.value].copy()

    @property
    def n_past(self) -> int:
        """Tokens in the KV cache."""
        return int(L.call("mop_ctx_n_past", self))

    def decode(self, ids: TokenIds, all_logits: bool = False) -> np.ndarray:
        """Run ``ids`` after the cached tokens. Returns a copy of the logits:
        shape (n_vocab,) for the last token, or (len(ids), n_vocab) with
        ``all_logits``."""
        a = L.int32_array(ids, "ids")
        if a.size < 1:
            raise L.shape_error("ids: decode needs at least one token")
        n_ids = L.check_c_int("ids size", a.size)
        L.check(L.call("mop_ctx_decode", self, L.ptr(a, c_int32), n_ids,
                                         LOGITS_ALL if all_logits else LOGITS_LAST))
        out = self.logits(copy=True)
        return out if all_logits else out[-1]

    def logits(self, copy: bool = True) -> np.ndarray:
        """Logits of the last decode, (n_rows, n_vocab). ``copy=False``: a
        read-only view into the context, valid until the next call on it."""
        lp = ctypes.POINTER(c_float)()
        rows = c_int32(0)
        with L.using(self) as (h,):  # self._h is set while in use
            L.check(L.fn("mop_ctx_get_logits")(h, byref(lp), byref(rows)))
            n = rows.value * self.n_vocab
            addr = ctypes.cast(lp, ctypes.c_void_p).value or 0
            v = L.view(self._h, addr, n, c_float, (rows.value, self.n_vocab), writable=False)
        return v.copy() if copy else v

    def nll(self, ids: TokenIds, return_total: bool = False) -> Any:
        """Per-token negative log-likelihood from an empty cache:
        nll[i] = -log p(ids[i+1] | ids[..i]), float32 array of len(ids)-1.
        With ``return_total`` also the float64 sum: (nll, total)."""
        a = L.int32_array(ids, "ids")
        out = np.empty(max(0, a.size - 1), dtype=np.float32)
        total = c_double(0)
        n_ids = L.check_c_int("ids size", a.size)
        L.check(L.call("mop_ctx_nll", self, L.ptr(a, c_int32), n_ids,
                                      L.ptr(out, c_float), byref(total)))
        return (out, float(total.value)) if return_total else out

    def perplexity(self, ids: TokenIds, window: int = 0,
                   progress: Optional[Callable[[int, int], Any]] = None) -> float:
        """exp(mean NLL) over non-overlapping windows of ``window`` tokens
        (0 = n_ctx); the first token of each window is context only."""
        a = L.int32_array(ids, "ids")
        guard = L.CallbackGuard()
        cb = L.progress_callback(progress, guard)
        ppl = c_double(0)
        n_ids = L.check_c_int("ids size", a.size)
        window = L.check_c_int("window", window)
        status = L.call("mop_ctx_perplexity", self, L.ptr(a, c_int32), n_ids, window,
                                              cb, None, byref(ppl))
        guard.reraise()
        L.check(status)
        return float(ppl.value)

    # -- generation ------------------------------------------------------------
    def _run_generate(self, prompt: np.ndarray, max_new: int, sampler: Sampler,
                      mixture: Optional["Mixture"], on_token: Callable[[int], Any]) -> int:
        guard = L.CallbackGuard()
        cb = L.TOKEN_FN(lambda tok, user: guard.run(lambda: on_token(int(tok))))
        n = c_int32(0)
        n_prompt = L.check_c_int("prompt_ids size", prompt.size)
        max_new = L.check_c_int("max_new", max_new)
        if mixture is None:
            status = L.call("mop_generate", self, sampler, L.ptr(prompt, c_int32),
                                            n_prompt, max_new, cb, None, byref(n))
        else:
            status = L.call("mop_mixture_generate", self, mixture, sampler,
                                                    L.ptr(prompt, c_int32), n_prompt,
                                                    max_new, cb, None, byref(n))
        guard.reraise()
        L.check(status)
        return int(n.value)

    def generate(self, prompt_ids: TokenIds, max_new: int = 64,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 mixture: Optional["Mixture"] = None, sampler: Optional[Sampler] = None,
                 on_token: Optional[Callable[[int], Any]] = None) -> np.ndarray:
        """Generate up to ``max_new`` tokens after the prompt (the cache is reset
        first). Stops at end-of-sequence/end-of-turn (not returned), the context
        end, or when ``on_token``(token) returns True. With ``mixture`` the
        prompt mixture is applied (mop_mixture_generate).

        Sampling: pass a :class:`Sampler` (its random state continues across
        calls), or temperature/top_k/top_p/seed for a fresh one (None = C
        default; temperature=0 is greedy). Returns the generated ids as an
        int32 array (like :meth:`Model.tokenize`)."""
        a = L.int32_array(prompt_ids, "prompt_ids")
        out: list[int] = []

        def collect(tok: int) -> Any:
            out.append(tok)
            return on_token(tok) if on_token is not None else False

        own = sampler is None
        s = Sampler(temperature, top_k, top_p, seed) if own else sampler
        try:
            self._run_generate(a, max_new, s, mixture, collect)
        finally:
            if own:
                s.close()
        return np.array(out, dtype=np.int32)

    def generate_iter(self, prompt_ids: TokenIds, max_new: int = 64, *,
                      temperature: Optional[float] = None, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, seed: Optional[int] = None,
                      mixture: Optional["Mixture"] = None,
                      sampler: Optional[Sampler] = None) -> Iterator[int]:
        """Streaming form of :meth:`generate` (same parameters, less
        ``on_token``): yields each token id (an int) as it is made.
        The C call runs in a worker thread; leaving the loop early stops it.
        Do not use this context elsewhere until the iterator is exhausted or closed.
        The running call holds its handles (context, sampler, mixture) in use:
        close() on them meanwhile is deferred until the iterator is exhausted,
        closed or garbage-collected."""
        a = L.int32_array(prompt_ids, "prompt_ids")
        own = sampler is None
        s = Sampler(temperature, top_k, top_p, seed) if own else sampler
        q: "queue.Queue[Any]" = queue.Queue()
        stop = threading.Event()
        done = object()
        errors: list[BaseException] = []

        def on_token(tok: int) -> bool:
            q.put(tok)
            return stop.is_set()

        def worker() -> None:
            try:
                self._run_generate(a, max_new, s, mixture, on_token)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                errors.append(e)
            finally:
                q.put(done)

        t = threading.Thread(target=worker, name="libmop-generate", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                yield item
            if errors:
                raise errors[0]
        finally:
            stop.set()
            t.join()
            if own:
                s.close()
