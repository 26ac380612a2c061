"""libmop: Mixture-of-Prompts adaptation of (pruned) Llama-family models, from Python.

A thin, typed layer over the public C API of libmop.so (ctypes): every C status
is checked and raised as :class:`MopError` (carrying ``mop_last_error()``);
handles are freed by ``close()``, ``with`` blocks or garbage collection, in any
order. Parts whose C symbols the loaded library lacks raise
``NotImplementedError`` naming the symbol when used.

See docs/PYTHON.md for installation, how the library is found, and examples.
"""
from ._errors import MopError
from . import _lib
from ._lib import library_path, live_handles
from .core import (Context, Model, ModelInfo, Sampler, TensorInfo, last_error,
                   set_log_callback, status_name, status_str, version, version_number)
from .mixture import (Batch, Decoder, EvalResult, LossResult, Mixture, MixtureTensor,
                      Optimizer, evaluate)
from .sparse import prune, sparsity
from .fed import (Aggregator, RdpAccountant, SecAgg2Client, SecAgg2Server, SecAggClient,
                  SecAggServer, Update, UpdateHeader,
                  norm_bound, partition_dirichlet, partition_iid, partition_skewed, rdp_epsilon,
                  rdp_sampled_gaussian)

__version__ = _lib.VERSION


def has_symbol(name: str) -> bool:
    """True if the loaded libmop.so exports C function ``name``."""
    return _lib.has(name)


__all__ = ["MopError", "Model", "ModelInfo", "TensorInfo", "Context", "Sampler",
           "Mixture", "MixtureTensor", "Decoder", "Batch", "Optimizer", "LossResult", "EvalResult",
           "evaluate", "prune", "sparsity", "Update", "UpdateHeader", "Aggregator", "norm_bound",
           "partition_skewed", "partition_iid", "partition_dirichlet", "rdp_epsilon",
           "rdp_sampled_gaussian", "RdpAccountant", "SecAggClient", "SecAggServer",
           "SecAgg2Client", "SecAgg2Server",
           "set_log_callback", "status_name", "status_str", "last_error", "version",
           "version_number", "live_handles", "library_path", "has_symbol", "__version__"]
