"""Federated primitives: updates, aggregation, data partitioning
(include/libmop/mop_fed.h).

Each call checks that the loaded C library exports its symbol and raises
``NotImplementedError`` naming the missing C symbol otherwise.
"""
from __future__ import annotations

import ctypes
import dataclasses
import warnings
from ctypes import (POINTER, Structure, byref, c_char_p, c_float, c_int32, c_int64, c_size_t,
                    c_uint8, c_uint32, c_uint64, c_void_p)
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from . import _lib as L
from .mixture import Mixture

__all__ = ["Update", "UpdateHeader", "Aggregator", "STRATEGY", "strategy_name", "partition_skewed",
           "partition_iid", "partition_dirichlet", "rdp_sampled_gaussian", "rdp_epsilon",
           "RdpAccountant", "SecAggClient", "SecAggServer"]

KIND = {"delta": 0, "full": 1}
_KIND_NAMES = {v: k for k, v in KIND.items()}
#: Aggregation rule names: the C enum's (MOP_AGG_TRIMMED_MEAN: "trimmed_mean"),
#: the same in ``mop fed-sim --strategy`` and examples/fed_mpi.c.
STRATEGY = {"fedavg": 0, "fedavgm": 1, "fedadam": 2, "fedyogi": 3, "fedadagrad": 4,
            "median": 5, "trimmed_mean": 6, "krum": 7, "multi_krum": 8,
            "task_arithmetic": 9, "ties": 10, "dare": 11, "breadcrumbs": 12, "mop_aware": 13}


def strategy_name(name: str) -> str:
    """The canonical name of aggregation rule ``name`` (a key of :data:`STRATEGY`).

    The spelling with ``-`` for ``_`` (``"trimmed-mean"``, once the CLI's) is
    still accepted with a :class:`DeprecationWarning`; it goes in libmop 0.2.
    Other names are returned unchanged (the caller reports them as unknown)."""
    if isinstance(name, str) and name not in STRATEGY and "-" in name:
        canon = name.replace("-", "_")
        if canon in STRATEGY:
            warnings.warn(f"libmop strategy name {name!r} is deprecated, use {canon!r}",
                          DeprecationWarning, stacklevel=3)
            return canon
    return name


class AggregatorParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("strategy", c_int32), ("server_lr", c_float),
                ("momentum", c_float), ("beta1", c_float), ("beta2", c_float), ("tau", c_float),
                ("trim_ratio", c_float), ("krum_f", c_int32), ("multi_krum_m", c_int32),
                ("ties_density", c_float), ("dare_drop", c_float), ("crumbs_top", c_float),
                ("crumbs_bottom", c_float), ("merge_lambda", c_float), ("seed", c_uint64)]


L._PROTOS.update({
    "mop_aggregator_params_init_sized": (ctypes.c_int, [POINTER(AggregatorParams), c_size_t]),
    "mop_aggregator_default_params": (AggregatorParams, []),  # deprecated by-value shim, not called
    "mop_aggregator_create": (ctypes.c_int, [POINTER(AggregatorParams), POINTER(c_void_p)]),
    "mop_aggregator_free": (None, [c_void_p]),
    "mop_aggregator_add": (ctypes.c_int, [c_void_p, c_void_p]),
    "mop_aggregator_count": (c_int32, [c_void_p]),
    "mop_aggregator_finish": (ctypes.c_int, [c_void_p, c_void_p, POINTER(c_void_p)]),
    "mop_partition_skewed": (ctypes.c_int, [POINTER(c_int32), c_int64, c_int32, c_float,
                                            c_uint64, POINTER(c_int32)]),
    "mop_partition_iid": (ctypes.c_int, [c_int64, c_int32, c_uint64, POINTER(c_int32)]),
    "mop_partition_dirichlet": (ctypes.c_int, [POINTER(c_int32), c_int64, c_int32, c_float,
                                               c_uint64, POINTER(c_int32)]),
})


@dataclasses.dataclass(frozen=True)
class UpdateHeader:
    """Provenance of an update."""
    kind: str        #: "delta" or "full"
    round: int
    client_id: int
    n_samples: float


class Update(L.Closable):
    """Named float32 tensors plus provenance (``mop_update``): what a client
    sends and the server returns. Tensors are copied in by :meth:`add_tensor`;
    :meth:`tensors` gives zero-copy writable views that keep the update alive.
    Serialized form: :meth:`serialize` / :meth:`parse` (versioned, SHA-256 checked).
    """

    def __init__(self, kind: Union[str, int] = "delta", round: int = 0, client_id: int = 0,
                 n_samples: float = 0.0, tensors: Optional[Mapping[str, Any]] = None) -> None:
        k = L.enum_value(kind, KIND, "kind")
        rnd = L.check_c_int("round", round, L.INT64)
        cid = L.check_c_int("client_id", client_id, L.UINT64)
        self._h = L.create("mop_update", lambda out: L.fn("mop_update_create")(
            k, rnd, cid, float(n_samples), out))
        for name, arr in (tensors or {}).items():
            self.add_tensor(name, arr)

    @classmethod
    def _wrap(cls, h: L.Handle) -> "Update":
        self = cls.__new__(cls)
        self._h = h
        return self

    @classmethod
    def parse(cls, data: Union[bytes, bytearray, memoryview]) -> "Update":
        """Parse bytes from :meth:`serialize` (MOP_E_FORMAT, MOP_E_CHECKSUM,
        MOP_E_UNSUPPORTED on bad input)."""
        buf = np.frombuffer(data, dtype=np.uint8)
        return cls._wrap(L.create("mop_update", lambda out: L.fn("mop_update_parse")(
            L.ptr(buf, c_uint8), buf.size, out)))

    @classmethod
    def from_mixture(cls, mixture: Mixture, base: Optional[Mixture] = None, round: int = 0,
                     client_id: int = 0, n_samples: float = 0.0,
                     gate_usage: Optional[Any] = None) -> "Update":
        """FULL values of ``mixture``, or the DELTA mixture − base. ``gate_usage``
        (K floats) is stored as "gate.usage" for MoP-aware aggregation."""
        gu = None
        if gate_usage is not None:
            gu = L.float32_in(gate_usage, "gate_usage", ndim=1)
            if gu.size != mixture.n_experts:
                raise L.shape_error(f"gate_usage: expected {mixture.n_experts} floats, got {gu.size}")
        rnd = L.check_c_int("round", round, L.INT64)
        cid = L.check_c_int("client_id", client_id, L.UINT64)
        return cls._wrap(L.create("mop_update", lambda out: L.call(
            "mop_update_from_mixture", mixture, base, rnd, cid,
            float(n_samples), L.ptr(gu, c_float), out)))

    def apply(self, mixture: Mixture, scale: float = 1.0) -> None:
        """FULL: set the mixture's values; DELTA: add scale × delta."""
        L.check(L.call("mop_update_apply", self, mixture, float(scale)))

    def add_tensor(self, name: str, data: Any) -> None:
        """Append a tensor (copied; 1..4 dims). Names are unique."""
        a = L.float32_in(data, name)
        if not 1 <= a.ndim <= 4:
            raise L.shape_error(f"{name}: tensors have 1 to 4 dimensions, got shape {a.shape}")
        dims = (c_int64 * a.ndim)(*a.shape)
        L.check(L.call("mop_update_add_tensor", self, L.cstr(name, "name"), L.ptr(a, c_float),
                                                a.ndim, dims))

    def __len__(self) -> int:
        return int(L.call("mop_update_tensor_count", self))

    def _tensor(self, index: int, name: Optional[str]) -> tuple[str, np.ndarray]:
        ti = L.UpdateTensorInfoC()
        ti.struct_size = ctypes.sizeof(ti)
        with L.using(self) as (h,):  # self._h is set while in use
            L.check(L.fn("mop_update_get_tensor")(h, index,
                                                  None if name is None else L.cstr(name, "name"),
                                                  byref(ti)))
            shape = tuple(int(ti.dims[d]) for d in range(ti.n_dims))
            addr = ctypes.cast(ti.data, c_void_p).value or 0
            return ti.name.decode(), L.view(self._h, addr, int(ti.size), c_float, shape)

    def tensor(self, name: str) -> np.ndarray:
        """Writable zero-copy view of tensor ``name`` (MopError if absent)."""
        return self._tensor(-1, name)[1]

    def tensors(self) -> dict[str, np.ndarray]:
        """name -> writable zero-copy view, in order."""
        return dict(self._tensor(i, None) for i in range(len(self)))

    @property
    def header(self) -> UpdateHeader:
        h = L.UpdateHeaderC()
        h.struct_size = ctypes.sizeof(h)
        L.check(L.call("mop_update_get_header", self, byref(h)))
        return UpdateHeader(_KIND_NAMES.get(h.kind, str(h.kind)), int(h.round), int(h.client_id),
                            float(h.n_samples))

    def set_meta(self, key: str, value: str) -> None:
        L.check(L.call("mop_update_set_meta", self, L.cstr(key, "key"), L.cstr(value, "value")))

    def get_meta(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """Metadata string for ``key``, or ``default`` if absent."""
        v = c_char_p()
        status = L.call("mop_update_get_meta", self, L.cstr(key, "key"), byref(v))
        if status == -8:  # MOP_E_RANGE: absent
            return default
        L.check(status)
        return (v.value or b"").decode("utf-8", "replace")

    def serialize(self) -> bytes:
        n = c_size_t(0)
        L.check(L.call("mop_update_serialize", self, None, 0, byref(n)))
        buf = np.empty(n.value, dtype=np.uint8)
        L.check(L.call("mop_update_serialize", self, L.ptr(buf, c_uint8), buf.size, byref(n)))
        return buf[:n.value].tobytes()

    def clip(self, max_norm: float) -> float:
        """Scale all tensors (except "gate.usage") so their global L2 norm is at
        most ``max_norm``; returns the norm before clipping (mop_update_clip)."""
        before = c_float(0)
        L.check(L.call("mop_update_clip", self, float(max_norm), byref(before)))
        return float(before.value)

    def add_noise(self, std: float, seed: int = 0) -> None:
        """Add N(0, std²) noise to every value (except "gate.usage"). seed 0 = OS
        randomness (use it for real privacy); a fixed seed is reproducible."""
        L.check(L.call("mop_update_add_noise", self, float(std),
                       L.check_c_int("seed", seed, L.UINT64)))

    def __repr__(self) -> str:
        if self.closed:
            return "<libmop.Update closed>"
        h = self.header
        return (f"<libmop.Update {h.kind} round={h.round} client={h.client_id} "
                f"n_samples={h.n_samples} tensors={len(self)}>")


class Aggregator(L.Closable):
    """Server-side aggregation over rounds (``mop_aggregator``).

    ``Aggregator("fedavg")``. Every parameter is a field of
    ``mop_aggregator_params`` (include/libmop/mop_fed.h, docs/FEDERATED.md).
    Each defaults to None, which keeps the library's default (given in
    brackets, after Reddi et al. for the adaptive rules); only the ones passed
    are set.

    :param strategy: fedavg, fedavgm, fedadam, fedyogi, fedadagrad, median,
        trimmed_mean, krum, multi_krum, task_arithmetic, ties, dare,
        breadcrumbs or mop_aware (the hyphenated old spellings are accepted
        with a DeprecationWarning), or the C value [fedavg]
    :param server_lr: server learning rate, > 0 [1.0, plain FedAvg]; for
        fedadam/fedyogi/fedadagrad, whose step is about this per coordinate,
        use a small one (1e-2 is a sound start)
    :param momentum: FedAvgM's momentum, in [0, 1) [0.9]
    :param beta1: first-moment decay of the adaptive rules, in [0, 1) [0.9]
    :param beta2: second-moment decay of fedadam/fedyogi, in [0, 1) [0.99]
    :param tau: adaptivity, > 0; the second moment starts at ``tau**2`` [1e-3]
    :param trim_ratio: trimmed_mean: fraction trimmed from each end, in [0, 0.5) [0.1]
    :param krum_f: assumed Byzantine clients, >= 0; Krum needs ``n >= 2f + 3`` [1]
    :param multi_krum_m: updates averaged by multi_krum, 1..n; 0 = ``n - f`` [0]
    :param ties_density: ties: fraction of each update kept (largest
        magnitudes), in (0, 1] [0.2]
    :param dare_drop: dare: drop probability, in [0, 1) [0.9]
    :param crumbs_top: breadcrumbs: fraction of the largest magnitudes dropped
        per tensor [0.01]
    :param crumbs_bottom: breadcrumbs: fraction of the smallest magnitudes
        dropped per tensor; ``crumbs_top + crumbs_bottom < 1`` [0.09]
    :param merge_lambda: scale of the merging rules, >= 0; 0 = automatic (1/n
        for task_arithmetic, dare and breadcrumbs, 1 for ties) [0]
    :param seed: dare's masks, drawn from (seed, round, client_id) [0]
    :raises TypeError: an unknown keyword, or a value of the wrong type
    :raises ValueError: an unknown strategy name
    :raises OverflowError: an integer outside its C type
    :raises MopError: values the library rejects (``MOP_E_RANGE``, ...)

    :attr:`params` holds every field as the aggregator uses it.
    """

    def __init__(self, strategy: Optional[Union[str, int]] = None, *,
                 server_lr: Optional[float] = None,
                 momentum: Optional[float] = None,
                 beta1: Optional[float] = None,
                 beta2: Optional[float] = None,
                 tau: Optional[float] = None,
                 trim_ratio: Optional[float] = None,
                 krum_f: Optional[int] = None,
                 multi_krum_m: Optional[int] = None,
                 ties_density: Optional[float] = None,
                 dare_drop: Optional[float] = None,
                 crumbs_top: Optional[float] = None,
                 crumbs_bottom: Optional[float] = None,
                 merge_lambda: Optional[float] = None,
                 seed: Optional[int] = None) -> None:
        fields = L.passed_fields(locals(), AggregatorParams)
        fields["strategy"] = strategy_name(strategy)
        p = L.params_init(AggregatorParams, "mop_aggregator_params_init_sized")
        L.fill_params(p, fields, "Aggregator", {"strategy": STRATEGY})
        self.params = {f: getattr(p, f) for f, _ in p._fields_ if f != "struct_size"}
        self._h = L.create("mop_aggregator",
                           lambda out: L.fn("mop_aggregator_create")(byref(p), out))

    def add(self, update: Update) -> None:
        """Add one client update to the current round (read during the call only)."""
        L.check(L.call("mop_aggregator_add", self, update))

    def __len__(self) -> int:
        """Updates in the current round."""
        return int(L.call("mop_aggregator_count", self))

    def finish(self, global_values: Update) -> Update:
        """Close the round: the next global values (a new FULL update)."""
        return Update._wrap(L.create("mop_update", lambda out: L.call(
            "mop_aggregator_finish", self, global_values, out)))


# ---------------------------------------------------------------------------
# Norm bounding before aggregation (mop_update_norm_bound)

NORM_BOUND_MODE = {"clip": 0, "reject": 1}


class NormBoundParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("mode", c_int32), ("max_norm", c_float),
                ("median_multiple", c_float)]


L._PROTOS.update({
    "mop_norm_bound_params_init_sized": (ctypes.c_int, [POINTER(NormBoundParams), ctypes.c_size_t]),
    "mop_update_norm_bound": (ctypes.c_int, [POINTER(c_void_p), c_int32, POINTER(NormBoundParams),
                                             POINTER(c_uint8), POINTER(c_float),
                                             POINTER(c_float)]),
})


def norm_bound_params(**params: Any) -> NormBoundParams:
    """mop_norm_bound_params from keywords mode ("clip" | "reject"), max_norm,
    median_multiple (None = C default)."""
    p = L.params_init(NormBoundParams, "mop_norm_bound_params_init_sized")
    return L.fill_params(p, params, "norm_bound", {"mode": NORM_BOUND_MODE})


def norm_bound(updates: Sequence[Update], *, mode: Union[str, int] = "clip",
               max_norm: float = 0.0, median_multiple: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Clip or reject the DELTA ``updates`` whose L2 norm (all tensors but
    "gate.usage") exceeds B = min(max_norm, median_multiple × median norm)
    (the terms that are > 0), before aggregation (mop_update_norm_bound).
    Clipped updates are edited in place. Returns (keep (n,) bool: aggregate
    it, norms (n,) float32 before bounding, B)."""
    ups = list(updates)
    p = norm_bound_params(mode=mode, max_norm=max_norm, median_multiple=median_multiple)
    n = L.check_c_int("number of updates", len(ups))
    for u in ups:
        if not isinstance(u, Update):
            raise TypeError(f"norm_bound: expected Update objects, got {type(u).__name__}")
    with L.using(*ups) as ptrs:
        arr = (c_void_p * max(1, n))(*[p_.value for p_ in ptrs])
        keep = np.zeros(max(1, n), dtype=np.uint8)
        norms = np.zeros(max(1, n), dtype=np.float32)
        b = c_float(0)
        L.check(L.fn("mop_update_norm_bound")(arr, n, byref(p), L.ptr(keep, c_uint8),
                                              L.ptr(norms, c_float), byref(b)))
    return keep[:n].astype(bool), norms[:n].copy(), float(b.value)


def _labels(task: Any) -> np.ndarray:
    return L.int32_array(task, "task")


def partition_skewed(task: Any, n_clients: int, ratio: float = 15.0, seed: int = 0) -> np.ndarray:
    """The paper's skewed split: client id (int32) of each example; every
    client gets one part of each category, one of them ratio× larger."""
    t = _labels(task)
    nc, sd = L.check_c_int("n_clients", n_clients), L.check_c_int("seed", seed, L.UINT64)
    out = np.empty(t.size, dtype=np.int32)
    L.check(L.fn("mop_partition_skewed")(L.ptr(t, c_int32), t.size, nc,
                                         float(ratio), sd, L.ptr(out, c_int32)))
    return out


def partition_iid(n: int, n_clients: int, seed: int = 0) -> np.ndarray:
    """Uniform random split of ``n`` examples (sizes differ by at most one)."""
    n = L.check_int("n", n, 0, 2**63 - 1, "int64, >= 0")
    nc, sd = L.check_c_int("n_clients", n_clients), L.check_c_int("seed", seed, L.UINT64)
    out = np.empty(n, dtype=np.int32)
    L.check(L.fn("mop_partition_iid")(n, nc, sd, L.ptr(out, c_int32)))
    return out


def partition_dirichlet(task: Any, n_clients: int, alpha: float, seed: int = 0) -> np.ndarray:
    """Dirichlet(alpha) split per category (small alpha = concentrated)."""
    t = _labels(task)
    nc, sd = L.check_c_int("n_clients", n_clients), L.check_c_int("seed", seed, L.UINT64)
    out = np.empty(t.size, dtype=np.int32)
    L.check(L.fn("mop_partition_dirichlet")(L.ptr(t, c_int32), t.size, nc,
                                            float(alpha), sd, L.ptr(out, c_int32)))
    return out


# ---------------------------------------------------------------------------
# Differential privacy, RDP accounting, secure aggregation (mop_fed.h section B)

RDP_CONVERSION = {"classic": 0, "balle2020": 1}
SECAGG_KEY_BYTES = 32


class RdpParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("conversion", c_int32),
                ("orders", POINTER(ctypes.c_double)), ("n_orders", c_int32)]


class SecAggParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_clients", c_int32), ("round", c_int64),
                ("length", c_int64), ("ring_bits", c_int32), ("scale", c_float),
                ("clip_range", c_float), ("min_survivors", c_int32)]


_st, _vp, _P, _d = ctypes.c_int, c_void_p, POINTER, ctypes.c_double
L._PROTOS.update({
    "mop_update_clip": (_st, [_vp, c_float, _P(c_float)]),
    "mop_update_add_noise": (_st, [_vp, c_float, c_uint64]),
    "mop_rdp_params_init_sized": (_st, [_P(RdpParams), c_size_t]),
    "mop_rdp_default_params": (RdpParams, []),  # deprecated by-value shim, not called
    "mop_rdp_sampled_gaussian": (_st, [_d, _d, _d, _P(_d)]),
    "mop_rdp_epsilon": (_st, [_d, _d, c_int64, _d, _P(_d), _P(_d)]),
    "mop_rdp_accountant_create": (_st, [_P(RdpParams), _P(_vp)]),
    "mop_rdp_accountant_free": (None, [_vp]),
    "mop_rdp_accountant_add": (_st, [_vp, _d, _d, c_int64]),
    "mop_rdp_accountant_epsilon": (_st, [_vp, _d, _P(_d), _P(_d)]),
    "mop_secagg_params_init_sized": (_st, [_P(SecAggParams), c_size_t]),
    "mop_secagg_default_params": (SecAggParams, []),  # deprecated by-value shim, not called
    "mop_secagg_client_create": (_st, [_P(SecAggParams), c_int32, _P(_vp)]),
    "mop_secagg_client_free": (None, [_vp]),
    "mop_secagg_client_public_key": (_st, [_vp, _P(c_uint8)]),
    "mop_secagg_client_set_peer_keys": (_st, [_vp, _P(c_uint8), c_size_t]),
    "mop_secagg_client_mask": (_st, [_vp, _P(c_float), c_int64, _P(c_uint8), c_size_t,
                                     _P(c_size_t)]),
    "mop_secagg_client_mask_update": (_st, [_vp, _vp, _P(c_uint8), c_size_t, _P(c_size_t)]),
    "mop_secagg_client_reveal": (_st, [_vp, _P(c_int32), c_int32, _P(c_uint8), c_size_t,
                                       _P(c_size_t)]),
    "mop_secagg_server_create": (_st, [_P(SecAggParams), _P(_vp)]),
    "mop_secagg_server_free": (None, [_vp]),
    "mop_secagg_server_add_masked": (_st, [_vp, _P(c_uint8), c_size_t]),
    "mop_secagg_server_add_recovery": (_st, [_vp, _P(c_uint8), c_size_t]),
    "mop_secagg_server_finish": (_st, [_vp, _P(c_float), c_int64, _P(c_int32), _P(c_int32)]),
})


def rdp_sampled_gaussian(noise_multiplier: float, sample_rate: float, alpha: float) -> float:
    """RDP (nats) of one step of the sampled Gaussian mechanism at order alpha."""
    out = ctypes.c_double(0)
    L.check(L.fn("mop_rdp_sampled_gaussian")(float(noise_multiplier), float(sample_rate),
                                             float(alpha), byref(out)))
    return float(out.value)


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int,
                delta: float) -> tuple[float, float]:
    """(ε, best order) after ``steps`` steps (default orders, classic conversion)."""
    eps, order = ctypes.c_double(0), ctypes.c_double(0)
    L.check(L.fn("mop_rdp_epsilon")(float(noise_multiplier), float(sample_rate),
                                    L.check_c_int("steps", steps, L.INT64),
                                    float(delta), byref(eps), byref(order)))
    return float(eps.value), float(order.value)


class RdpAccountant(L.Closable):
    """Running RDP total over heterogeneous steps (``mop_rdp_accountant``).
    ``conversion`` "classic" or "balle2020"; ``orders``: α values (> 1) or None."""

    def __init__(self, conversion: Union[str, int] = "classic",
                 orders: Optional[Any] = None) -> None:
        p = L.params_init(RdpParams, "mop_rdp_params_init_sized")
        p.conversion = L.enum_value(conversion, RDP_CONVERSION, "conversion")
        keep = None
        if orders is not None:
            keep = np.ascontiguousarray(orders, dtype=np.float64)
            p.orders = keep.ctypes.data_as(POINTER(ctypes.c_double))
            p.n_orders = L.check_c_int("orders size", keep.size)
        self._h = L.create("mop_rdp_accountant",
                           lambda out: L.fn("mop_rdp_accountant_create")(byref(p), out))

    def add(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        L.check(L.call("mop_rdp_accountant_add", self, float(noise_multiplier),
                                                 float(sample_rate),
                                                 L.check_c_int("steps", steps, L.INT64)))

    def epsilon(self, delta: float) -> tuple[float, float]:
        """(ε, best order) of everything composed so far."""
        eps, order = ctypes.c_double(0), ctypes.c_double(0)
        L.check(L.call("mop_rdp_accountant_epsilon", self, float(delta), byref(eps),
                                                     byref(order)))
        return float(eps.value), float(order.value)


def _secagg_params(params: dict[str, Any]) -> SecAggParams:
    p = L.params_init(SecAggParams, "mop_secagg_params_init_sized")
    return L.fill_params(p, params, "secagg")


#: the keyword parameters of the four secure-aggregation classes (fields of
#: mop_secagg_params; None keeps the library's default, in brackets)
_SECAGG_PARAMS_DOC = """
    Every keyword is a field of ``mop_secagg_params`` (include/libmop/mop_fed.h),
    equal on every client and the server; None keeps the library's default:

    :param n_clients: n, 2..65536; must be set [0]
    :param length: floats per vector, 1..2^31; must be set [0]
    :param round: round number, >= 0, bound into the keys [0]
    :param ring_bits: 32 or 64, the ring Z_2^ring_bits [64]
    :param scale: fixed-point scale, x -> round(x*scale), finite and > 0
        [4294967296, 2^32]
    :param clip_range: inputs clipped to [-clip_range, clip_range]; n times
        round(clip_range*scale) must stay below 2^(ring_bits-1) [256]
    :param min_survivors: t, the fewest survivors whose sum may be revealed,
        2..n [2]
    :raises TypeError: a value of the wrong type
    :raises MopError: values the library rejects
    """


def _blob(call: Any) -> bytes:
    n = c_size_t(0)
    L.check(call(None, 0, byref(n)))
    buf = np.empty(n.value, dtype=np.uint8)
    L.check(call(L.ptr(buf, c_uint8), buf.size, byref(n)))
    return buf[:n.value].tobytes()


def _bytes_in(data: Union[bytes, bytearray, memoryview]) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.uint8)


class SecAggClient(L.Closable):
    """One client of a secure-aggregation round (``mop_secagg_client``);
    ``index`` is its position among the n clients."""

    def __init__(self, index: int, *, n_clients: Optional[int] = None,
                 length: Optional[int] = None, round: Optional[int] = None,
                 ring_bits: Optional[int] = None, scale: Optional[float] = None,
                 clip_range: Optional[float] = None,
                 min_survivors: Optional[int] = None) -> None:
        p = _secagg_params(L.passed_fields(locals(), SecAggParams))
        idx = L.check_c_int("index", index)
        self._h = L.create("mop_secagg_client", lambda out: L.fn("mop_secagg_client_create")(
            byref(p), idx, out))

    @property
    def public_key(self) -> bytes:
        pk = np.zeros(SECAGG_KEY_BYTES, dtype=np.uint8)
        L.check(L.call("mop_secagg_client_public_key", self, L.ptr(pk, c_uint8)))
        return pk.tobytes()

    def set_peer_keys(self, keys: Any) -> None:
        """All n public keys: a list of 32-byte keys, or their concatenation."""
        if not isinstance(keys, (bytes, bytearray, memoryview)):
            keys = b"".join(bytes(k) for k in keys)
        k = _bytes_in(keys)
        L.check(L.call("mop_secagg_client_set_peer_keys", self, L.ptr(k, c_uint8), k.size))

    def mask(self, x: Any) -> bytes:
        """Encode and mask a float vector of the round's length: the blob to send."""
        a = L.float32_in(x, "x", ndim=1)
        return _blob(lambda b, cap, n: L.call("mop_secagg_client_mask", self, L.ptr(a, c_float),
                                              a.size, b, cap, n))

    def mask_update(self, update: Update) -> bytes:
        """As :meth:`mask` on the concatenation of all tensors of ``update``."""
        return _blob(lambda b, cap, n: L.call("mop_secagg_client_mask_update", self, update,
                                              b, cap, n))

    def reveal(self, dropped: Any) -> bytes:
        """Recovery blob with the round keys shared with the ``dropped`` clients."""
        d = L.int32_array(dropped, "dropped")
        return _blob(lambda b, cap, n: L.call("mop_secagg_client_reveal", self, L.ptr(d, c_int32),
                                              d.size, b, cap, n))


L._PROTOS.update({
    "mop_secagg2_client_create": (_st, [_P(SecAggParams), c_int32, _P(_vp)]),
    "mop_secagg2_client_free": (None, [_vp]),
    "mop_secagg2_client_step": (_st, [_vp, _P(c_uint8), c_size_t, _P(c_float), c_int64,
                                      _P(_P(c_uint8)), _P(c_size_t)]),
    "mop_secagg2_server_create": (_st, [_P(SecAggParams), _P(_vp)]),
    "mop_secagg2_server_free": (None, [_vp]),
    "mop_secagg2_server_receive": (_st, [_vp, _P(c_uint8), c_size_t]),
    "mop_secagg2_server_advance": (_st, [_vp]),
    "mop_secagg2_server_message": (_st, [_vp, c_int32, _P(_P(c_uint8)), _P(c_size_t)]),
    "mop_secagg2_server_result": (_st, [_vp, _P(c_float), c_int64, _P(c_int32), _P(c_int32)]),
})

SECAGG2_STAGES = ("advertise", "share", "masked", "unmask", "done")


def _borrowed(ptr: Any, n: c_size_t) -> bytes:
    return ctypes.string_at(ptr, n.value)


class SecAgg2Client(L.Closable):
    """One client of a dropout-tolerant secure-aggregation round
    (``mop_secagg2_client``: self-masks, pairwise masks, Shamir shares).
    ``index`` is its position among the n clients; min_survivors is the
    threshold t. Call :meth:`step` once per stage with the server's message
    for it."""

    def __init__(self, index: int, *, n_clients: Optional[int] = None,
                 length: Optional[int] = None, round: Optional[int] = None,
                 ring_bits: Optional[int] = None, scale: Optional[float] = None,
                 clip_range: Optional[float] = None,
                 min_survivors: Optional[int] = None) -> None:
        p = _secagg_params(L.passed_fields(locals(), SecAggParams))
        idx = L.check_c_int("index", index)
        self._h = L.create("mop_secagg2_client", lambda out: L.fn("mop_secagg2_client_create")(
            byref(p), idx, out))

    def step(self, message: Optional[bytes] = None, x: Any = None) -> bytes:
        """The next message to send: ``message`` is the server's last message
        for this client (None at the first stage), ``x`` the float input (only
        at the masked-input stage)."""
        m = None if message is None else _bytes_in(message)
        a = None if x is None else L.float32_in(x, "x", ndim=1)
        out, n = _P(c_uint8)(), c_size_t(0)
        L.check(L.call("mop_secagg2_client_step", self,
                       None if m is None else L.ptr(m, c_uint8), 0 if m is None else m.size,
                       None if a is None else L.ptr(a, c_float), 0 if a is None else a.size,
                       byref(out), byref(n)))
        return _borrowed(out, n)


class SecAgg2Server(L.Closable):
    """The server of a dropout-tolerant secure-aggregation round
    (``mop_secagg2_server``): :meth:`receive` each client message of a stage,
    :meth:`advance` (needs t of them), :meth:`message` for each remaining
    client, and after the unmasking stage :meth:`result`."""

    def __init__(self, *, n_clients: Optional[int] = None,
                 length: Optional[int] = None, round: Optional[int] = None,
                 ring_bits: Optional[int] = None, scale: Optional[float] = None,
                 clip_range: Optional[float] = None,
                 min_survivors: Optional[int] = None) -> None:
        p = _secagg_params(L.passed_fields(locals(), SecAggParams))
        self.length, self.n_clients = int(p.length), int(p.n_clients)
        self._h = L.create("mop_secagg2_server",
                           lambda out: L.fn("mop_secagg2_server_create")(byref(p), out))

    def receive(self, message: bytes) -> None:
        b = _bytes_in(message)
        L.check(L.call("mop_secagg2_server_receive", self, L.ptr(b, c_uint8), b.size))

    def advance(self) -> None:
        L.check(L.call("mop_secagg2_server_advance", self))

    def message(self, index: int) -> bytes:
        out, n = _P(c_uint8)(), c_size_t(0)
        L.check(L.call("mop_secagg2_server_message", self, L.check_c_int("index", index),
                       byref(out), byref(n)))
        return _borrowed(out, n)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum of the inputs of the clients whose masked input arrived, their indices)."""
        s = np.zeros(self.length, dtype=np.float32)
        inc = np.zeros(max(1, self.n_clients), dtype=np.int32)
        n_inc = c_int32(0)
        L.check(L.call("mop_secagg2_server_result", self, L.ptr(s, c_float), s.size,
                       L.ptr(inc, c_int32), byref(n_inc)))
        return s, inc[:n_inc.value].copy()


class SecAggServer(L.Closable):
    """The server side of a secure-aggregation round (``mop_secagg_server``)."""

    def __init__(self, *, n_clients: Optional[int] = None,
                 length: Optional[int] = None, round: Optional[int] = None,
                 ring_bits: Optional[int] = None, scale: Optional[float] = None,
                 clip_range: Optional[float] = None,
                 min_survivors: Optional[int] = None) -> None:
        p = _secagg_params(L.passed_fields(locals(), SecAggParams))
        self.length, self.n_clients = int(p.length), int(p.n_clients)
        self._h = L.create("mop_secagg_server",
                           lambda out: L.fn("mop_secagg_server_create")(byref(p), out))

    def add_masked(self, blob: bytes) -> None:
        b = _bytes_in(blob)
        L.check(L.call("mop_secagg_server_add_masked", self, L.ptr(b, c_uint8), b.size))

    def add_recovery(self, blob: bytes) -> None:
        b = _bytes_in(blob)
        L.check(L.call("mop_secagg_server_add_recovery", self, L.ptr(b, c_uint8), b.size))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum of the included clients' inputs (length,) float32, their indices)."""
        s = np.zeros(self.length, dtype=np.float32)
        inc = np.zeros(max(1, self.n_clients), dtype=np.int32)
        n_inc = c_int32(0)
        L.check(L.call("mop_secagg_server_finish", self, L.ptr(s, c_float), s.size,
                                                   L.ptr(inc, c_int32), byref(n_inc)))
        return s, inc[:n_inc.value].copy()


for _cls in (SecAggClient, SecAgg2Client, SecAgg2Server, SecAggServer):
    _cls.__doc__ = (_cls.__doc__ or "") + "\n" + _SECAGG_PARAMS_DOC
del _cls
