"""Pruning a loaded model and saving it compactly (include/libmop/mop_sparse.h)."""
from __future__ import annotations

from ctypes import byref, c_char_p, c_double, c_int32
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

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
          calib_tokens: Any = None, *,
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
    """Prune ``model`` in place (mop_model_prune).

    The keyword-only parameters are the fields of ``mop_prune_params``
    (include/libmop/mop_sparse.h). Each defaults to None, which keeps the
    library's default (given in brackets: magnitude, 2:4); only the ones
    passed are set. Enum fields take a name (case-insensitive) or the C value.

    :param model: the model to prune; no :class:`Context` or :class:`Mixture`
        may still hold it (``MOP_E_STATE`` otherwise)
    :param progress: ``progress(done, total)``, called once per weight matrix;
        a true return value cancels
    :param calib_tokens: calibration token ids (int32 array-like) for Wanda
        and SparseGPT, cut into sequences of ``calib_seq_len``
    :param method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"`` [magnitude]
    :param pattern: ``"nm"`` (keep ``n`` of every ``m``) or ``"unstructured"`` [nm]
    :param n: N of N:M [2]
    :param m: M of N:M, ``n < m <= 16`` [4]
    :param ratio: unstructured: fraction removed, in [0, 0.99] [0.5]
    :param granularity: where an unstructured ratio applies, ``"row"`` or
        ``"layer"`` [row]
    :param layer_begin: first block pruned [0]
    :param layer_end: one past the last block pruned; -1 = all [-1]
    :param calib_seq_len: length of the calibration sequences [256]
    :param sparsegpt_damp: SparseGPT's diagonal dampening, as a fraction of
        the mean of diag(H) [0.01]
    :param sparsegpt_block: SparseGPT's columns per lazy-update block [128]
    :param lm_head_format: storage of the output matrix, ``"f32"``, ``"f16"``
        or ``"q8_0"`` [f32]
    :param n_threads: worker threads; 0 = all cores [0]
    :raises TypeError: an unknown keyword, or a value of the wrong type
    :raises ValueError: an unknown enum name
    :raises OverflowError: an integer outside its C type
    :raises MopError: values the library rejects; the model is unchanged then
    """
    fields = L.passed_fields(locals(), L.PruneParams)
    p = L.params_init(L.PruneParams, "mop_prune_params_init_sized")
    L.fill_params(p, fields, "prune", _ENUMS)
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
