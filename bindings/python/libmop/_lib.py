"""Loading libmop.so, ctypes mirrors of the public structs, prototypes of every
public function, status checking, handle lifetimes and array conversion.

Only the public C API (include/libmop/*.h) is used. Functions that the loaded
library does not export (a partial build, an older library) are reported by
:func:`fn` as ``NotImplementedError`` naming the missing C symbol, so the rest
of the package keeps working.
"""
from __future__ import annotations

import ctypes
import operator
import os
import pathlib
import subprocess
import threading
import weakref
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int,
                    c_int32, c_int64, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p)
from typing import Any, Callable, Optional

import numpy as np

from ._errors import MopError

__all__ = ["lib", "library_path", "has", "fn", "check"]

# The package's version; a test keeps it equal to include/libmop/mop_version.h.
VERSION = "0.2.0"
VERSION_MAJOR = int(VERSION.split(".")[0])

# ---------------------------------------------------------------------------
# Finding the library


def _candidates() -> list[tuple[str, pathlib.Path]]:
    """Where to look, in order, as (how it was found, path).

    1. ``$LIBMOP_LIBRARY``: an explicit file; when set, nothing else is tried.
    2. bundled: ``libmop.so`` inside this package (what ``pip install`` builds
       and puts in the wheel).
    3. pkg-config: ``$(pkg-config --variable=libdir libmop)/libmop.so.0`` (a
       ``meson install``).
    4. ``$LIBMOP_BUILD_DIR/libmop.so``.
    5. build tree: ``build/libmop.so`` in the source checkout this package
       lies in (the nearest parent directory that has one).
    6. system: the dynamic loader's own search for ``libmop.so.0``
       (``LD_LIBRARY_PATH``, ``ldconfig``'s cache).
    """
    found: list[tuple[str, pathlib.Path]] = []
    env = os.environ.get("LIBMOP_LIBRARY")
    if env:
        found.append(("LIBMOP_LIBRARY", pathlib.Path(env)))
        return found  # an explicit choice is never silently replaced
    here = pathlib.Path(__file__).resolve().parent
    found.append(("bundled", here / "libmop.so"))
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "libmop"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            found.append(("pkg-config libdir", pathlib.Path(out.stdout.strip()) / "libmop.so.0"))
        else:
            found.append(("pkg-config", pathlib.Path("<no libmop.pc on the pkg-config path>")))
    except (OSError, subprocess.SubprocessError):
        found.append(("pkg-config", pathlib.Path("<pkg-config not runnable>")))
    bdir = os.environ.get("LIBMOP_BUILD_DIR")
    if bdir:
        found.append(("LIBMOP_BUILD_DIR", pathlib.Path(bdir) / "libmop.so"))
    tree = [parent / "build" / "libmop.so" for parent in here.parents
            if (parent / "meson.build").exists()]
    hit = next((c for c in tree if c.exists()), None)
    if hit is not None:
        found.append(("build tree", hit))
    elif tree:
        found.extend(("build tree", c) for c in tree)
    else:
        found.append(("build tree", pathlib.Path(f"<{here} is not inside a libmop source tree>")))
    found.append(("system loader", pathlib.Path("libmop.so.0")))
    return found


def _load() -> tuple[ctypes.CDLL, str]:
    tried: list[str] = []
    for how, path in _candidates():
        if how == "system loader":   # a bare name: the loader searches for it
            try:
                return ctypes.CDLL(str(path)), str(path)
            except OSError as e:
                tried.append(f"  {how}: {path} ({e})")
            continue
        if not path.exists():
            tried.append(f"  {how}: {path} (not found)")
            continue
        try:
            return ctypes.CDLL(str(path)), str(path)
        except OSError as e:
            tried.append(f"  {how}: {path} ({e})")
    raise ImportError(
        "libmop: cannot load the shared library libmop.so. Tried, in order:\n" + "\n".join(tried)
        + "\nInstall the package with `pip install ./bindings/python` (it builds and bundles "
        "the library), set LIBMOP_LIBRARY to the library file, install libmop (meson install, "
        "so that `pkg-config --variable=libdir libmop` finds it), or build it in the source "
        "tree (`meson setup build && ninja -C build`; LIBMOP_BUILD_DIR selects another build "
        "directory).")


lib, library_path = _load()

# ---------------------------------------------------------------------------
# Public structs (field for field as in the headers)

PROGRESS_FN = CFUNCTYPE(c_int, c_uint64, c_uint64, c_void_p)
TOKEN_FN = CFUNCTYPE(c_int, c_int32, c_void_p)
LOG_FN = CFUNCTYPE(None, c_int32, c_char_p, c_void_p)


class ModelParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_threads", c_int32), ("use_mmap", c_int32),
                ("progress", PROGRESS_FN), ("progress_user", c_void_p)]


class ModelInfoC(Structure):
    _fields_ = [("struct_size", c_uint32), ("arch", c_char * 32), ("name", c_char * 128),
                ("n_layer", c_int32), ("n_embd", c_int32), ("n_ff", c_int32),
                ("n_head", c_int32), ("n_head_kv", c_int32), ("head_dim", c_int32),
                ("n_vocab", c_int32), ("n_ctx_train", c_int32), ("rope_theta", c_float),
                ("rope_scale", c_float), ("norm_eps", c_float), ("tied_embeddings", c_int32),
                ("n_params", c_uint64), ("weight_bytes", c_uint64), ("file_bytes", c_uint64),
                ("file_type", c_char * 16)]


class TensorInfoC(Structure):
    _fields_ = [("struct_size", c_uint32), ("name", c_char_p), ("file_type", c_char_p),
                ("n_dims", c_int32), ("dims", c_int64 * 4)]


class ChatMessage(Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class CtxParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_ctx", c_int32), ("n_batch", c_int32),
                ("n_threads", c_int32)]


class SamplerParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("temperature", c_float), ("top_k", c_int32),
                ("top_p", c_float), ("seed", c_uint64)]


class MixtureParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_experts", c_int32), ("prompt_len", c_int32),
                ("gate_layer", c_int32), ("inject_layer", c_int32), ("gate_hidden", c_int32),
                ("gate_act", c_int32), ("gate_temperature", c_float), ("top_k", c_int32),
                ("combine", c_int32), ("gate_mode", c_int32), ("init", c_int32),
                ("init_std", c_float), ("seed", c_uint64), ("gate_pool", c_int32),
                ("gate_norm", c_int32), ("gate_bias", c_int32), ("n_shared", c_int32),
                ("expert_attention", c_int32), ("top_k_renorm", c_int32)]


class GatePretrainParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("lr", c_float), ("weight_decay", c_float),
                ("batch_size", c_int32), ("max_epochs", c_int32), ("patience", c_int32),
                ("seed", c_uint64), ("progress", c_void_p), ("progress_user", c_void_p)]


class GatePretrainResultC(Structure):
    _fields_ = [("struct_size", c_uint32), ("epochs", c_int32), ("best_epoch", c_int32),
                ("train_accuracy", c_float), ("val_accuracy", c_float), ("val_loss", c_double)]


class DecoderParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_seq_max", c_int32), ("n_ctx", c_int32),
                ("n_batch", c_int32), ("n_threads", c_int32)]


class DecoderBatchC(Structure):
    _fields_ = [("struct_size", c_uint32), ("n", c_int32), ("seq", POINTER(c_int32)),
                ("n_tokens", POINTER(c_int32)), ("tokens", POINTER(POINTER(c_int32))),
                ("token", POINTER(c_int32))]


class MixtureTensorInfoC(Structure):
    _fields_ = [("struct_size", c_uint32), ("name", c_char_p), ("offset", c_size_t),
                ("size", c_size_t), ("n_dims", c_int32), ("dims", c_int64 * 4)]


class BatchC(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_seq", c_int32), ("seq_len", c_int32),
                ("tokens", POINTER(c_int32)), ("lengths", POINTER(c_int32)),
                ("loss_mask", POINTER(c_uint8)), ("task", POINTER(c_int32)),
                ("states", POINTER(POINTER(c_float))), ("gate_input", POINTER(c_float))]


class LossParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("load_balance", c_float),
                ("gate_supervision", c_float), ("gate_only", c_int32), ("prox_mu", c_float)]


class LossResultC(Structure):
    _fields_ = [("struct_size", c_uint32), ("loss", c_double), ("nll_sum", c_double),
                ("n_targets", c_int64)]


class AdamWParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("lr", c_float), ("beta1", c_float),
                ("beta2", c_float), ("eps", c_float), ("weight_decay", c_float),
                ("clip_norm", c_float), ("warmup_steps", c_int32), ("total_steps", c_int32),
                ("min_lr_ratio", c_float)]


class PruneParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("method", c_int32), ("pattern", c_int32),
                ("n", c_int32), ("m", c_int32), ("ratio", c_float), ("granularity", c_int32),
                ("layer_begin", c_int32), ("layer_end", c_int32),
                ("calib_tokens", POINTER(c_int32)), ("n_calib_tokens", c_int64),
                ("calib_seq_len", c_int32), ("sparsegpt_damp", c_float),
                ("sparsegpt_block", c_int32), ("lm_head_format", c_int32),
                ("n_threads", c_int32), ("progress", PROGRESS_FN), ("progress_user", c_void_p)]


class UpdateTensorInfoC(Structure):
    _fields_ = [("struct_size", c_uint32), ("name", c_char_p), ("data", POINTER(c_float)),
                ("size", c_int64), ("n_dims", c_int32), ("dims", c_int64 * 4)]


class UpdateHeaderC(Structure):
    _fields_ = [("struct_size", c_uint32), ("kind", c_int32), ("round", c_int64),
                ("client_id", c_uint64), ("n_samples", c_double)]


# ---------------------------------------------------------------------------
# Prototypes: name -> (restype, argtypes). c_int results of fallible calls are
# mop_status values.

P = POINTER
vp = c_void_p
st = c_int
_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    # mop_core.h
    "mop_status_name": (c_char_p, [c_int]),
    "mop_status_str": (c_char_p, [c_int]),
    "mop_last_error": (c_char_p, []),
    "mop_version": (c_char_p, []),
    "mop_version_number": (c_uint32, []),
    "mop_set_log_callback": (None, [LOG_FN, vp]),
    "mop_model_params_init_sized": (st, [P(ModelParams), c_size_t]),
    "mop_model_default_params": (ModelParams, []),  # deprecated by-value shim, not called
    "mop_model_load": (st, [c_char_p, P(ModelParams), P(vp)]),
    "mop_model_free": (None, [vp]),
    "mop_model_get_info": (st, [vp, P(ModelInfoC)]),
    "mop_model_tensor_count": (c_int32, [vp]),
    "mop_model_tensor_get_info": (st, [vp, c_int32, P(TensorInfoC)]),
    "mop_model_special_token": (c_int32, [vp, c_int32]),
    "mop_model_eog_tokens": (st, [vp, P(c_int32), c_size_t, P(c_size_t)]),
    "mop_model_is_eog": (c_int32, [vp, c_int32]),
    "mop_tokenize": (st, [vp, c_char_p, c_size_t, c_int32, P(c_int32), c_size_t, P(c_size_t)]),
    "mop_detokenize": (st, [vp, P(c_int32), c_size_t, c_int32, c_char_p, c_size_t,
                            P(c_size_t)]),
    "mop_chat_format": (st, [vp, P(ChatMessage), c_size_t, c_int32, c_char_p, c_size_t,
                             P(c_size_t)]),
    "mop_ctx_params_init_sized": (st, [P(CtxParams), c_size_t]),
    "mop_ctx_default_params": (CtxParams, []),  # deprecated by-value shim, not called
    "mop_ctx_create": (st, [vp, P(CtxParams), P(vp)]),
    "mop_ctx_free": (None, [vp]),
    "mop_ctx_reset": (None, [vp]),
    "mop_ctx_n_past": (c_int32, [vp]),
    "mop_ctx_decode": (st, [vp, P(c_int32), c_int32, c_int32]),
    "mop_ctx_get_logits": (st, [vp, P(P(c_float)), P(c_int32)]),
    "mop_ctx_nll": (st, [vp, P(c_int32), c_int32, P(c_float), P(c_double)]),
    "mop_ctx_perplexity": (st, [vp, P(c_int32), c_int32, c_int32, PROGRESS_FN, vp,
                                P(c_double)]),
    "mop_sampler_params_init_sized": (st, [P(SamplerParams), c_size_t]),
    "mop_sampler_default_params": (SamplerParams, []),  # deprecated by-value shim, not called
    "mop_sampler_create": (st, [P(SamplerParams), P(vp)]),
    "mop_sampler_free": (None, [vp]),
    "mop_sampler_sample": (st, [vp, P(c_float), c_int32, P(c_int32)]),
    "mop_generate": (st, [vp, vp, P(c_int32), c_int32, c_int32, TOKEN_FN, vp, P(c_int32)]),
    # mop_gate.h
    "mop_mixture_params_init_sized": (st, [P(MixtureParams), c_size_t]),
    "mop_mixture_default_params": (MixtureParams, []),  # deprecated by-value shim, not called
    "mop_mixture_create": (st, [vp, P(MixtureParams), P(vp)]),
    "mop_mixture_free": (None, [vp]),
    "mop_mixture_get_params": (st, [vp, P(MixtureParams)]),
    "mop_mixture_save": (st, [vp, c_char_p]),
    "mop_mixture_save_v2": (st, [vp, c_char_p, c_int32]),
    "mop_mixture_load": (st, [vp, c_char_p, P(vp)]),
    "mop_mixture_data": (st, [vp, P(P(c_float)), P(P(c_float)), P(c_size_t)]),
    "mop_mixture_n_params": (c_size_t, [vp]),
    "mop_mixture_zero_grad": (None, [vp]),
    "mop_mixture_tensor_count": (c_int32, [vp]),
    "mop_mixture_tensor_get_info": (st, [vp, c_int32, P(MixtureTensorInfoC)]),
    "mop_loss_params_init_sized": (st, [P(LossParams), c_size_t]),
    "mop_loss_default_params": (LossParams, []),  # deprecated by-value shim, not called
    "mop_mixture_forward_backward": (st, [vp, vp, P(BatchC), P(LossParams), P(LossResultC)]),
    "mop_mixture_evaluate": (st, [vp, P(vp), c_int32, P(BatchC), P(c_double), P(c_int32),
                                  P(c_float)]),
    "mop_mixture_gate": (st, [vp, vp, P(BatchC), P(c_float)]),
    "mop_mixture_gate_inputs": (st, [vp, vp, P(BatchC), P(c_float)]),
    "mop_mixture_gate_from_inputs": (st, [vp, P(c_float), c_int32, P(c_float)]),
    "mop_mixture_input_moments": (st, [P(c_float), c_int32, c_int32, P(c_double), P(c_double)]),
    "mop_mixture_set_input_stats": (st, [vp, c_double, P(c_double), P(c_double)]),
    "mop_mixture_get_input_stats": (st, [vp, P(P(c_float)), P(P(c_float))]),
    "mop_gate_pretrain_params_init_sized": (st, [P(GatePretrainParams), c_size_t]),
    "mop_gate_pretrain_params_init": (st, [P(GatePretrainParams)]),  # 0.2.0 symbol, not called
    "mop_mixture_pretrain_gate": (st, [vp, P(c_float), P(c_int32), c_int32, P(c_float),
                                       P(c_int32), c_int32, P(GatePretrainParams),
                                       P(GatePretrainResultC)]),
    "mop_mixture_init_experts": (st, [vp, vp, P(BatchC)]),
    "mop_mixture_inject_states": (st, [vp, vp, P(BatchC), P(P(c_float)), P(c_float)]),
    "mop_mixture_generate": (st, [vp, vp, vp, P(c_int32), c_int32, c_int32, TOKEN_FN, vp,
                                  P(c_int32)]),
    "mop_mixture_prepare": (st, [vp, vp]),
    "mop_ctx_set_mixture": (st, [vp, vp]),
    "mop_ctx_get_mixture": (vp, [vp]),
    "mop_ctx_gate_weights": (st, [vp, P(c_float), c_int32, P(c_int32)]),
    "mop_decoder_params_init_sized": (st, [P(DecoderParams), c_size_t]),
    "mop_decoder_create": (st, [vp, P(DecoderParams), P(vp)]),
    "mop_decoder_free": (None, [vp]),
    "mop_decoder_add": (st, [vp, vp, P(c_int32)]),
    "mop_decoder_remove": (st, [vp, c_int32]),
    "mop_decoder_step": (st, [vp, P(DecoderBatchC)]),
    "mop_decoder_get_logits": (st, [vp, c_int32, P(P(c_float))]),
    "mop_decoder_n_past": (c_int32, [vp, c_int32]),
    "mop_mixture_set_prox_reference": (st, [vp]),
    "mop_tokenize_example": (st, [vp, c_char_p, c_char_p, P(c_int32), P(c_uint8), c_size_t,
                                  P(c_size_t)]),
    "mop_tokenize_example_v2": (st, [vp, c_char_p, c_char_p, c_char_p, P(c_int32), P(c_uint8),
                                     c_size_t, P(c_size_t)]),
    "mop_adamw_params_init_sized": (st, [P(AdamWParams), c_size_t]),
    "mop_adamw_default_params": (AdamWParams, []),  # deprecated by-value shim, not called
    "mop_optimizer_create": (st, [c_size_t, P(AdamWParams), P(vp)]),
    "mop_optimizer_free": (None, [vp]),
    "mop_optimizer_step": (st, [vp, P(c_float), P(c_float), c_size_t, c_float, P(c_float),
                                P(c_float)]),
    "mop_optimizer_lr_at": (c_float, [vp, c_int64]),
    # mop_sparse.h
    "mop_prune_params_init_sized": (st, [P(PruneParams), c_size_t]),
    "mop_prune_default_params": (PruneParams, []),  # deprecated by-value shim, not called
    "mop_model_prune": (st, [vp, P(PruneParams)]),
    "mop_model_sparsity": (st, [vp, P(c_double), P(c_char_p)]),
    "mop_model_save": (st, [vp, c_char_p]),
    "mop_model_save_v2": (st, [vp, c_char_p, c_int32]),
    # mop_fed.h: updates
    "mop_update_create": (st, [c_int32, c_int64, c_uint64, c_double, P(vp)]),
    "mop_update_free": (None, [vp]),
    "mop_update_add_tensor": (st, [vp, c_char_p, P(c_float), c_int32, P(c_int64)]),
    "mop_update_tensor_count": (c_int32, [vp]),
    "mop_update_get_tensor": (st, [vp, c_int32, c_char_p, P(UpdateTensorInfoC)]),
    "mop_update_get_header": (st, [vp, P(UpdateHeaderC)]),
    "mop_update_set_meta": (st, [vp, c_char_p, c_char_p]),
    "mop_update_get_meta": (st, [vp, c_char_p, P(c_char_p)]),
    "mop_update_serialize": (st, [vp, P(c_uint8), c_size_t, P(c_size_t)]),
    "mop_update_parse": (st, [P(c_uint8), c_size_t, P(vp)]),
    "mop_update_from_mixture": (st, [vp, vp, c_int64, c_uint64, c_double, P(c_float), P(vp)]),
    "mop_update_apply": (st, [vp, vp, c_float]),
}

_bound: dict[str, Any] = {}


def has(name: str) -> bool:
    """True if the loaded library exports C symbol ``name``."""
    return hasattr(lib, name)


def fn(name: str) -> Any:
    """The prototyped C function ``name``, or NotImplementedError if the loaded
    library does not export it (a partial or older build)."""
    f = _bound.get(name)
    if f is not None:
        return f
    if not hasattr(lib, name):
        raise NotImplementedError(f"libmop C symbol {name} is not exported by {library_path} "
                                  "(this part of the C library is not built yet)")
    f = getattr(lib, name)
    if name in _PROTOS:
        f.restype, f.argtypes = _PROTOS[name][0], _PROTOS[name][1]
    _bound[name] = f
    return f


def require(*names: str) -> None:
    """Raise NotImplementedError naming the first missing C symbol."""
    for n in names:
        fn(n)


def last_error() -> str:
    return (fn("mop_last_error")() or b"").decode("utf-8", "replace")


def status_name(status: int) -> str:
    return fn("mop_status_name")(status).decode()


def check(status: int) -> None:
    """Raise MopError for a non-OK mop_status (message = mop_last_error())."""
    if status != 0:
        raise MopError(status_name(status), last_error(), code=status)


def shape_error(message: str) -> MopError:
    """A shape problem the bindings detect before calling C (C would say the same)."""
    return MopError("MOP_E_SHAPE", message, code=-6)


# ---------------------------------------------------------------------------
# Handle lifetimes

_live_lock = threading.Lock()
_live: dict[str, int] = {}


def live_handles() -> dict[str, int]:
    """Number of C handles currently alive, per kind (e.g. {"mop_ctx": 0})."""
    with _live_lock:
        return {k: v for k, v in _live.items()}


def _release(kind: str, free_name: str, ptr: int) -> None:
    fn(free_name)(ptr)
    with _live_lock:
        _live[kind] -= 1


class Handle:
    """Owns one C handle; its free function runs exactly once, when the last
    Python reference to this box goes away (the wrapper object, or a numpy view
    into memory the handle owns) or at interpreter exit."""

    __slots__ = ("ptr", "kind", "_fin", "__weakref__")

    def __init__(self, ptr: int, kind: str) -> None:
        self.ptr = c_void_p(ptr)
        self.kind = kind
        with _live_lock:
            _live[kind] = _live.get(kind, 0) + 1
        self._fin = weakref.finalize(self, _release, kind, kind + "_free", ptr)


_use_lock = threading.Lock()


class Closable:
    """Base of the wrapper classes: ``close()``, context manager, handle access.

    Lifetimes during calls: every C call that uses a handle holds a *use* on
    its wrapper for the length of the call (:func:`using`, :func:`call`: the
    one mechanism, entered by every call in the package). ``close()`` while
    uses are held — from an ``on_token``/``progress`` callback of that call,
    from another thread, or while a ``generate_iter()`` generator is
    suspended — is deferred: the object reads as closed at once and its handle
    is dropped when the last use is released."""

    _h: Optional[Handle] = None
    _kind = "handle"
    _uses = 0
    _close_pending = False

    @property
    def _ptr(self) -> c_void_p:
        """The raw handle pointer; ValueError once closed. Pass wrappers to C
        through :func:`call` / :func:`using` instead, which keep the handle
        alive for the call."""
        h = self._h
        if h is None or self._close_pending:
            raise ValueError(f"{type(self).__name__} is closed")
        return h.ptr

    @property
    def closed(self) -> bool:
        return self._h is None or self._close_pending

    def _acquire(self) -> Handle:
        with _use_lock:
            h = self._h
            if h is None or self._close_pending:
                raise ValueError(f"{type(self).__name__} is closed")
            self._uses += 1
            return h

    def _release_use(self) -> None:
        with _use_lock:
            self._uses -= 1
            if self._uses or not self._close_pending:
                return
            h, self._h = self._h, None  # the deferred close()
            self._close_pending = False
        del h  # the C free (if no view is left) runs here, outside the lock

    def close(self) -> None:
        """Drop this object's reference on the C handle. The handle is freed now,
        or — if numpy views into its memory are still alive — when the last
        view goes. During a C call that uses this object (close() from its
        callback, from another thread, or while a generate_iter() generator
        is suspended) the drop is deferred until the call returns; the object
        reads as closed at once. Calling close() twice is harmless."""
        with _use_lock:
            if self._uses:
                self._close_pending = True
                return
            h, self._h = self._h, None
        del h

    def __bool__(self) -> bool:  # classes with __len__ stay truthy
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class using:
    """``with using(a, b, None) as (pa, pb, pn):`` holds a use on each wrapper
    (None passes through as a NULL pointer) until the block ends, and gives
    their raw pointers. ValueError if one is closed (nothing is held then)."""

    __slots__ = ("_objs", "_held")

    def __init__(self, *objs: Optional[Closable]) -> None:
        self._objs = objs
        self._held: list[Closable] = []

    def __enter__(self) -> tuple[Optional[c_void_p], ...]:
        ptrs = []
        try:
            for o in self._objs:
                if o is None:
                    ptrs.append(None)
                    continue
                ptrs.append(o._acquire().ptr)
                self._held.append(o)
        except BaseException:
            self.__exit__()
            raise
        return tuple(ptrs)

    def __exit__(self, *exc: Any) -> None:
        held, self._held = self._held, []
        for o in held:
            o._release_use()


def call(name: str, *args: Any) -> Any:
    """``fn(name)(*args)`` where every :class:`Closable` argument is passed as
    its pointer and held in use (:class:`using`) until the call returns."""
    objs = [a for a in args if isinstance(a, Closable)]
    if not objs:
        return fn(name)(*args)
    with using(*objs) as ptrs:
        it = iter(ptrs)
        return fn(name)(*[next(it) if isinstance(a, Closable) else a for a in args])


def create(kind: str, call: Callable[[Any], int]) -> Handle:
    """Run a ``*_create``/``*_load`` style call with an out-pointer; wrap the result."""
    out = c_void_p()
    check(call(ctypes.byref(out)))
    if not out.value:
        raise MopError("MOP_E_INTERNAL", f"{kind}: creation returned MOP_OK but no handle")
    return Handle(out.value, kind)


# ---------------------------------------------------------------------------
# Arrays and strings


def int32_array(x: Any, what: str, ndim: int = 1) -> np.ndarray:
    """x as a C-contiguous int32 array (no copy if it already is one).

    TypeError for non-integer data, MopError(MOP_E_SHAPE) for the wrong number
    of dimensions, OverflowError for values outside int32.
    """
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":
        a = a.astype(np.int32)  # [] -> float64 in numpy
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer token ids, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise shape_error(f"{what}: expected {ndim}-D array, got shape {a.shape}")
    if a.dtype != np.int32:
        if a.size and (a.min() < -2**31 or a.max() >= 2**31):
            raise OverflowError(f"{what}: values outside int32")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


def float32_in(x: Any, what: str, ndim: Optional[int] = None) -> np.ndarray:
    """Read-only float input as C-contiguous float32 (copied only if needed)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{what}: expected a float array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise shape_error(f"{what}: expected {ndim}-D array, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def float32_inout(x: Any, what: str) -> np.ndarray:
    """A buffer C updates in place: must already be a writable, C-contiguous
    float32 numpy array (anything else would silently update a copy)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what}: expected a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what}: expected dtype float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise TypeError(f"{what}: array must be C-contiguous")
    if not x.flags.writeable:
        raise TypeError(f"{what}: array is read-only")
    return x


def ptr(a: Optional[np.ndarray], ctype: Any) -> Any:
    """Pointer to a numpy array's data (NULL for None)."""
    if a is None:
        return None
    return a.ctypes.data_as(POINTER(ctype))


def cstr(s: Any, what: str) -> bytes:
    """str/bytes/PathLike -> bytes for a NUL-terminated C string."""
    if isinstance(s, os.PathLike):
        s = os.fsencode(s)
    if isinstance(s, str):
        s = s.encode("utf-8")
    if not isinstance(s, (bytes, bytearray)):
        raise TypeError(f"{what}: expected str, bytes or path, got {type(s).__name__}")
    if b"\0" in s:
        raise ValueError(f"{what}: embedded NUL character")
    return bytes(s)


def view(owner: Any, address: int, count: int, ctype: Any = c_float,
         shape: Optional[tuple[int, ...]] = None, writable: bool = True) -> np.ndarray:
    """Zero-copy numpy view of C memory that keeps ``owner`` (a Handle) alive."""
    dtype = {c_float: np.float32, c_int32: np.int32}[ctype]
    if count == 0:
        arr = np.zeros(0, dtype=dtype)
    else:
        buf = (ctype * count).from_address(address)
        buf._owner = owner  # the view's base chain holds the handle
        arr = np.frombuffer(buf, dtype=dtype)
    if shape is not None:
        arr = arr.reshape(shape)
    if not writable:
        arr.flags.writeable = False
    return arr


# Ranges of the C integer types the prototypes use, as (name, lo, hi).
INT32 = ("int32", -2**31, 2**31 - 1)
UINT32 = ("uint32", 0, 2**32 - 1)
INT64 = ("int64", -2**63, 2**63 - 1)
UINT64 = ("uint64", 0, 2**64 - 1)
SIZE = ("size_t", 0, 2**(8 * ctypes.sizeof(c_size_t)) - 1)
_CTYPE_RANGES = {c_int32: INT32, c_uint32: UINT32, c_int64: INT64, c_uint64: UINT64,
                 c_size_t: SIZE, c_int: INT32}


def check_int(what: str, value: Any, lo: int, hi: int, ctype: str = "") -> int:
    """``value`` as a Python int in [lo, hi], for an integer argument or field
    passed to C (ctypes would silently keep only the low bits: 2**40 -> 0,
    -1 -> 2**64 - 1). TypeError for a non-integer (floats are not truncated),
    OverflowError naming ``what``, the value and the range otherwise."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what}: expected an integer, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        kind = f" ({ctype})" if ctype else ""
        raise OverflowError(f"{what}: {v} is out of range{kind}: must be in [{lo}, {hi}]")
    return v


def check_c_int(what: str, value: Any, rng: tuple[str, int, int] = INT32) -> int:
    """check_int over the whole range of a C type (INT32, UINT64, SIZE, ...)."""
    return check_int(what, value, rng[1], rng[2], rng[0])


def enum_value(value: Any, table: dict[str, int], what: str) -> int:
    """An enum given as its int or as a name (case-insensitive)."""
    if isinstance(value, str):
        key = value.lower()
        if key not in table:
            raise ValueError(f"{what}: unknown value {value!r}; one of {sorted(table)}")
        return table[key]
    return check_c_int(what, value)


def params_init(cls: Any, name: str) -> Any:
    """A new params struct of ctypes class ``cls`` filled with the C defaults by
    ``name`` (a mop_X_params_init_sized call, given the size of ``cls``, so the
    library writes no more than this layout holds)."""
    p = cls()
    check(fn(name)(ctypes.byref(p), ctypes.sizeof(p)))
    return p


def fill_params(struct: Structure, params: dict[str, Any], what: str,
                enums: Optional[dict[str, dict[str, int]]] = None) -> Structure:
    """Set fields of a params struct from keyword arguments; unknown names are a
    TypeError (so a typo never silently keeps a default)."""
    types = {f[0]: f[1] for f in struct._fields_}
    names = set(types) - {"struct_size", "progress", "progress_user"}
    for k, v in params.items():
        if k not in names:
            raise TypeError(f"{what}: unknown parameter {k!r}; known: {sorted(names)}")
        if v is None:
            continue
        if enums and k in enums:
            v = enum_value(v, enums[k], f"{what}.{k}")
        elif isinstance(v, bool):
            v = int(v)
        rng = _CTYPE_RANGES.get(types[k])
        if rng is not None:
            v = check_c_int(f"{what}.{k}", v, rng)
        setattr(struct, k, v)
    return struct


def passed_fields(args: dict[str, Any], cls: Any) -> dict[str, Any]:
    """The entries of ``args`` (a function's ``locals()``, taken first thing)
    that name a settable field of the params struct class ``cls`` (not its
    size, callbacks or pointers, which the caller fills itself); for
    :func:`fill_params`, which keeps the C default for each one left as None.
    Constructors that mirror a C params struct name every settable field as a
    keyword-only parameter defaulting to None, and pass them on with this, so
    the defaults live in C alone and no parameter is forgotten."""
    names = {name for name, ctype in cls._fields_
             if name not in ("struct_size", "progress", "progress_user")
             and not issubclass(ctype, (ctypes._Pointer, ctypes._CFuncPtr, c_void_p))}
    return {k: v for k, v in args.items() if k in names}


class CallbackGuard:
    """Wraps a Python callable for a C callback: exceptions stop the C call
    (non-zero return) and are re-raised after it returns."""

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None

    def run(self, f: Callable[[], Any]) -> int:
        if self.error is not None:
            return 1
        try:
            return 1 if f() else 0
        except BaseException as e:  # noqa: BLE001 - re-raised by reraise()
            self.error = e
            return 1

    def reraise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err


def progress_callback(progress: Optional[Callable[[int, int], Any]], guard: CallbackGuard) -> Any:
    """ctypes progress function: ``progress``(done, total) returning True cancels."""
    if progress is None:
        return PROGRESS_FN()
    return PROGRESS_FN(lambda done, total, user: guard.run(lambda: progress(done, total)))


# ---------------------------------------------------------------------------
# Version check at import

_lib_number = int(fn("mop_version_number")())
lib_version = fn("mop_version")().decode()
if _lib_number // 10000 != VERSION_MAJOR:
    raise ImportError(f"libmop: the Python package is version {VERSION} but {library_path} is "
                      f"version {lib_version}; their major versions must match")
