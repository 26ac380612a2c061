"""Federated prompt-mixture training with Flower (https://flower.ai) and libmop.

Built on Flower's Message API (flwr >= 1.42: ``Message``, ``ArrayRecord``,
``flwr.clientapp.ClientApp``, ``flwr.serverapp.ServerApp`` and
``flwr.serverapp.strategy.Strategy``). Two pieces, usable apart:

* :class:`MopClient` holds one libmop :class:`~libmop.Mixture` (and a
  :class:`~libmop.Context`) on a shared :class:`~libmop.Model` and trains it
  on its own examples. :meth:`MopClient.handle` answers Flower messages:
  ``train`` (set the arrays, run S local AdamW steps, reply with the new
  values and the metrics ``num-examples``, ``loss``, ``gate_usage``,
  ``client_id``), ``evaluate`` (response-token perplexity on the client's
  validation examples) and ``query`` (gate set-up and secure-aggregation
  keys). :func:`client_app` wraps a client factory as a ``ClientApp``.
* :class:`MopStrategy` is a Flower ``Strategy`` that aggregates with
  libmop's aggregators (:class:`~libmop.Aggregator`: any strategy name, its
  options passed through), optionally with differential privacy (central or
  local clip + Gaussian noise, ``docs/PRIVACY.md``) and secure aggregation
  (the clients mask their deltas with :class:`~libmop.SecAggClient`; the
  server only adds masked blobs). :meth:`MopStrategy.run` drives it over a
  Flower ``Grid`` (inside a ``ServerApp``: :func:`server_app`). Arrays travel
  as ``ArrayRecord`` keyed by the mixture's tensor names.

:func:`run_inprocess` drives the same client and strategy objects round by
round in this process through an in-memory grid (no SuperLink, no Ray): for
tests and machines where Ray is not wanted. Flower's engines: ``flwr run``
on a Flower App (examples/flower_app, simulation or deployment) or
``flwr.simulation.run_simulation`` (examples/flower_mop.py); see
docs/FLOWER.md.

Flower's telemetry and Ray's usage statistics are switched off when this
module is imported (``FLWR_TELEMETRY_ENABLED=0``, ``RAY_USAGE_STATS_ENABLED=0``)
unless the environment already sets them.
"""
from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import math  # noqa: E402
import threading  # noqa: E402
from typing import Any, Callable, Iterable, Optional, Sequence, Union  # noqa: E402

import numpy as np  # noqa: E402

try:
    import flwr  # noqa: E402
    from flwr.app import (Array, ArrayRecord, ConfigRecord, Message,  # noqa: E402
                          MetricRecord, RecordDict)
    from flwr.app import Context as FlowerContext  # noqa: E402
    from flwr.clientapp import ClientApp  # noqa: E402
    from flwr.serverapp import Grid, ServerApp  # noqa: E402
    from flwr.serverapp.strategy import Result, Strategy  # noqa: E402
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "libmop.flower needs Flower >= 1.42 (the Message API): pip install "
        "'flwr[simulation]>=1.42,<1.43' (see scripts/requirements-dev.txt and docs/FLOWER.md); "
        f"import failed: {e}") from e

from .core import Context, Model  # noqa: E402
from .fed import norm_bound as norm_bound_fn  # noqa: E402
from .fed import norm_bound_params  # noqa: E402
from .fed import (STRATEGY, Aggregator, SecAggClient, SecAggServer, Update,  # noqa: E402
                  strategy_name)
from .mixture import Batch, Mixture, Optimizer, evaluate  # noqa: E402

__all__ = ["MopClient", "MopStrategy", "shared_model", "register_model", "mixture_arrays",
           "set_mixture_arrays", "make_batches", "perplexity", "run_inprocess", "client_app",
           "server_app", "InProcessGrid", "reply_arrays", "reply_metrics", "FLWR_VERSION"]

FLWR_VERSION: str = flwr.__version__
Scalar = Union[int, float, str, bytes, bool]
Example = Any   # (instruction, response) tuple or {"instruction", "response", "task"} dict

# ---------------------------------------------------------------------------
# One model per process, shared by every client that runs in it.

_models: dict[str, Model] = {}
_models_lock = threading.Lock()


def register_model(key: str, model: Model) -> None:
    """Make ``model`` the process's model for ``key`` (e.g. a pruned model kept
    in memory under the path it was saved to): :func:`shared_model` returns it
    instead of loading the file."""
    with _models_lock:
        _models[os.fspath(key)] = model


def shared_model(path: Union[str, os.PathLike], n_threads: int = 0) -> Model:
    """The process's :class:`Model` for ``path``, loaded on first use. Models
    are read-only and thread-safe, so every client in a process shares one."""
    key = os.fspath(path)
    with _models_lock:
        m = _models.get(key)
        if m is None or m.closed:
            m = _models[key] = Model(key, n_threads=n_threads)
        return m


# ---------------------------------------------------------------------------
# Mixture parameters <-> numpy arrays


def mixture_arrays(mixture: Mixture) -> list[np.ndarray]:
    """Copies of the mixture's named tensors, in :meth:`Mixture.tensor_info` order."""
    return [np.array(a, dtype=np.float32, copy=True) for a in mixture.tensors().values()]


def set_mixture_arrays(mixture: Mixture, arrays: Sequence[np.ndarray]) -> None:
    """Write ``arrays`` (as from :func:`mixture_arrays`) into the mixture's buffer."""
    views = mixture.tensors()
    if len(arrays) != len(views):
        raise ValueError(f"expected {len(views)} arrays ({', '.join(views)}), got {len(arrays)}")
    for (name, v), a in zip(views.items(), arrays):
        a = np.asarray(a)
        if a.shape != v.shape:
            raise ValueError(f"tensor {name}: expected shape {v.shape}, got {a.shape}")
        v[...] = a


def _example_pair(ex: Example) -> tuple[str, str]:
    if isinstance(ex, dict):
        return ex["instruction"], ex["response"]
    return ex[0], ex[1]


def make_batches(model: Model, examples: Sequence[Example], batch_size: int,
                 max_len: int, tasks: Optional[Sequence[str]] = None) -> list[Batch]:
    """Consecutive batches of ``batch_size`` examples (the last may be smaller).
    With ``tasks`` (the ordered task names), each batch carries the examples'
    task ids (dict examples with a "task" key), which the oracle gate needs."""
    out = []
    for i in range(0, len(examples), batch_size):
        part = examples[i:i + batch_size]
        task = None if tasks is None else [list(tasks).index(e["task"]) for e in part]
        out.append(Batch.from_examples(model, [_example_pair(e) for e in part],
                                       max_len=max_len, task=task))
    return out


def perplexity(ctx: Context, mixture: Optional[Mixture], batches: Sequence[Batch]
               ) -> tuple[float, float, int]:
    """(perplexity, Σ NLL, Σ targets) over the response tokens of ``batches``,
    with ``mixture`` or the base model (None)."""
    nll, n = 0.0, 0
    for b in batches:
        r = evaluate(ctx, [] if mixture is None else [mixture], b)
        nll += float(r.nll_sum.sum())
        n += int(r.n_targets.sum())
    return (math.exp(nll / n) if n else float("nan")), nll, n


def _usage_str(u: np.ndarray) -> str:
    return ",".join(f"{x:.6g}" for x in u)


def _usage_parse(s: Any) -> Optional[np.ndarray]:
    if isinstance(s, (list, tuple, np.ndarray)) and len(s):
        return np.asarray(s, dtype=np.float32)
    if not isinstance(s, str) or not s:
        return None
    return np.array([float(x) for x in s.split(",")], dtype=np.float32)


# ---------------------------------------------------------------------------
# Flower records <-> numpy / dicts


def _plain(v: Any) -> Any:
    """A value Flower's records accept (numpy scalars and vectors made plain)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [x.item() for x in v.ravel()]
    return v


def _records(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in d.items()}


def _array_record(names: Sequence[str], arrays: Sequence[np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` holding ``arrays`` under ``names`` (in that order)."""
    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in zip(names, arrays)})


def reply_arrays(message: Message) -> list[np.ndarray]:
    """The arrays of a client's ``train`` reply, in the order the client sent them
    (the mixture's tensors, or one uint8 blob under secure aggregation)."""
    return message.content["arrays"].to_numpy_ndarrays()


def reply_metrics(message: Message) -> dict[str, Any]:
    """The metrics of a client's reply as a dict (``num-examples``, ``loss``, ...)."""
    return dict(message.content["metrics"])


def _config(message: Message) -> dict[str, Any]:
    return dict(message.content["config"]) if "config" in message.content else {}


# ---------------------------------------------------------------------------
# Client


class MopClient:
    """A Flower client training a prompt mixture with libmop.

    Flower calls :meth:`handle` with each message (see :func:`client_app`);
    :meth:`fit`, :meth:`evaluate` and :meth:`get_properties` are the same
    steps on plain numpy arrays and dicts.

    ``model`` is shared (see :func:`shared_model`); the client owns its
    :class:`Mixture` (created with ``mixture_params``: n_experts, prompt_len,
    gate_mode, ...; ``seed`` should be equal on all clients and the server so
    their layouts agree) and a :class:`Context`. ``train`` / ``val`` are the
    client's examples. Fit config keys (from the strategy) override the
    defaults given here: ``local_steps``, ``lr``, ``batch_size``, ``round``;
    ``clip_norm`` / ``noise_std`` / ``noise_seed`` (local DP) and the
    ``secagg_*`` keys (secure aggregation) are set by :class:`MopStrategy`.
    ``progress``(message) is called once per fit with a summary line.

    Gate set-up (driven by :class:`MopStrategy` before round 1 through
    ``query`` messages, :meth:`get_properties` with ``mop_phase``): ``gate_moments`` returns the
    moments (n, Σu, Σu²) of the client's pooled gate inputs;
    ``gate_pretrain`` (one FedAvg round of the gate's pre-training) sets the
    merged statistics, scores the sent gate on the client's rows (Σ −log π of
    the task, argmax hits), trains it for ``pretrain_epochs`` epochs on the
    client's task labels (examples as dicts with a ``task`` key, ids =
    positions in ``tasks``, which must be the same list on every client) and
    returns it with the scores. Fit configs carry the merged statistics (``gate_stats``).

    Optimizer state: the client keeps two AdamW states across rounds, one
    for the experts (``lr``, clip 1) and one for the gate (``gate_lr``,
    ``gate_clip``), kept per (run, client id) in the client's process (a
    client re-created by Flower's engine in the same process finds them
    again); only the parameters come from the server each round.
    """

    def __init__(self, model: Model, train: Sequence[Example], val: Sequence[Example] = (),
                 *, client_id: int = 0, local_steps: int = 4, batch_size: int = 2,
                 max_len: int = 96, lr: float = 3e-3, weight_decay: float = 0.0,
                 gate_lr: float = 1e-3, gate_clip: float = 1.0,
                 tasks: Optional[Sequence[str]] = None,
                 n_threads: int = 0, seed: int = 0, progress: Optional[Callable[[str], Any]] = None,
                 **mixture_params: Any) -> None:
        if not train:
            raise ValueError(f"client {client_id}: no training examples")
        self.model = model
        self.client_id = int(client_id)
        self.train = list(train)
        self.val = list(val)
        self.local_steps, self.batch_size = int(local_steps), int(batch_size)
        self.max_len, self.lr, self.weight_decay = int(max_len), float(lr), float(weight_decay)
        self.seed = int(seed)
        self.progress = progress
        self.gate_lr, self.gate_clip = float(gate_lr), float(gate_clip)
        self.tasks = list(tasks) if tasks is not None else None
        self.mixture = Mixture(model, **mixture_params)
        self._n_opt = next((t.offset for t in self.mixture.tensor_info()
                            if t.name.startswith("gate.")), self.mixture.n_params)
        self._gate_u: Optional[np.ndarray] = None
        G, P = self.mixture.tensor_info()[0].shape[:2]   # the prompt stream: up to G*P rows
        self.ctx = Context(model, n_ctx=self.max_len + G * P + 8,
                           n_batch=self.max_len + G * P + 8, n_threads=n_threads)
        self._val_batches: Optional[list[Batch]] = None

    # -- Flower API ---------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The mixture's tensor names (the keys of the arrays it sends)."""
        return [t.name for t in self.mixture.tensor_info()]

    def handle(self, message: Message) -> Message:
        """The reply to one Flower message: ``train`` runs :meth:`fit`,
        ``evaluate`` :meth:`evaluate`, ``query`` :meth:`get_properties`. The
        message carries ``config`` (a ``ConfigRecord``) and, for train and
        evaluate, ``arrays`` (an ``ArrayRecord`` of the global mixture); the
        reply carries ``arrays`` and ``metrics`` (with ``num-examples``), or
        ``props`` for a query."""
        kind = message.metadata.message_type.split(".")[0]
        config = _config(message)
        if kind == "query":
            props = self.get_properties(config)
            return Message(RecordDict({"props": ConfigRecord(_records(props))}), reply_to=message)
        arrays = message.content["arrays"].to_numpy_ndarrays()
        if kind == "train":
            out, n, metrics = self.fit(arrays, config)
            names = self.names if len(out) == len(self.names) else ["masked"]
            return Message(RecordDict({
                "arrays": _array_record(names, out),
                "metrics": MetricRecord(_records(dict(metrics, **{"num-examples": n})))}),
                reply_to=message)
        if kind == "evaluate":
            loss, n, metrics = self.evaluate(arrays, config)
            return Message(RecordDict({"metrics": MetricRecord(_records(
                dict(metrics, loss=loss, **{"num-examples": n})))}), reply_to=message)
        raise ValueError(f"client {self.client_id}: unknown message type "
                         f"{message.metadata.message_type!r}")

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        """Copies of the mixture's tensors (:func:`mixture_arrays`)."""
        return mixture_arrays(self.mixture)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        """Secure aggregation setup: with ``secagg_round`` in ``config``, create
        this round's :class:`SecAggClient` and return its public key."""
        phase = config.get("mop_phase")
        if phase is not None:
            return self._gate_phase(str(phase), config)
        if "secagg_round" not in config:
            return {"client_id": self.client_id}
        sa = SecAggClient(int(config["secagg_index"]), **_secagg_kwargs(config))
        _secagg_clients[(self.client_id, int(config["secagg_round"]))] = sa
        return {"client_id": self.client_id, "public_key": sa.public_key}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]
            ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        rnd = int(config.get("round", 0))
        steps = int(config.get("local_steps", self.local_steps))
        bs = int(config.get("batch_size", self.batch_size))
        lr = float(config.get("lr", self.lr))
        set_mixture_arrays(self.mixture, parameters)
        self._set_stats(config)
        opt, opt_gate = self._optimizers(config, lr)
        n_opt = self._n_opt
        flat, grads = self.mixture.params, self.mixture.grads
        rng = np.random.default_rng([self.seed, rnd, self.client_id])
        losses, seen = [], []
        for _ in range(steps):
            idx = rng.choice(len(self.train), size=min(bs, len(self.train)), replace=False)
            exs = [_example_pair(self.train[i]) for i in idx]
            seen.extend(exs)
            labels = self._labels()
            b = Batch.from_examples(self.model, exs, max_len=self.max_len,
                                    task=None if labels is None else labels[idx])
            self.mixture.zero_grad()
            r = self.mixture.forward_backward(self.ctx, b)
            opt.step(flat[:n_opt], grads[:n_opt])
            if opt_gate is not None:
                opt_gate.step(flat[n_opt:], grads[n_opt:])
            if r.n_targets:   # a batch cut to max_len may keep no target
                losses.append(r.mean_nll)
        if self.progress:
            self.progress(f"client {self.client_id} round {rnd}: {steps} local steps on "
                          f"{len(self.train)} examples, mean loss {np.mean(losses):.3f}")
        usage = self._gate_usage(seen)
        metrics: dict[str, Scalar] = {"loss": float(np.mean(losses)) if losses else float("nan"),
                                      "gate_usage": [float(x) for x in usage],
                                      "client_id": self.client_id}
        out = mixture_arrays(self.mixture)
        if "clip_norm" in config or "secagg_round" in config or "norm_bound_max" in config:
            delta = Update("delta", round=rnd, client_id=self.client_id,
                           n_samples=float(len(self.train)),
                           tensors={t.name: o - np.asarray(p) for t, o, p in
                                    zip(self.mixture.tensor_info(), out, parameters)})
            if "norm_bound_max" in config:       # norm bound (secure aggregation)
                metrics["norm_before_bound"] = delta.clip(float(config["norm_bound_max"]))
            if "clip_norm" in config:            # local DP (docs/PRIVACY.md)
                metrics["norm_before_clip"] = delta.clip(float(config["clip_norm"]))
                if float(config.get("noise_std", 0.0)) > 0:
                    delta.add_noise(float(config["noise_std"]), int(config.get("noise_seed", 0)))
            if "secagg_round" in config:         # send only the masked delta
                key = (self.client_id, int(config["secagg_round"]))
                sa = _secagg_clients.pop(key, None)
                if sa is None:
                    raise RuntimeError(f"client {self.client_id}: no secure-aggregation state "
                                       f"for round {key[1]} (its key query was not answered "
                                       "in this process)")
                sa.set_peer_keys(config["secagg_keys"])
                blob = sa.mask_update(delta)
                sa.close()
                return [np.frombuffer(blob, dtype=np.uint8).copy()], len(self.train), metrics
            out = [np.asarray(p, dtype=np.float32) + d
                   for p, d in zip(parameters, delta.tensors().values())]
        return out, len(self.train), metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Scalar]
                 ) -> tuple[float, int, dict[str, Scalar]]:
        if not self.val:
            return float("nan"), 0, {"ppl": float("nan")}
        set_mixture_arrays(self.mixture, parameters)
        if self._val_batches is None:
            self._val_batches = make_batches(self.model, self.val, max(1, self.batch_size * 2),
                                             self.max_len)
        ppl, nll, n = perplexity(self.ctx, self.mixture, self._val_batches)
        return nll / max(1, n), len(self.val), {"ppl": ppl, "n_targets": n}

    # -- helpers ------------------------------------------------------------
    def _optimizers(self, config: dict[str, Scalar], lr: float
                    ) -> tuple[Optimizer, Optional[Optimizer]]:
        """This client's AdamW states, created on its first fit and kept."""
        key = (str(config.get("run_id", "")), self.client_id)
        opts = _client_optimizers.get(key)
        if opts is None:
            n, n_opt = self.mixture.n_params, self._n_opt
            opt = Optimizer(n_opt, lr=lr, weight_decay=self.weight_decay)
            gate = None
            if n_opt < n:
                gate = Optimizer(n - n_opt, lr=float(config.get("gate_lr", self.gate_lr)),
                                 weight_decay=self.weight_decay,
                                 clip_norm=float(config.get("gate_clip", self.gate_clip)))
            opts = _client_optimizers[key] = (opt, gate)
        return opts

    def _set_stats(self, config: dict[str, Scalar]) -> None:
        blob = config.get("gate_stats")
        if isinstance(blob, bytes) and blob:
            v = np.frombuffer(blob, dtype=np.float64)
            d = (v.size - 1) // 2
            self.mixture.set_input_stats(float(v[0]), v[1:1 + d], v[1 + d:])

    def _gate_inputs(self) -> np.ndarray:
        """Raw pooled gate inputs of the client's training examples (cached)."""
        if self._gate_u is None:
            us = [self.mixture.gate_inputs(self.ctx, b)
                  for b in make_batches(self.model, self.train, max(1, self.batch_size * 2),
                                        self.max_len)]
            self._gate_u = np.concatenate(us, axis=0)
        return self._gate_u

    def _labels(self) -> Optional[np.ndarray]:
        if self.tasks is None or len(self.tasks) < 2 or \
                self.mixture.n_experts < len(self.tasks):
            return None
        if not all(isinstance(e, dict) and "task" in e for e in self.train):
            return None
        return np.array([self.tasks.index(e["task"]) for e in self.train], dtype=np.int32)

    def _gate_phase(self, phase: str, config: dict[str, Scalar]) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {"client_id": self.client_id}
        if self._n_opt == self.mixture.n_params:   # no learned gate
            return out
        if phase == "gate_moments":
            n, s, q = Mixture.input_moments(self._gate_inputs())
            if "secagg_round" in config:           # two secure sums (see MopStrategy)
                if "gate_mean" in config:          # stage 2: Σ (u − μ)²
                    mu = np.frombuffer(config["gate_mean"], dtype=np.float64)
                    vec = ((self._gate_inputs().astype(np.float64) - mu) ** 2).sum(axis=0)
                else:                              # stage 1: (n, Σu)
                    vec = np.concatenate([[n], s])
                return dict(out, **self._secure_phase(config, vec))
            return dict(out, n=n, sum=s.tobytes(), sumsq=q.tobytes())
        if phase == "gate_pretrain":
            # one FedAvg round of the gate's pre-training: score the received
            # gate on the client's rows (its federated validation), then train it
            task = self._labels()
            n = float(len(self.train)) if task is not None else 0.0
            if "secagg_keys" not in config:        # train (once per round), keep the reply
                theta = np.frombuffer(config["gate_params"], dtype=np.float32)
                nll = hits = 0.0
                if task is not None:
                    self._set_stats(config)
                    flat = self.mixture.params
                    flat[self._n_opt:] = theta
                    u = self._gate_inputs()
                    w = self.mixture.gate_from_inputs(u)
                    # −log π clamped at 1e-6: per-row at most 13.8, so a secure
                    # sum of up to ~75k rows stays inside its 2^20 range
                    nll = float(-np.log(np.maximum(w[np.arange(len(task)), task], 1e-6)).sum())
                    hits = float((w.argmax(axis=1) == task).sum())
                    rnd = int(config.get("pretrain_round", 1))
                    r = self.mixture.pretrain_gate(
                        u, task, seed=(self.seed * 7919 + self.client_id + 1) * 1009 + rnd,
                        max_epochs=int(config.get("pretrain_epochs", 1)))
                    theta = flat[self._n_opt:]
                    if self.progress:
                        self.progress(f"client {self.client_id} gate pre-training round {rnd}: "
                                      f"{r.epochs} epochs, argmax accuracy "
                                      f"{r.train_accuracy:.3f} train")
                self._pretrained = (np.array(theta, dtype=np.float32, copy=True), nll, hits)
            theta, nll, hits = self._pretrained
            if "secagg_round" in config:
                return dict(out, **self._secure_phase(
                    config, np.concatenate([n * theta.astype(np.float64), [n, nll, hits]])))
            return dict(out, n=n, gate=theta.tobytes(), nll=nll, hits=hits)
        raise ValueError(f"unknown mop_phase {phase!r}")

    def _secure_phase(self, config: dict[str, Scalar], vec: np.ndarray) -> dict[str, Scalar]:
        """Secure sum in two calls: without ``secagg_keys`` a fresh key pair
        (the public key is returned), with them the masked vector."""
        key = (self.client_id, int(config["secagg_round"]))
        if "secagg_keys" not in config:
            sa = SecAggClient(int(config["secagg_index"]), **_secagg_kwargs(config))
            _secagg_clients[key] = sa
            return {"public_key": sa.public_key}
        sa = _secagg_clients.pop(key)
        sa.set_peer_keys(config["secagg_keys"])
        blob = sa.mask(np.asarray(vec, dtype=np.float32))
        sa.close()
        return {"masked": blob}

    def _gate_usage(self, examples: list[tuple[str, str]]) -> np.ndarray:
        """Mean gate weight per expert over ``examples`` (the local data seen)."""
        K = self.mixture.n_experts
        if K == 1 or not examples or self.mixture.config["gate_mode"] == 2:  # oracle
            return np.ones(K, dtype=np.float32)
        b = Batch.from_examples(self.model, examples, max_len=self.max_len)
        return self.mixture.gate(self.ctx, b).mean(axis=0).astype(np.float32)

    def close(self) -> None:
        self.ctx.close()
        self.mixture.close()


# Secure-aggregation client state between the key query and the train message
# (masking) of one round, per (client id, round), in the client's process.
_secagg_clients: dict[tuple[int, int], SecAggClient] = {}
# Each client's AdamW states (experts, gate) across rounds, per (run id, client id).
_client_optimizers: dict[tuple[str, int], tuple[Optimizer, Optional[Optimizer]]] = {}
_SECAGG_KEYS = ("n_clients", "length", "round", "ring_bits", "scale", "clip_range",
                "min_survivors")


def _secagg_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[f"secagg_{k}"] for k in _SECAGG_KEYS if f"secagg_{k}" in config}


# ---------------------------------------------------------------------------
# Strategy


class MopStrategy(Strategy):
    """A Flower strategy aggregating prompt mixtures with libmop.

    ``initial``: the global mixture to start from (a :class:`Mixture`, whose
    values are copied) or ``(names, arrays)``. ``strategy``: any libmop
    aggregator name (``fedavg``, ``median``, ``mop_aware``, ... see
    :data:`libmop.fed.STRATEGY`); ``aggregator_params`` are passed to
    :class:`Aggregator` (server_lr, trim_ratio, krum_f, ...).

    Privacy (docs/PRIVACY.md): ``dp="central"`` clips each client's delta to
    ``clip_norm`` on the server, weighs clients equally and adds
    N(0, (server_lr·z·C/n)²) to the new global values (z =
    ``noise_multiplier``); ``dp="local"`` makes each client clip and add
    N(0, (z·C)²) itself (with ``secure_aggregation``: z·C/√n each, the
    distributed-DP recipe). ``noise_seed`` 0 = OS randomness.

    ``secure_aggregation``: before each round the server asks every sampled
    client for a fresh public key (a Flower ``query`` message), sends all keys
    with the fit instructions, and receives masked deltas only; it sums them
    with :class:`SecAggServer` and sees no single update. Only sum-based
    rules work then (fedavg with equal weights and the server optimizers
    fedavgm/fedadam/fedyogi/fedadagrad); a dropped client fails the round.
    ``secagg_params``: clip_range, scale, ring_bits (libmop defaults).

    ``norm_bound``: clip or reject client deltas by L2 norm before the
    strategy (and before central DP's clip): ``dict(median_multiple=2,
    mode="clip")``, ``dict(max_norm=C, mode="reject")`` (both bounds: the
    smaller; :func:`libmop.norm_bound`, mop_update_norm_bound). Per round
    the bound, the norms and who was kept go to :attr:`norm_bound_history`.
    With ``secure_aggregation`` only ``dict(max_norm=C)`` (clip) is allowed:
    each client clips its own delta before masking.

    ``fit_config``: extra keys sent to clients (``local_steps``, ``lr``,
    ``batch_size``). ``evaluate_fn``(round, arrays) -> (loss, metrics) runs
    on the server after each round (and before the first). Aggregated
    metrics: ``loss`` (example-weighted mean of the clients' training loss).
    :attr:`history` keeps per-round dicts; :attr:`global_arrays` the current
    global values.

    Gate set-up (mixtures with a learned gate; ``gate_setup``, on by default),
    before the first round's training, through ``query`` messages: every
    client sends the moments (n, Σu, Σu²) of its gate inputs, the server adds
    them (:attr:`gate_stats`; set on ``initial`` when it is a Mixture, and sent
    to the clients in every fit config); then (``gate_pretrain``, clients
    created with ``tasks``) the gate is pre-trained on the clients' labels in
    FedAvg rounds (at most ``pretrain_rounds``, each ``pretrain_epochs`` local
    epochs; the clients score each sent gate on their own rows, the best
    scored gate goes into :attr:`global_arrays`). With ``secure_aggregation``
    both go through secure sums (moments as (n, Σu), then Σ(u − μ)² around
    the global mean μ: fixed point 2^16, range 2^36; each round's gates and
    scores as (n·θ, n, Σ −log π, hits): 2^32, 2^20). :attr:`gate_setup_info`
    records what was done.
    """

    def __init__(self, initial: Union[Mixture, tuple[Sequence[str], Sequence[np.ndarray]]],
                 strategy: str = "fedavg", *, fraction_fit: float = 1.0,
                 min_fit_clients: int = 2, min_available_clients: int = 2,
                 fraction_evaluate: float = 0.0, min_evaluate_clients: int = 1,
                 fit_config: Optional[dict[str, Scalar]] = None,
                 evaluate_fn: Optional[Callable[[int, list[np.ndarray]],
                                                Optional[tuple[float, dict[str, Scalar]]]]] = None,
                 dp: Optional[str] = None, clip_norm: float = 1.0, noise_multiplier: float = 0.0,
                 noise_seed: int = 0, secure_aggregation: bool = False,
                 secagg_params: Optional[dict[str, Any]] = None,
                 gate_setup: bool = True, gate_pretrain: bool = True,
                 pretrain_epochs: int = 1, pretrain_rounds: int = 50,
                 timeout: float = 3600.0, norm_bound: Optional[dict[str, Any]] = None,
                 seed: int = 0, **aggregator_params: Any) -> None:
        self._initial_mixture = initial if isinstance(initial, Mixture) else None
        if isinstance(initial, Mixture):
            self.names = [t.name for t in initial.tensor_info()]
            arrays = mixture_arrays(initial)
        else:
            names, arrays = initial
            self.names = list(names)
            arrays = [np.array(a, dtype=np.float32, copy=True) for a in arrays]
            if len(arrays) != len(self.names):
                raise ValueError(f"initial: {len(self.names)} names but {len(arrays)} arrays")
        self.global_arrays: list[np.ndarray] = arrays
        strategy = strategy_name(strategy)
        if strategy not in STRATEGY:
            raise ValueError(f"unknown libmop strategy {strategy!r}; known: {', '.join(STRATEGY)}")
        if dp not in (None, "central", "local"):
            raise ValueError(f"dp must be None, 'central' or 'local', got {dp!r}")
        if dp is not None and not clip_norm > 0:
            raise ValueError(f"dp={dp!r} needs clip_norm > 0, got {clip_norm}")
        if secure_aggregation and strategy not in ("fedavg", "fedavgm", "fedadam", "fedyogi",
                                                   "fedadagrad"):
            raise ValueError(f"secure aggregation gives the server only the sum of the "
                             f"updates; strategy {strategy!r} needs each update")
        if secure_aggregation and dp == "central":
            raise ValueError("dp='central' clips each update on the server, which secure "
                             "aggregation hides: use dp='local' (distributed DP)")
        # norm bounding before the strategy (mop_update_norm_bound): keywords
        # mode ("clip" | "reject"), max_norm, median_multiple
        self.norm_bound = dict(norm_bound) if norm_bound else None
        if self.norm_bound is not None:
            nb = norm_bound_params(**self.norm_bound)
            if not (nb.max_norm > 0 or nb.median_multiple > 0):
                raise ValueError("norm_bound needs max_norm > 0 or median_multiple > 0")
            if secure_aggregation and (nb.mode != 0 or nb.median_multiple > 0):
                raise ValueError("with secure aggregation the server sees no norm: only "
                                 "norm_bound=dict(max_norm=C) in clip mode (each client clips "
                                 "its own delta)")
        self.norm_bound_history: list[dict[str, Any]] = []
        self.strategy_name = strategy
        self.aggregator = Aggregator(strategy, seed=seed, **aggregator_params)
        self.aggregator_params = dict(self.aggregator.params)
        self.fraction_fit, self.fraction_evaluate = fraction_fit, fraction_evaluate
        self.min_fit_clients, self.min_available_clients = min_fit_clients, min_available_clients
        self.min_evaluate_clients = min_evaluate_clients
        self.fit_config = dict(fit_config or {})
        self.evaluate_fn = evaluate_fn
        self.dp, self.clip_norm = dp, float(clip_norm)
        self.noise_multiplier, self.noise_seed = float(noise_multiplier), int(noise_seed)
        self.secure_aggregation = bool(secure_aggregation)
        self.secagg_params = dict(secagg_params or {})
        self.history: list[dict[str, Any]] = []
        self.gate_setup, self.gate_pretrain = bool(gate_setup), bool(gate_pretrain)
        if int(pretrain_epochs) < 1 or int(pretrain_rounds) < 1:
            raise ValueError(f"pretrain_epochs and pretrain_rounds must be >= 1, got "
                             f"{pretrain_epochs} and {pretrain_rounds}")
        self.pretrain_epochs, self.pretrain_rounds = int(pretrain_epochs), int(pretrain_rounds)
        self.gate_stats: Optional[tuple[float, np.ndarray, np.ndarray]] = None
        self.gate_setup_info: dict[str, Any] = {}
        self._gate_done = not any(n.startswith("gate.") for n in self.names)
        # the clients key their optimizer states by this (a run = one strategy)
        self.run_id = os.urandom(8).hex()
        self.timeout = float(timeout)
        self._rng_seed = int(seed)

    def __repr__(self) -> str:
        return f"<MopStrategy {self.strategy_name} dp={self.dp} secagg={self.secure_aggregation}>"

    # -- talking to the nodes (Message API) ------------------------------------
    def _nodes(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        """Node ids for a round: waits until ``min_available_clients`` are
        connected, then samples ``max(fraction·available, minimum)``, returned
        sorted (the same order whatever the engine)."""
        import random
        import time
        need = max(self.min_available_clients, minimum)
        deadline = time.monotonic() + self.timeout
        while len(ids := sorted(grid.get_node_ids())) < need:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids)} of {need} nodes connected after {self.timeout}s")
            time.sleep(0.5)
        n = min(len(ids), max(int(len(ids) * fraction), minimum))
        return sorted(random.Random(self._rng_seed).sample(ids, n)) if n < len(ids) else ids

    def _send(self, grid: Grid, kind: str, contents: Sequence[RecordDict],
              nodes: Sequence[int], group: str) -> list[Message]:
        """Send one message per node and return the replies in node order;
        a missing or failed reply raises (naming the node and its error)."""
        msgs = [Message(content=c, dst_node_id=int(n), message_type=kind, group_id=group)
                for c, n in zip(contents, nodes)]
        replies = {r.metadata.src_node_id: r
                   for r in grid.send_and_receive(msgs, timeout=self.timeout)}
        out = []
        for n in nodes:
            r = replies.get(int(n))
            if r is None:
                raise RuntimeError(f"{kind}: node {n} did not reply within {self.timeout}s")
            if r.has_error():
                raise RuntimeError(f"{kind}: node {n} failed: {r.error.reason}")
            out.append(r)
        return out

    def _query(self, grid: Grid, nodes: Sequence[int], configs: Sequence[dict[str, Any]],
               group: str = "0") -> list[dict[str, Any]]:
        """``query`` messages (:meth:`MopClient.get_properties`): one config per node."""
        replies = self._send(grid, "query", [RecordDict({"config": ConfigRecord(_records(c))})
                                             for c in configs], nodes, group)
        return [dict(r.content["props"]) for r in replies]

    # -- Flower Strategy API ---------------------------------------------------
    def initial_arrays(self) -> ArrayRecord:
        """The global mixture as an ``ArrayRecord`` (keys = tensor names)."""
        return _array_record(self.names, self.global_arrays)

    def summary(self) -> None:
        from logging import INFO
        from flwr.common.logger import log
        log(INFO, "\t%r: %d tensors, %d values; fit_config %s", self, len(self.names),
            sum(int(a.size) for a in self.global_arrays), self.fit_config)

    def run(self, grid: Grid, num_rounds: int, timeout: Optional[float] = None) -> Result:
        """Run ``num_rounds`` rounds over ``grid`` (Flower's ``Strategy.start``),
        with :attr:`evaluate_fn` as the server-side evaluation. Returns Flower's
        ``Result``; :attr:`history` and :attr:`global_arrays` hold the same."""
        if timeout is not None:
            self.timeout = float(timeout)
        return self.start(grid, self.initial_arrays(), num_rounds=num_rounds,
                          timeout=self.timeout,
                          evaluate_fn=self.central_evaluate if self.evaluate_fn else None)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._nodes(grid, self.fraction_fit, self.min_fit_clients)
        if not self._gate_done and self.gate_setup:
            self._setup_gate(grid, nodes)
        self._gate_done = True
        cfg: dict[str, Any] = dict(config, **self.fit_config)
        cfg.update(round=server_round, run_id=self.run_id)
        if self.gate_stats is not None:
            n_, s_, q_ = self.gate_stats
            cfg["gate_stats"] = np.concatenate([[n_], s_, q_]).astype(np.float64).tobytes()
        n = len(nodes)
        if self.norm_bound is not None and self.secure_aggregation:
            cfg["norm_bound_max"] = float(self.norm_bound["max_norm"])
        if self.dp == "local":
            z = self.noise_multiplier / (math.sqrt(n) if self.secure_aggregation else 1.0)
            cfg.update(clip_norm=self.clip_norm, noise_std=z * self.clip_norm,
                       noise_seed=self.noise_seed)
        arrays = self.initial_arrays()   # the global values (the gate set-up may change them)
        group = str(server_round)
        if not self.secure_aggregation:
            return [Message(content=RecordDict({"arrays": arrays,
                                                "config": ConfigRecord(_records(cfg))}),
                            dst_node_id=int(nd), message_type="train", group_id=group)
                    for nd in nodes]
        # secure aggregation: one fresh key pair per client and round (a query each)
        length = sum(int(a.size) for a in self.global_arrays)
        sa = dict(self.secagg_params, n_clients=n, length=length, round=server_round)
        cfg.update({f"secagg_{k}": v for k, v in sa.items()})
        props = self._query(grid, nodes, [dict(cfg, secagg_index=i) for i in range(n)], group)
        keys = []
        for nd, p in zip(nodes, props):
            pk = p.get("public_key")
            if not isinstance(pk, bytes):
                raise RuntimeError(f"node {nd} returned no secure-aggregation key")
            keys.append(pk)
        self._secagg_round = (nodes, sa)
        cfg["secagg_keys"] = b"".join(keys)
        return [Message(content=RecordDict({"arrays": arrays, "config": ConfigRecord(
                    _records(dict(cfg, secagg_index=i)))}),
                        dst_node_id=int(nd), message_type="train", group_id=group)
                for i, nd in enumerate(nodes)]

    # -- gate set-up before round 1 -------------------------------------------
    def _secure_sum(self, grid: Grid, nodes: list[int], config: dict[str, Any], length: int,
                    scale: float, clip: float) -> np.ndarray:
        """The sum of the clients' vectors for ``config``'s phase, by secure aggregation."""
        sa = dict(n_clients=len(nodes), length=length, round=0, scale=scale, clip_range=clip)
        cfg = dict(config, **{f"secagg_{k}": v for k, v in sa.items()})
        keys = [p["public_key"] for p in
                self._query(grid, nodes, [dict(cfg, secagg_index=i) for i in range(len(nodes))])]
        server = SecAggServer(**sa)
        try:
            for p in self._query(grid, nodes, [dict(cfg, secagg_index=i,
                                                    secagg_keys=b"".join(keys))
                                               for i in range(len(nodes))]):
                server.add_masked(p["masked"])
            total, _ = server.finish()
        finally:
            server.close()
        return np.asarray(total, dtype=np.float64)

    def _setup_gate(self, grid: Grid, nodes: list[int]) -> None:
        import time
        t0 = time.perf_counter()
        names = self.names
        gi = [i for i, n in enumerate(names) if n.startswith("gate.")]
        d = int(self.global_arrays[0].shape[-1])   # experts (groups, P, d)
        base: dict[str, Any] = {"mop_phase": "gate_moments"}
        if self.secure_aggregation:
            v = self._secure_sum(grid, nodes, base, d + 1, 65536.0, 68719476736.0)
            n, s = float(np.floor(v[0] + 0.5)), v[1:]
            mu = s / n
            c2 = self._secure_sum(grid, nodes, dict(base, gate_mean=mu.tobytes()), d,
                                  65536.0, 68719476736.0)
            q = c2 + 2.0 * mu * s - n * mu * mu    # Σu² = Σ(u − μ)² + 2μΣu − nμ²
        else:
            n, s, q = 0.0, np.zeros(d), np.zeros(d)
            for r in self._query(grid, nodes, [base] * len(nodes)):
                if "n" not in r:
                    continue
                n += float(r["n"])
                s += np.frombuffer(r["sum"], dtype=np.float64)
                q += np.frombuffer(r["sumsq"], dtype=np.float64)
        if n <= 0:
            return
        self.gate_stats = (n, s, q)
        if self._initial_mixture is not None:
            self._initial_mixture.set_input_stats(n, s, q)
        info: dict[str, Any] = {"stats_examples": n, "stats_seconds": time.perf_counter() - t0,
                                "pretrained_clients": 0}
        if self.gate_pretrain:
            info.update(self._pretrain_gate(grid, nodes, gi, n, s, q))
        info["seconds"] = time.perf_counter() - t0
        self.gate_setup_info = info

    def _pretrain_gate(self, grid: Grid, nodes: list[int], gi: list[int], n: float,
                       s: np.ndarray, q: np.ndarray) -> dict[str, Any]:
        """Gate pre-training as FedAvg rounds: each round the clients score the
        sent gate on their own rows (Σ −log π[task], argmax hits), train it for
        ``pretrain_epochs`` local epochs and return it; the server averages the
        gates by example counts. The gate kept is the best scored (the higher
        accuracy, ties: the lower loss); it stops after 5 rounds without a
        better one, or after ``pretrain_rounds``."""
        theta = np.concatenate([self.global_arrays[i].ravel() for i in gi]).astype(np.float32)
        base: dict[str, Any] = {
            "mop_phase": "gate_pretrain", "pretrain_epochs": int(self.pretrain_epochs),
            "gate_stats": np.concatenate([[n], s, q]).astype(np.float64).tobytes()}
        best, best_key, best_round, n_pre, total, rounds = theta, None, 0, 0, 0.0, 0
        for rnd in range(1, self.pretrain_rounds + 1):
            rounds = rnd
            cfg = dict(base, gate_params=theta.tobytes(), pretrain_round=rnd)
            if self.secure_aggregation:
                v = self._secure_sum(grid, nodes, cfg, theta.size + 3, 4294967296.0, 1048576.0)
                acc, total, nll, hits = v[:-3], float(np.floor(v[-3] + 0.5)), v[-2], v[-1]
                n_pre = None
            else:
                acc, total, nll, hits, n_pre = np.zeros(theta.size), 0.0, 0.0, 0.0, 0
                for r in self._query(grid, nodes, [cfg] * len(nodes)):
                    if float(r.get("n", 0.0)) > 0:
                        acc += float(r["n"]) * np.frombuffer(r["gate"], dtype=np.float32)
                        total += float(r["n"])
                        nll += float(r["nll"])
                        hits += float(r["hits"])
                        n_pre += 1
            if total <= 0:
                return {"pretrained_clients": 0}
            key = (hits / total, -nll / total)     # the score of the gate sent this round
            if best_key is None or key > best_key:
                best, best_key, best_round = theta, key, rnd
            elif rnd - best_round >= 5:
                break
            theta = (acc / total).astype(np.float32)
        off = 0
        for i in gi:
            a = self.global_arrays[i]
            self.global_arrays[i] = best[off:off + a.size].reshape(a.shape).astype(np.float32)
            off += a.size
        return {"pretrained_clients": n_pre, "pretrained_examples": total,
                "pretrain_rounds": rounds, "pretrain_best_round": best_round,
                "pretrain_accuracy": best_key[0], "pretrain_loss": -best_key[1]}

    def client_update(self, arrays: Sequence[np.ndarray], n_samples: float, client_id: int,
                      server_round: int, gate_usage: Optional[np.ndarray] = None) -> Update:
        """The DELTA update (client values − global) a client's arrays stand for."""
        if len(arrays) != len(self.names):
            raise ValueError(f"client {client_id}: expected {len(self.names)} arrays, "
                             f"got {len(arrays)}")
        u = Update("delta", round=server_round, client_id=client_id, n_samples=n_samples,
                   tensors={n: np.asarray(a, dtype=np.float32) - g
                            for n, a, g in zip(self.names, arrays, self.global_arrays)})
        if gate_usage is not None:
            # the client sends its K routed experts' usage; the always-on shared
            # groups after them (the remaining rows of "experts") are used fully
            rows = dict(zip(self.names, self.global_arrays))["experts"].shape[0]
            usage = np.ones(rows, dtype=np.float32)
            got = np.asarray(gate_usage, dtype=np.float32).ravel()
            if got.size > rows:
                raise ValueError(f"client {client_id}: gate_usage has {got.size} entries for "
                                 f"{rows} expert rows")
            usage[:got.size] = got
            u.add_tensor("gate.usage", usage)
        return u

    def global_update(self, server_round: int) -> Update:
        return Update("full", round=server_round, tensors=dict(zip(self.names, self.global_arrays)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        failed = [r for r in replies if r.has_error()]
        if failed and self.secure_aggregation:
            raise RuntimeError(f"round {server_round}: {len(failed)} client(s) failed "
                               f"({failed[0].error.reason}); secure aggregation cannot unmask "
                               "the sum without them")
        if failed:
            from logging import WARNING
            from flwr.common.logger import log
            for r in failed:
                log(WARNING, "round %d: node %d failed: %s", server_round,
                    r.metadata.src_node_id, r.error.reason)
        if not ok:
            return None, None
        # the clients' order (not the engine's node ids) fixes the order of the sums
        ok.sort(key=lambda r: (int(reply_metrics(r).get("client_id", 0)),
                               r.metadata.src_node_id))
        mets = [reply_metrics(r) for r in ok]
        n_ex = [int(m["num-examples"]) for m in mets]
        losses = [float(m.get("loss", float("nan"))) for m in mets]
        if self.secure_aggregation:
            self._aggregate_masked(server_round, ok)
        else:
            ups = []
            try:
                for i, (r, m) in enumerate(zip(ok, mets)):
                    cid = int(m.get("client_id", i))
                    usage = _usage_parse(m.get("gate_usage"))
                    ups.append(self.client_update(reply_arrays(r),
                                                  1.0 if self.dp == "central"
                                                  else float(m["num-examples"]),
                                                  cid, server_round, usage))
                keep = [True] * len(ups)
                if self.norm_bound is not None:   # before the strategy (and central DP)
                    k, norms, bound = norm_bound_fn(ups, **self.norm_bound)
                    keep = [bool(x) for x in k]
                    self.norm_bound_history.append(
                        {"round": server_round, "bound": bound, "norms": norms.tolist(),
                         "kept": keep})
                    if not any(keep):
                        raise RuntimeError(f"round {server_round}: the norm bound {bound} "
                                           "rejected every update")
                for u, kp in zip(ups, keep):
                    if not kp:
                        continue
                    if self.dp == "central":
                        u.clip(self.clip_norm)
                    self.aggregator.add(u)
            finally:
                for u in ups:
                    u.close()
            nxt = self.aggregator.finish(self.global_update(server_round))
            if self.dp == "central" and self.noise_multiplier > 0:
                eta = float(self.aggregator_params.get("server_lr", 1.0))
                nxt.add_noise(eta * self.noise_multiplier * self.clip_norm / len(ok),
                              self.noise_seed)
            self.global_arrays = [np.array(nxt.tensor(n), copy=True) for n in self.names]
            nxt.close()
        loss = float(np.average(losses, weights=n_ex)) if sum(n_ex) else float("nan")
        rec = {"round": server_round, "loss": loss, "n_clients": len(ok),
               "n_examples": sum(n_ex)}
        self.history.append(rec)
        return self.initial_arrays(), MetricRecord({"loss": loss, "n_clients": len(ok),
                                                    "n_examples": sum(n_ex)})

    def _aggregate_masked(self, server_round: int, replies: list[Message]) -> None:
        nodes, sa = self._secagg_round
        server = SecAggServer(**sa)
        for r in replies:
            server.add_masked(reply_arrays(r)[0].tobytes())
        total, included = server.finish()
        server.close()
        n = len(included)
        # sum of deltas -> equal-weight mean as one DELTA update (n_samples = n)
        mean, off = {}, 0
        for name, g in zip(self.names, self.global_arrays):
            mean[name] = (total[off:off + g.size] / n).reshape(g.shape)
            off += g.size
        u = Update("delta", round=server_round, n_samples=float(n), tensors=mean)
        self.aggregator.add(u)
        u.close()
        nxt = self.aggregator.finish(self.global_update(server_round))
        self.global_arrays = [np.array(nxt.tensor(n_), copy=True) for n_ in self.names]
        nxt.close()

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate <= 0:
            return []
        nodes = self._nodes(grid, self.fraction_evaluate, self.min_evaluate_clients)
        cfg = ConfigRecord(_records(dict(config, round=server_round)))
        return [Message(content=RecordDict({"arrays": self.initial_arrays(), "config": cfg}),
                        dst_node_id=int(nd), message_type="evaluate", group_id=str(server_round))
                for nd in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> Optional[MetricRecord]:
        mets = [reply_metrics(r) for r in replies if not r.has_error()]
        mets = [m for m in mets if int(m.get("num-examples", 0)) > 0]
        if not mets:
            return None
        # loss = mean NLL per target token; combine by target counts
        nll = sum(float(m["loss"]) * int(m.get("n_targets", m["num-examples"])) for m in mets)
        n = sum(int(m.get("n_targets", m["num-examples"])) for m in mets)
        loss = nll / max(1, n)
        for rec in self.history:
            if rec["round"] == server_round:
                rec["client_val_ppl"] = math.exp(loss)
        return MetricRecord({"loss": loss, "ppl": math.exp(loss)})

    def central_evaluate(self, server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        """:attr:`evaluate_fn` on ``arrays`` (Flower's server-side evaluation);
        the metrics go into :attr:`history` as ``val_<name>``."""
        if self.evaluate_fn is None:
            return None
        out = self.evaluate_fn(server_round, arrays.to_numpy_ndarrays())
        if out is None:
            return None
        loss, metrics = out
        for rec in self.history:
            if rec["round"] == server_round:
                rec.update({f"val_{k}": v for k, v in metrics.items()})
        return MetricRecord(_records(dict(metrics, loss=float(loss))))


# ---------------------------------------------------------------------------
# Flower apps


# The clients that client_app() made in this process, per (run id, node id);
# module-level so that the ClientApp object itself stays picklable (Ray).
_app_clients: dict[tuple[int, int], MopClient] = {}
_app_clients_lock = threading.Lock()


def _app_client(make_client: Callable[[FlowerContext], MopClient],
                context: FlowerContext) -> MopClient:
    """The client for (context.run_id, context.node_id), made on first use.
    (A module-level function: Ray pickles the ClientApp's closures, and this
    keeps the lock and the cache out of them.)"""
    key = (int(context.run_id), int(context.node_id))
    with _app_clients_lock:
        c = _app_clients.get(key)
        if c is None:
            for k in [k for k in _app_clients if k[0] != key[0]]:   # an earlier run's
                _app_clients.pop(k).close()
            c = _app_clients[key] = make_client(context)
        return c


def client_app(make_client: Callable[[FlowerContext], MopClient]) -> ClientApp:
    """A Flower ``ClientApp`` answering train / evaluate / query messages with
    the :class:`MopClient` that ``make_client(context)`` builds (from the
    node's ``context.node_config`` and the run's ``context.run_config``).

    The client is made once per (run, node) in a process and kept: in the
    simulation engine a process serves many messages; on the deployment
    engine each message runs in a fresh ``flwr-clientapp`` process, so the
    client (model context, optimizer state, secure-aggregation keys) lives for
    one message there and secure aggregation is not available.
    """
    app = ClientApp()

    def get(context: FlowerContext) -> MopClient:
        return _app_client(make_client, context)

    @app.train()
    def _train(msg: Message, context: FlowerContext) -> Message:
        return get(context).handle(msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: FlowerContext) -> Message:
        return get(context).handle(msg)

    @app.query()
    def _query(msg: Message, context: FlowerContext) -> Message:
        return get(context).handle(msg)

    return app


def server_app(make_strategy: Callable[[FlowerContext], tuple[MopStrategy, int]],
               done: Optional[Callable[[MopStrategy], Any]] = None) -> ServerApp:
    """A Flower ``ServerApp`` running :meth:`MopStrategy.run`: ``make_strategy(context)``
    returns the strategy and the number of rounds; ``done(strategy)`` is
    called after the last round (e.g. to save the mixture)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: FlowerContext) -> None:
        strategy, rounds = make_strategy(context)
        strategy.run(grid, rounds)
        if done is not None:
            done(strategy)

    return app


# ---------------------------------------------------------------------------
# The same client and strategy objects, driven in this process (no engine)


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes are :class:`MopClient` objects in this
    process: ``send_and_receive`` calls :meth:`MopClient.handle` directly.
    Node ids are 1..N in the order of ``client_fns`` (one factory per node,
    called on the node's first message)."""

    def __init__(self, client_fns: Sequence[Callable[[], MopClient]]) -> None:
        self._fns = {i + 1: f for i, f in enumerate(client_fns)}
        self.clients: dict[int, MopClient] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in process
        self._run = run

    @property
    def run(self) -> Any:  # pragma: no cover
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: Optional[float] = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._fns)

    def get_nodes(self) -> Iterable[Any]:  # pragma: no cover
        return []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._replies = list(self.send_and_receive(messages))
        return [str(i) for i in range(len(self._replies))]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies[int(i)] for i in message_ids]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: Optional[float] = None) -> Iterable[Message]:
        out = []
        for m in messages:
            nid = m.metadata.dst_node_id
            if nid not in self.clients:
                self.clients[nid] = self._fns[nid]()
            out.append(self.clients[nid].handle(m))
        return out

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()


def run_inprocess(strategy: MopStrategy, client_fns: Sequence[Callable[[], MopClient]],
                  num_rounds: int, log: Optional[Callable[[str], Any]] = print) -> MopStrategy:
    """Run ``num_rounds`` rounds of ``strategy`` over the clients made by
    ``client_fns`` (one factory per client, called once) in this process,
    through :class:`InProcessGrid` and Flower's message types but no engine.
    Returns ``strategy`` (its :attr:`~MopStrategy.history` and
    :attr:`~MopStrategy.global_arrays` hold the results). ``log`` receives one
    line per round."""
    from flwr.supercore.task_identity import TaskIdentity
    # Message() reads the sender's identity, which Flower's engines set per
    # process; this process plays the server (node 0) of run 0.
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    grid = InProcessGrid(client_fns)
    import logging
    from flwr.common.logger import FLOWER_LOGGER
    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.WARNING)   # Flower's per-round log: the caller's log instead
    try:
        start = len(strategy.history)
        strategy.run(grid, num_rounds)
    finally:
        FLOWER_LOGGER.setLevel(level)
        grid.close()
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    if log:
        for h in strategy.history[start:]:
            msg = f"round {h['round']}: train loss {h['loss']:.3f}"
            msg += "".join(f", val {k[4:]} {v:.2f}" for k, v in h.items()
                           if k.startswith("val_") and isinstance(v, float))
            log(msg)
    return strategy
