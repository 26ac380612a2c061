"""Pruning a loaded model and saving it compactly (include/libmop/mop_sparse.h)."""
from __future__ import annotations

from ctypes import byref, c_char_p, c_double, c_int32
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import _lib as L

if TYPE_CHECKING:
    from .core import Model

__all__ = ["prune", "sparsity", "METHOD", "PATTERN", "GRANULARITY", "LM_HEAD"]

METHOD = {"magnitude": 0, "wanda": 1, "sparsegpt": 2}
PATTERN = {"unstructured": 0, "nm": 1}
GRANULARITY = {"row": 0, "layer": 1}
LM_HEAD = {"f32": 0, "f16": 1, "q8_0": 2}
_ENUMS = {"method": METHOD, "pattern": PATTERN, "granularity": GRANULARITY,
          "lm_head_format": LM_HEAD}


def prune(model: "Model", progress: Optional[Callable[[int, int], Any]] = None,
          calib_tokens: Any = None, **params: Any) -> None:
    """Prune ``model`` in place (mop_model_prune).

    Keywords are the fields of mop_prune_params (None = C default: magnitude,
    2:4): method ("magnitude"/"wanda"/"sparsegpt"), pattern ("nm"/
    "unstructured"), n, m, ratio, granularity ("row"/"layer"), layer_begin,
    layer_end, calib_seq_len, sparsegpt_damp, sparsegpt_block, lm_head_format
    ("f32"/"f16"/"q8_0"), n_threads. ``calib_tokens``: token ids for Wanda and
    SparseGPT. ``progress``(done, total) per weight matrix; True cancels.
    MOP_E_STATE if a Context or Mixture still holds the model.
    """
    p = L.params_init(L.PruneParams, "mop_prune_params_init_sized")
    L.fill_params(p, params, "prune", _ENUMS)
    calib = None
    if calib_tokens is not None:
        calib = L.int32_array(calib_tokens, "calib_tokens")
        p.calib_tokens = L.ptr(calib, c_int32)
        p.n_calib_tokens = calib.size
    guard = L.CallbackGuard()
    cb = L.progress_callback(progress, guard)
    p.progress = cb
    status = L.call("mop_model_prune", model, byref(p))
    guard.reraise()
    L.check(status)
    model._info = None  # weight_bytes changed


def sparsity(model: "Model") -> tuple[float, str]:
    """(fraction of zero weights over the pruned layers, format of the first pruned weight)."""
    s = c_double(0)
    fmt = c_char_p()
    L.check(L.call("mop_model_sparsity", model, byref(s), byref(fmt)))
    return float(s.value), (fmt.value or b"").decode()
