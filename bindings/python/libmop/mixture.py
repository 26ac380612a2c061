"""Prompt mixtures, batches, training, evaluation and the AdamW optimizer
(include/libmop/mop_gate.h).

Every class here checks at use that the loaded C library exports the symbols
it needs and raises ``NotImplementedError`` naming the missing symbol
otherwise, so the package still imports against partial builds.
"""
from __future__ import annotations

import ctypes
import dataclasses
from ctypes import byref, c_double, c_float, c_int32, c_size_t, c_uint8, c_void_p
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import _lib as L
from .core import Context, Model, PathLike, Sampler

__all__ = ["Mixture", "Batch", "Optimizer", "LossResult", "EvalResult", "MixtureTensor",
           "evaluate", "GATE_ACT", "COMBINE", "GATE_MODE", "INIT", "GATE_POOL", "GATE_BIAS",
           "EXPERT_ATTENTION", "GatePretrainResult"]

GATE_ACT = {"gelu": 0, "relu": 1}
COMBINE = {"attention_bias": 0, "weighted_sum": 1}
GATE_MODE = {"learned": 0, "uniform": 1, "oracle": 2}
INIT = {"vocab": 0, "normal": 1}
GATE_POOL = {"content": 0, "prompt": 1}
GATE_BIAS = {"logkw": 0, "logw": 1}
EXPERT_ATTENTION = {"independent": 0, "joint": 1}
_ENUMS = {"gate_act": GATE_ACT, "combine": COMBINE, "gate_mode": GATE_MODE, "init": INIT,
          "gate_pool": GATE_POOL, "gate_bias": GATE_BIAS, "expert_attention": EXPERT_ATTENTION}


@dataclasses.dataclass(frozen=True)
class GatePretrainResult:
    """What gate pre-training reached (mop_gate_pretrain_result)."""
    epochs: int            #: epochs run
    best_epoch: int        #: the epoch whose gate was kept
    train_accuracy: float  #: argmax expert == task, training rows
    val_accuracy: float    #: the same on the validation rows
    val_loss: float        #: mean -log pi[task] on the validation rows


@dataclasses.dataclass(frozen=True)
class LossResult:
    """What one training call measured (mop_loss_result)."""
    loss: float       #: total loss that was differentiated
    nll_sum: float    #: Σ NLL over the target tokens
    n_targets: int    #: number of target tokens

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_targets if self.n_targets else float("nan")


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-sequence results of :func:`evaluate`."""
    nll_sum: np.ndarray    #: (B,) float64
    n_targets: np.ndarray  #: (B,) int32
    gate_w: np.ndarray     #: (B, K) float32 gate weights (zero rows for base-model sequences)

    @property
    def perplexity(self) -> float:
        """exp(Σ nll / Σ targets) over the whole batch."""
        return float(np.exp(self.nll_sum.sum() / max(1, int(self.n_targets.sum()))))


@dataclasses.dataclass(frozen=True)
class MixtureTensor:
    """A named slice of the flat parameter/gradient buffers."""
    name: str
    offset: int
    size: int
    shape: tuple[int, ...]


# ---------------------------------------------------------------------------


class Batch:
    """B token sequences padded to T, for training and evaluation (mop_batch).

    tokens (B, T) int32; lengths (B,) int32 real lengths (1..T); loss_mask
    (B, T) uint8 with 1 where token t is a target (None = every real token
    after the first); task (B,) int32 labels for gate supervision, or None.
    Arrays are converted once here (no copy if already the right dtype and
    C-contiguous) and passed to C by pointer. Shape mismatches raise
    MopError(MOP_E_SHAPE) and wrong dtypes TypeError, before C is called.
    """

    def __init__(self, tokens: Any, lengths: Optional[Any] = None,
                 loss_mask: Optional[Any] = None, task: Optional[Any] = None) -> None:
        self.tokens = L.int32_array(tokens, "tokens", ndim=2)
        B, T = self.tokens.shape
        self.lengths = (np.full(B, T, dtype=np.int32) if lengths is None
                        else L.int32_array(lengths, "lengths"))
        if self.lengths.shape != (B,):
            raise L.shape_error(f"lengths: expected shape ({B},), got {self.lengths.shape}")
        self.loss_mask: Optional[np.ndarray] = None
        if loss_mask is not None:
            m = np.asarray(loss_mask)
            if m.dtype.kind not in "biu":
                raise TypeError(f"loss_mask: expected bool or integer dtype, got {m.dtype}")
            if m.shape != (B, T):
                raise L.shape_error(f"loss_mask: expected shape ({B}, {T}), got {m.shape}")
            self.loss_mask = np.ascontiguousarray(m, dtype=np.uint8)
        self.task = None if task is None else L.int32_array(task, "task")
        if self.task is not None and self.task.shape != (B,):
            raise L.shape_error(f"task: expected shape ({B},), got {self.task.shape}")
        self.states: Optional[list[np.ndarray]] = None    # see with_states()
        self.gate_input: Optional[np.ndarray] = None

    def with_states(self, states: Sequence[Any], gate_input: Any) -> "Batch":
        """Attach cached layer-L_p states (from :meth:`Mixture.inject_states`):
        training and evaluation then skip layers [0, L_p), with identical
        results. Returns self."""
        B, _ = self.tokens.shape
        d = np.asarray(gate_input).shape[-1] if np.ndim(gate_input) == 2 else -1
        sts = [np.ascontiguousarray(x, dtype=np.float32) for x in states]
        if len(sts) != B or d < 1 or any(x.shape != (int(self.lengths[i]), d)
                                         for i, x in enumerate(sts)):
            raise L.shape_error("states: one (lengths[b], d) array per sequence and "
                                f"gate_input ({B}, d)")
        self.states = sts
        self.gate_input = np.ascontiguousarray(gate_input, dtype=np.float32)
        return self

    @property
    def n_seq(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return self.n_seq

    def _c(self) -> L.BatchC:
        b = L.BatchC()
        b.struct_size = ctypes.sizeof(b)
        b.n_seq, b.seq_len = self.tokens.shape
        b.tokens = L.ptr(self.tokens, c_int32)
        b.lengths = L.ptr(self.lengths, c_int32)
        b.loss_mask = L.ptr(self.loss_mask, c_uint8)
        b.task = L.ptr(self.task, c_int32)
        if self.states is not None:
            self._state_ptrs = (ctypes.POINTER(c_float) * len(self.states))(
                *[L.ptr(x, c_float) for x in self.states])
            b.states = ctypes.cast(self._state_ptrs, ctypes.POINTER(ctypes.POINTER(c_float)))
            b.gate_input = L.ptr(self.gate_input, c_float)
        return b

    @classmethod
    def from_sequences(cls, seqs: Sequence[Any], masks: Optional[Sequence[Any]] = None,
                       task: Optional[Any] = None, pad_id: int = 0) -> "Batch":
        """Pad ragged token sequences (and optional per-token masks) into a batch."""
        if not seqs:
            raise L.shape_error("a batch needs at least one sequence")
        arrs = [L.int32_array(s, f"seqs[{i}]") for i, s in enumerate(seqs)]
        T = max(a.size for a in arrs)
        tokens = np.full((len(arrs), T), pad_id, dtype=np.int32)
        lengths = np.array([a.size for a in arrs], dtype=np.int32)
        mask = None if masks is None else np.zeros((len(arrs), T), dtype=np.uint8)
        for i, a in enumerate(arrs):
            tokens[i, :a.size] = a
            if mask is not None:
                mi = np.asarray(masks[i])
                if mi.shape != a.shape:
                    raise L.shape_error(f"masks[{i}]: shape {mi.shape} != tokens {a.shape}")
                mask[i, :a.size] = mi
        return cls(tokens, lengths, mask, task)

    @classmethod
    def from_examples(cls, model: Model, examples: Iterable[Any], max_len: int,
                      task: Optional[Any] = None, system: Optional[str] = None) -> "Batch":
        """Tokenize (instruction, response) pairs (or dicts with those keys) with
        the model's chat template (mop_tokenize_example_v2; ``system`` as in
        :meth:`Model.tokenize_example`); the loss mask covers each response and
        its end-of-turn token. Sequences longer than ``max_len`` are cut to
        their first max_len tokens; the batch is padded to its longest
        sequence with the pad token (or 0)."""
        seqs, masks = [], []
        for ex in examples:
            if isinstance(ex, dict):
                ins, resp = ex["instruction"], ex["response"]
            else:
                ins, resp = ex
            t, m = model.tokenize_example(ins, resp, system=system)
            seqs.append(t[:max_len])
            masks.append(m[:max_len])
        pad = model.special_token("pad")
        return cls.from_sequences(seqs, masks, task, pad_id=0 if pad is None else pad)


# ---------------------------------------------------------------------------


class Mixture(L.Closable):
    """K soft-prompt experts plus a gate (``mop_mixture``) on a model.

    Every parameter but ``model`` is a field of ``mop_mixture_params``
    (include/libmop/mop_gate.h, docs/MIXTURE.md). Each defaults to None, which
    keeps the library's default (given in brackets); only the ones passed are
    set. Enum fields take a name (case-insensitive) or the C value.

    :param model: the frozen model the mixture adapts (a reference is kept)
    :param n_experts: ``K``, the number of experts, 1..256 [8]; ``K = 1`` with
        ``gate_mode="uniform"`` is single prompt tuning
    :param prompt_len: ``P``, prompt tokens per expert, 1..512 [8]
    :param gate_layer: the gate reads the hidden states after this many layers
        [-1 = n_layer/3]
    :param inject_layer: the experts enter before this layer; below
        ``gate_layer`` (e.g. 0, the input) the gate reads a prompt-free pass
        [-1 = n_layer/3]
    :param gate_hidden: width of the gate MLP [64]
    :param gate_act: the gate's activation, ``"gelu"`` or ``"relu"`` [gelu]
    :param gate_temperature: softmax temperature of the gate [1.0]
    :param top_k: keep the k largest gate weights; 0 = all [0]
    :param combine: ``"attention_bias"`` or ``"weighted_sum"`` [attention_bias]
    :param gate_mode: ``"learned"``, ``"uniform"`` or ``"oracle"`` (expert k
        serves task k by label) [learned]
    :param init: expert initialisation, ``"vocab"`` or ``"normal"`` [vocab]
    :param init_std: std of ``init="normal"`` and of the gate's first layer [0.02]
    :param seed: initialisation seed [1234]
    :param gate_pool: what the gate pools, ``"content"`` or ``"prompt"`` [content]
    :param gate_norm: True: the gate reads standardised inputs (statistics from
        :meth:`set_input_stats`; identity until set) [True]
    :param gate_bias: the attention bias, ``"logkw"`` or ``"logw"`` [logkw]
    :param n_shared: always-on shared groups of ``P`` tokens after the ``K``
        routed ones, 0..16 [0]
    :param expert_attention: ``"independent"`` or ``"joint"`` [independent]
    :param top_k_renorm: True: the kept top-k weights are renormalised to sum
        to 1; False: they keep their probability [False]
    :raises TypeError: an unknown keyword, or a value of the wrong type
    :raises ValueError: an unknown enum name
    :raises OverflowError: an integer outside its C type
    :raises MopError: values the library rejects (``MOP_E_RANGE``, ...)

    :attr:`params` and :attr:`grads` are zero-copy, writable float32 views of
    the C buffers; they (and the arrays from :meth:`tensors`) keep the C
    mixture alive, so they stay valid even after :meth:`close`.
    """

    def __init__(self, model: Model, n_experts: Optional[int] = None,
                 prompt_len: Optional[int] = None, *,
                 gate_layer: Optional[int] = None,
                 inject_layer: Optional[int] = None,
                 gate_hidden: Optional[int] = None,
                 gate_act: Optional[Union[str, int]] = None,
                 gate_temperature: Optional[float] = None,
                 top_k: Optional[int] = None,
                 combine: Optional[Union[str, int]] = None,
                 gate_mode: Optional[Union[str, int]] = None,
                 init: Optional[Union[str, int]] = None,
                 init_std: Optional[float] = None,
                 seed: Optional[int] = None,
                 gate_pool: Optional[Union[str, int]] = None,
                 gate_norm: Optional[bool] = None,
                 gate_bias: Optional[Union[str, int]] = None,
                 n_shared: Optional[int] = None,
                 expert_attention: Optional[Union[str, int]] = None,
                 top_k_renorm: Optional[bool] = None) -> None:
        fields = L.passed_fields(locals(), L.MixtureParams)
        p = L.params_init(L.MixtureParams, "mop_mixture_params_init_sized")
        L.fill_params(p, fields, "Mixture", _ENUMS)
        h = L.create("mop_mixture",
                     lambda out: L.call("mop_mixture_create", model, byref(p), out))
        self._setup(model, h)

    @classmethod
    def load(cls, model: Model, path: PathLike) -> "Mixture":
        """Load a mixture written by :meth:`save` (mop_mixture_load)."""
        self = cls.__new__(cls)
        bpath = L.cstr(path, "path")
        h = L.create("mop_mixture", lambda out: L.call("mop_mixture_load", model, bpath, out))
        self._setup(model, h)
        return self

    def _setup(self, model: Model, h: L.Handle) -> None:
        self._h = h
        self.model = model
        pp = ctypes.POINTER(c_float)()
        gp = ctypes.POINTER(c_float)()
        n = c_size_t(0)
        L.check(L.fn("mop_mixture_data")(h.ptr, byref(pp), byref(gp), byref(n)))
        self.n_params = int(n.value)
        self._params = L.view(h, ctypes.cast(pp, c_void_p).value or 0, self.n_params)
        self._grads = L.view(h, ctypes.cast(gp, c_void_p).value or 0, self.n_params)
        self.config = self._get_config()

    def _get_config(self) -> dict[str, Any]:
        p = L.MixtureParams()
        p.struct_size = ctypes.sizeof(p)
        L.check(L.call("mop_mixture_get_params", self, byref(p)))
        return {f: getattr(p, f) for f, _ in p._fields_ if f != "struct_size"}

    def __repr__(self) -> str:
        c = self.config
        return (f"<libmop.Mixture K={c['n_experts']} P={c['prompt_len']} "
                f"L_g={c['gate_layer']} L_p={c['inject_layer']} n_params={self.n_params}>")

    def close(self) -> None:
        """Drop this object's reference; the C mixture is freed once no view
        from :attr:`params`, :attr:`grads` or :meth:`tensors` is left."""
        self._params = self._grads = None
        super().close()

    @property
    def n_experts(self) -> int:
        return int(self.config["n_experts"])

    @property
    def params(self) -> np.ndarray:
        """All trainable floats (flat, zero-copy, writable)."""
        self._ptr  # ValueError if closed
        return self._params

    @property
    def grads(self) -> np.ndarray:
        """Their gradients (flat, zero-copy, writable); training calls add to them."""
        self._ptr
        return self._grads

    def tensor_info(self) -> list[MixtureTensor]:
        """The named slices: "experts" (K,P,d), "gate.w1" (h,d), "gate.b1" (h), ..."""
        out = []
        for i in range(L.call("mop_mixture_tensor_count", self)):
            ti = L.MixtureTensorInfoC()
            ti.struct_size = ctypes.sizeof(ti)
            L.check(L.call("mop_mixture_tensor_get_info", self, i, byref(ti)))
            out.append(MixtureTensor(ti.name.decode(), int(ti.offset), int(ti.size),
                                     tuple(int(ti.dims[d]) for d in range(ti.n_dims))))
        return out

    def tensors(self, grads: bool = False) -> dict[str, np.ndarray]:
        """name -> shaped zero-copy view into :attr:`params` (or :attr:`grads`)."""
        flat = self.grads if grads else self.params
        return {t.name: flat[t.offset:t.offset + t.size].reshape(t.shape)
                for t in self.tensor_info()}

    def zero_grad(self) -> None:
        L.call("mop_mixture_zero_grad", self)

    def save(self, path: PathLike, *, private: bool = False) -> None:
        """Write as safetensors, atomically (mop_mixture_save_v2). Mode 0666
        less the umask, as open() gives, or 0600 with ``private=True``
        (MOP_SAVE_PRIVATE)."""
        L.check(L.call("mop_mixture_save_v2", self, L.cstr(path, "path"), 1 if private else 0))

    def set_prox_reference(self) -> None:
        """Remember the current parameters as the FedProx reference."""
        L.check(L.call("mop_mixture_set_prox_reference", self))

    def prepare(self, ctx: Context) -> None:
        """Build the experts' key/value cache now (mop_mixture_prepare)."""
        L.check(L.call("mop_mixture_prepare", ctx, self))

    def forward_backward(self, ctx: Context, batch: Batch, load_balance: Optional[float] = None,
                         gate_supervision: Optional[float] = None,
                         gate_only: Optional[bool] = None,
                         prox_mu: Optional[float] = None) -> LossResult:
        """Forward and backward of ``batch``; gradients are ADDED to :attr:`grads`
        (call :meth:`zero_grad` between steps). None = C default (0)."""
        lp = L.params_init(L.LossParams, "mop_loss_params_init_sized")
        L.fill_params(lp, dict(load_balance=load_balance, gate_supervision=gate_supervision,
                               gate_only=gate_only, prox_mu=prox_mu), "loss")
        r = L.LossResultC()
        r.struct_size = ctypes.sizeof(r)
        b = batch._c()
        L.check(L.call("mop_mixture_forward_backward", ctx, self, byref(b), byref(lp),
                                                       byref(r)))
        return LossResult(float(r.loss), float(r.nll_sum), int(r.n_targets))

    def evaluate(self, ctx: Context, batch: Batch) -> EvalResult:
        """Per-sequence NLL, target counts and gate weights, no gradients."""
        return evaluate(ctx, [self], batch)

    def gate(self, ctx: Context, batch: Batch) -> np.ndarray:
        """Gate weights (B, K) for each sequence (runs layers [0, L_g) only)."""
        w = np.zeros((batch.n_seq, self.n_experts), dtype=np.float32)
        b = batch._c()
        L.check(L.call("mop_mixture_gate", ctx, self, byref(b), L.ptr(w, c_float)))
        return w

    def gate_inputs(self, ctx: Context, batch: Batch) -> np.ndarray:
        """Raw pooled gate inputs (B, d), before standardization
        (mop_mixture_gate_inputs): for the statistics pass and pre-training."""
        d = self.tensor_info()[0].shape[2]
        u = np.zeros((batch.n_seq, d), dtype=np.float32)
        b = batch._c()
        L.check(L.call("mop_mixture_gate_inputs", ctx, self, byref(b), L.ptr(u, c_float)))
        return u

    def gate_from_inputs(self, u: Any) -> np.ndarray:
        """Gate weights (n, K) from cached raw inputs u (n, d) of
        :meth:`gate_inputs`, without a model forward
        (mop_mixture_gate_from_inputs)."""
        u = np.ascontiguousarray(u, dtype=np.float32)
        d = self.tensor_info()[0].shape[2]
        if u.ndim != 2 or u.shape[1] != d:
            raise L.shape_error(f"u: expected (n, {d}), got shape {u.shape}")
        if u.shape[0] >= 2**31:
            raise ValueError(f"u: {u.shape[0]} rows, too many for an int32 count")
        w = np.zeros((u.shape[0], self.n_experts), dtype=np.float32)
        L.check(L.call("mop_mixture_gate_from_inputs", self, L.ptr(u, c_float), u.shape[0],
                       L.ptr(w, c_float)))
        return w

    @staticmethod
    def input_moments(u: Any) -> tuple[float, np.ndarray, np.ndarray]:
        """(n, Σu, Σu²) of rows u (n, d) (mop_mixture_input_moments); moments of
        several clients merge by adding them."""
        u = np.ascontiguousarray(u, dtype=np.float32)
        if u.ndim != 2:
            raise L.shape_error(f"u: expected (n, d), got shape {u.shape}")
        s = np.zeros(u.shape[1], dtype=np.float64)
        q = np.zeros(u.shape[1], dtype=np.float64)
        if u.shape[0] >= 2**31 or u.shape[1] >= 2**31:
            raise ValueError(f"u: shape {u.shape} too large for int32 counts")
        L.check(L.fn("mop_mixture_input_moments")(L.ptr(u, c_float), u.shape[0], u.shape[1],
                                                  L.ptr(s, c_double), L.ptr(q, c_double)))
        return float(u.shape[0]), s, q

    def set_input_stats(self, n: float, sum: Any, sumsq: Any) -> None:
        """Standardize the gate's input with these moments (mop_mixture_set_input_stats)."""
        s = np.ascontiguousarray(sum, dtype=np.float64)
        q = np.ascontiguousarray(sumsq, dtype=np.float64)
        d = self.tensor_info()[0].shape[2]
        if s.shape != (d,) or q.shape != (d,):
            raise L.shape_error(f"sum/sumsq: expected ({d},), got {s.shape} and {q.shape}")
        L.check(L.call("mop_mixture_set_input_stats", self, float(n), L.ptr(s, c_double),
                       L.ptr(q, c_double)))

    @property
    def input_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) copies of the gate's input standardization."""
        mp = ctypes.POINTER(c_float)()
        sp = ctypes.POINTER(c_float)()
        L.check(L.call("mop_mixture_get_input_stats", self, byref(mp), byref(sp)))
        d = self.tensor_info()[0].shape[2]
        return (np.ctypeslib.as_array(mp, (d,)).copy(), np.ctypeslib.as_array(sp, (d,)).copy())

    def pretrain_gate(self, u: Any, task: Any, u_val: Optional[Any] = None,
                      task_val: Optional[Any] = None, *, lr: Optional[float] = None,
                      weight_decay: Optional[float] = None, batch_size: Optional[int] = None,
                      max_epochs: Optional[int] = None, patience: Optional[int] = None,
                      seed: Optional[int] = None) -> GatePretrainResult:
        """Pre-train the gate on task labels from cached raw inputs until the
        validation accuracy stops rising (mop_mixture_pretrain_gate)."""
        u = np.ascontiguousarray(u, dtype=np.float32)
        t = np.ascontiguousarray(task, dtype=np.int32)
        if u.ndim != 2 or t.shape != (u.shape[0],):
            raise L.shape_error(f"u (n, d) and task (n,): got {u.shape} and {t.shape}")
        uv = tv = None
        n_val = 0
        if u_val is not None:
            uv = np.ascontiguousarray(u_val, dtype=np.float32)
            tv = np.ascontiguousarray(task_val, dtype=np.int32)
            if uv.ndim != 2 or tv.shape != (uv.shape[0],):
                raise L.shape_error(f"u_val and task_val: got {uv.shape} and {tv.shape}")
            n_val = uv.shape[0]
        p = L.params_init(L.GatePretrainParams, "mop_gate_pretrain_params_init_sized")
        L.fill_params(p, dict(lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                              max_epochs=max_epochs, patience=patience, seed=seed),
                      "pretrain_gate")
        r = L.GatePretrainResultC()
        r.struct_size = ctypes.sizeof(r)
        L.check(L.call(
            "mop_mixture_pretrain_gate", self, L.ptr(u, c_float), L.ptr(t, c_int32), u.shape[0],
            L.ptr(uv, c_float),
            L.ptr(tv, c_int32), n_val, byref(p), byref(r)))
        return GatePretrainResult(int(r.epochs), int(r.best_epoch), float(r.train_accuracy),
                                  float(r.val_accuracy), float(r.val_loss))

    def inject_states(self, ctx: Context, batch: Batch) -> tuple[list[np.ndarray], np.ndarray]:
        """What layers [0, L_p) give each sequence: its hidden states entering
        L_p, (lengths[b], d) each, and its raw gate input (B, d)
        (mop_mixture_inject_states); pass them back with
        :meth:`Batch.with_states` to skip those layers in later epochs."""
        d = self.tensor_info()[0].shape[2]
        states = [np.zeros((int(n), d), dtype=np.float32) for n in batch.lengths]
        ptrs = (ctypes.POINTER(c_float) * len(states))(*[L.ptr(x, c_float) for x in states])
        u = np.zeros((batch.n_seq, d), dtype=np.float32)
        b = batch._c()
        L.check(L.call("mop_mixture_inject_states", ctx, self, byref(b), ptrs,
                       L.ptr(u, c_float)))
        return states, u

    def init_experts(self, ctx: Context, batch: Batch) -> None:
        """Experts from real layer-L_p hidden states of ``batch``'s tokens
        (mop_mixture_init_experts)."""
        b = batch._c()
        L.check(L.call("mop_mixture_init_experts", ctx, self, byref(b)))

    def generate(self, ctx: Context, prompt_ids: Any, max_new: int = 64, *,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 sampler: Optional[Sampler] = None,
                 on_token: Optional[Callable[[int], Any]] = None) -> np.ndarray:
        """Generate with this mixture on ``ctx``: :meth:`Context.generate` with
        ``mixture=self`` (same parameters; returns the int32 token ids)."""
        return ctx.generate(prompt_ids, max_new, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, mixture=self, sampler=sampler,
                            on_token=on_token)


class Decoder(L.Closable):
    """Batched decoding across mixtures (``mop_decoder``): up to ``n_seq_max``
    sequences, each with its own KV cache and mixture (or none); one
    :meth:`step` appends tokens to any of them, and every sequence that adds
    one token joins one pass over the layers (the frozen weights are read
    once per step). Sequences join with :meth:`add` and leave with
    :meth:`remove` between steps. One thread at a time. The decoder keeps
    each sequence's mixture alive while the sequence lives."""

    def __init__(self, model: Model, n_seq_max: int = 16, n_ctx: int = 2048,
                 n_batch: int = 512, n_threads: int = 0) -> None:
        p = L.params_init(L.DecoderParams, "mop_decoder_params_init_sized")
        p.n_seq_max = L.check_c_int("n_seq_max", n_seq_max)
        p.n_ctx = L.check_c_int("n_ctx", n_ctx)
        p.n_batch = L.check_c_int("n_batch", n_batch)
        p.n_threads = L.check_c_int("n_threads", n_threads)
        self._h = L.create("mop_decoder",
                           lambda out: L.call("mop_decoder_create", model, byref(p), out))
        self.model = model
        self.n_vocab = model.info.n_vocab
        self._mixtures: dict[int, Any] = {}

    def add(self, mixture: Optional[Mixture] = None) -> int:
        """A new empty sequence decoding with ``mixture`` (None = base model);
        returns its id (mop_decoder_add)."""
        seq = c_int32(-1)
        L.check(L.call("mop_decoder_add", self, mixture, byref(seq)))
        self._mixtures[seq.value] = mixture._h if mixture is not None else None
        return int(seq.value)

    def remove(self, seq: int) -> None:
        """End sequence ``seq`` (mop_decoder_remove); its id may be reused."""
        L.check(L.call("mop_decoder_remove", self, L.check_c_int("seq", seq)))
        self._mixtures.pop(seq, None)

    def step(self, inputs: Any) -> dict[int, np.ndarray]:
        """Append tokens: ``inputs`` maps sequence id -> token ids (one id or a
        sequence of ids; a sequence's first call is its prompt). Returns
        {id: next-token logits (n_vocab,) copy} for the sequences stepped
        (mop_decoder_step)."""
        items = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
        if not items:
            raise L.shape_error("step: no sequences")
        arrays = [L.int32_array(np.atleast_1d(np.asarray(t)), "tokens") for _, t in items]
        n = len(items)
        seq = np.array([L.check_c_int("seq", s) for s, _ in items], dtype=np.int32)
        ntok = np.array([L.check_c_int("tokens size", a.size) for a in arrays], dtype=np.int32)
        ptrs = (ctypes.POINTER(c_int32) * n)(*[L.ptr(a, c_int32) for a in arrays])
        b = L.DecoderBatchC()
        b.struct_size = ctypes.sizeof(b)
        b.n = n
        b.seq = L.ptr(seq, c_int32)
        b.n_tokens = L.ptr(ntok, c_int32)
        b.tokens = ctypes.cast(ptrs, ctypes.POINTER(ctypes.POINTER(c_int32)))
        L.check(L.call("mop_decoder_step", self, byref(b)))
        return {int(s): self.logits(int(s)) for s in seq}

    def logits(self, seq: int) -> np.ndarray:
        """Copy of sequence ``seq``'s next-token logits (mop_decoder_get_logits)."""
        lp = ctypes.POINTER(c_float)()
        L.check(L.call("mop_decoder_get_logits", self, L.check_c_int("seq", seq), byref(lp)))
        return np.ctypeslib.as_array(lp, shape=(self.n_vocab,)).copy()

    def n_past(self, seq: int) -> int:
        """Tokens in sequence ``seq``'s cache; -1 if it is not live."""
        return int(L.call("mop_decoder_n_past", self, L.check_c_int("seq", seq)))


def evaluate(ctx: Context, mixtures: Sequence[Optional[Mixture]], batch: Batch) -> EvalResult:
    """Score a batch (mop_mixture_evaluate). ``mixtures``: one per sequence, or
    one for all, or [] for the base model; a None entry scores the base model
    for that sequence. gate_w has K of the first mixture (0 columns if none)."""
    B = batch.n_seq
    n = len(mixtures)
    if n not in (0, 1, B):
        raise L.shape_error(f"mixtures: expected 0, 1 or {B} (one per sequence), got {n}")
    arr = (c_void_p * max(1, n))()
    K = mixtures[0].n_experts if mixtures and mixtures[0] is not None else 0
    nll = np.zeros(B, dtype=np.float64)
    nt = np.zeros(B, dtype=np.int32)
    gw = np.zeros((B, max(K, 1)), dtype=np.float32)
    b = batch._c()
    with L.using(*mixtures) as ptrs:  # every mixture stays alive for the call
        for i, mp in enumerate(ptrs):
            arr[i] = mp
        L.check(L.call("mop_mixture_evaluate", ctx, arr, n, byref(b), L.ptr(nll, c_double),
                       L.ptr(nt, c_int32), L.ptr(gw, c_float) if K else None))
    return EvalResult(nll, nt, gw[:, :K])


# ---------------------------------------------------------------------------


class Optimizer(L.Closable):
    """AdamW with decoupled weight decay, global-norm clipping, linear warmup
    and cosine decay (``mop_optimizer``) over any flat float32 buffer.

    ``Optimizer(mixture, lr=...)`` binds a mixture (then :meth:`step` needs no
    arrays); ``Optimizer(n_params, ...)`` works on arrays you pass.

    The keyword-only parameters are the fields of ``mop_adamw_params``
    (include/libmop/mop_gate.h). Each defaults to None, which keeps the
    library's default (given in brackets); only the ones passed are set.

    :param target: a :class:`Mixture` to bind, or the number of floats to optimise
    :param lr: peak learning rate [3e-3]
    :param beta1: first-moment decay [0.9]
    :param beta2: second-moment decay [0.999]
    :param eps: denominator epsilon [1e-8]
    :param weight_decay: decoupled weight decay, ``p -= lr * wd * p`` [0.01]
    :param clip_norm: clip gradients to this global L2 norm; 0 = off [1.0]
    :param warmup_steps: linear warmup from 0 over this many steps [0]
    :param total_steps: cosine decay to ``min_lr_ratio * lr`` at this step;
        0 = constant after warmup [0]
    :param min_lr_ratio: the floor of the cosine decay, as a fraction of ``lr`` [0.1]
    :raises TypeError: an unknown keyword, or a value of the wrong type
    :raises OverflowError: an integer outside its C type
    :raises MopError: values the library rejects (``MOP_E_RANGE``, ...)

    :attr:`params` holds every field as the optimizer uses it.
    """

    def __init__(self, target: Union[int, Mixture], *,
                 lr: Optional[float] = None,
                 beta1: Optional[float] = None,
                 beta2: Optional[float] = None,
                 eps: Optional[float] = None,
                 weight_decay: Optional[float] = None,
                 clip_norm: Optional[float] = None,
                 warmup_steps: Optional[int] = None,
                 total_steps: Optional[int] = None,
                 min_lr_ratio: Optional[float] = None) -> None:
        fields = L.passed_fields(locals(), L.AdamWParams)
        self.mixture = target if isinstance(target, Mixture) else None
        n = (target.n_params if isinstance(target, Mixture)
             else L.check_c_int("n_params", target, L.SIZE))
        p = L.params_init(L.AdamWParams, "mop_adamw_params_init_sized")
        L.fill_params(p, fields, "Optimizer")
        self.params = {f: getattr(p, f) for f, _ in p._fields_ if f != "struct_size"}
        self.n_params = n
        self._h = L.create("mop_optimizer",
                           lambda out: L.fn("mop_optimizer_create")(n, byref(p), out))
        self.last_lr = float("nan")
        self.last_grad_norm = float("nan")

    def step(self, params: Optional[np.ndarray] = None, grads: Optional[Any] = None,
             grad_scale: float = 1.0) -> tuple[float, float]:
        """One update of ``params`` in place (a writable C-contiguous float32
        array, e.g. ``mixture.params``) from ``grads`` (scaled by ``grad_scale``,
        then clipped; not cleared). Returns (lr used, grad norm before clipping)."""
        if params is None and grads is None and self.mixture is not None:
            params, grads = self.mixture.params, self.mixture.grads
        if params is None or grads is None:
            raise TypeError("step(): pass params and grads (or bind a Mixture at creation)")
        p = L.float32_inout(params, "params")
        g = L.float32_in(grads, "grads")
        if p.ndim != 1 or g.ndim != 1 or p.size != self.n_params or g.size != self.n_params:
            raise L.shape_error(f"params {p.shape} and grads {g.shape} must both be "
                                f"({self.n_params},) as at creation")
        lr, gn = c_float(0), c_float(0)
        L.check(L.call("mop_optimizer_step", self, L.ptr(p, c_float), L.ptr(g, c_float),
                                             p.size, float(grad_scale), byref(lr), byref(gn)))
        self.last_lr, self.last_grad_norm = float(lr.value), float(gn.value)
        return self.last_lr, self.last_grad_norm

    def lr_at(self, step: int) -> float:
        """Learning rate the schedule gives at ``step`` (0-based)."""
        return float(L.call("mop_optimizer_lr_at", self, L.check_c_int("step", step, L.INT64)))
