"""libmop.flower: the Flower client and strategy on the real model.

Two clients with 3 and 5 tiny examples train one local step each for one
round (driven by libmop.flower.run_inprocess, i.e. Flower's ClientManager and
Message API through an in-memory grid, without an engine). The aggregated global values are
checked against libmop's FedAvg of the clients' updates computed directly
(Update.from_mixture + Aggregator), and against numpy's weighted mean; the
same client results fed to other strategies check that the strategy name and
its options reach libmop (median, trimmed_mean), central DP clipping bounds
the step, and secure aggregation gives the equal-weight mean through masked
blobs only. The strategy sees Flower Message-API replies (ArrayRecord +
MetricRecord), read with lf.reply_arrays / lf.reply_metrics. Skipped when flwr
is not installed (scripts/requirements-dev.txt installs it).
"""
import numpy as np
import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()
flwr = pytest.importorskip("flwr", reason="flwr not installed: pip install -r "
                                          "scripts/requirements-dev.txt")
from libmop import flower as lf  # noqa: E402

MIX = dict(n_experts=2, prompt_len=2, seed=7)
DATA = [
    [("Say yes.", "yes"), ("Say no.", "no"), ("Say hi.", "hi")],
    [("Colour of snow?", "white"), ("Colour of grass?", "green"), ("Colour of sky?", "blue"),
     ("Two plus two?", "four"), ("Opposite of up?", "down")],
]
TOL = 1e-6


@pytest.fixture(scope="module")
def model(model_path):
    for s in ("mop_mixture_create", "mop_mixture_forward_backward", "mop_aggregator_create",
              "mop_update_from_mixture", "mop_secagg_client_create"):
        if not libmop.has_symbol(s):
            pytest.fail(f"C symbol {s} is not exported by the library")
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


def make_client(model, i):
    return lf.MopClient(model, DATA[i], DATA[i][:1], client_id=i, local_steps=1, batch_size=1,
                        max_len=64, lr=1e-2, n_threads=2, **MIX)


class Capture(lf.MopStrategy):
    """Keeps the round's client results so they can be re-aggregated."""

    def aggregate_train(self, server_round, replies):
        self.results = list(replies)
        return super().aggregate_train(server_round, self.results)


@pytest.fixture(scope="module")
def fedavg_round(model):
    glob = libmop.Mixture(model, **MIX)
    st = Capture(glob, "fedavg", fit_config={"local_steps": 1})
    lf.run_inprocess(st, [lambda i=i: make_client(model, i) for i in range(2)], 1, log=None)
    return glob, st


def client_arrays(st):
    return [lf.reply_arrays(r) for r in st.results]


def n_examples(r):
    return int(lf.reply_metrics(r)["num-examples"])


def test_fit_results(fedavg_round):
    glob, st = fedavg_round
    assert len(st.results) == 2
    n = sorted(n_examples(r) for r in st.results)
    assert n == [3, 5]
    names = [t.name for t in glob.tensor_info()]
    assert st.names == names
    init = lf.mixture_arrays(glob)
    for r in st.results:
        arrs, metrics = lf.reply_arrays(r), lf.reply_metrics(r)
        assert list(r.content["arrays"].keys()) == names   # sent under the tensor names
        assert [a.shape for a in arrs] == [a.shape for a in init]
        # one AdamW step moved the experts, and the loss is a finite NLL
        assert np.abs(arrs[0] - init[0]).max() > 0
        assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
        usage = np.array(metrics["gate_usage"])
        assert usage.shape == (2,) and abs(usage.sum() - 1) < 1e-4 and (usage >= 0).all()
    assert st.history[0]["round"] == 1 and st.history[0]["n_examples"] == 8


def test_fedavg_equals_libmop_direct(model, fedavg_round):
    glob, st = fedavg_round
    # libmop's FedAvg computed directly from mixtures holding the clients' values
    agg = libmop.Aggregator("fedavg")
    local = libmop.Mixture(model, **MIX)
    for r, arrs in zip(st.results, client_arrays(st)):
        lf.set_mixture_arrays(local, arrs)
        agg.add(libmop.Update.from_mixture(local, base=glob, round=1,
                                           client_id=int(lf.reply_metrics(r)["client_id"]),
                                           n_samples=float(n_examples(r))))
    nxt = agg.finish(libmop.Update.from_mixture(glob, round=1))
    for name, got in zip(st.names, st.global_arrays):
        np.testing.assert_allclose(got, nxt.tensor(name), rtol=0, atol=TOL, err_msg=name)
    # and numpy's weighted mean (independent reference)
    w = np.array([n_examples(r) for r in st.results], dtype=np.float64)
    for k, got in enumerate(st.global_arrays):
        ref = sum(wi * a[k].astype(np.float64) for wi, a in zip(w, client_arrays(st))) / w.sum()
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL)


def reaggregate(glob, st, strategy, **kw):
    s = lf.MopStrategy(glob, strategy, **kw)
    params, metrics = s.aggregate_train(1, st.results)
    assert params is not None and np.isfinite(metrics["loss"])
    return s, params.to_numpy_ndarrays()


def test_strategy_name_and_options_pass_through(fedavg_round):
    glob, st = fedavg_round
    arrs = client_arrays(st)
    s, out = reaggregate(glob, st, "median")
    assert s.aggregator.params["strategy"] == libmop.fed.STRATEGY["median"]
    for k in range(len(out)):       # two clients: median = unweighted mean
        ref = (arrs[0][k].astype(np.float64) + arrs[1][k]) / 2
        np.testing.assert_allclose(out[k], ref, rtol=0, atol=TOL)
        assert np.abs(out[k] - st.global_arrays[k]).max() > 0 or k > 0  # differs from FedAvg
    s, _ = reaggregate(glob, st, "trimmed_mean", trim_ratio=0.25, server_lr=0.5)
    assert s.aggregator.params["trim_ratio"] == 0.25
    assert s.aggregator.params["server_lr"] == 0.5
    with pytest.raises(ValueError, match="unknown libmop strategy"):
        lf.MopStrategy(glob, "fedsgd")
    # the old CLI spelling still works for one release, with a warning
    with pytest.warns(DeprecationWarning, match="'trimmed-mean' is deprecated"):
        s = lf.MopStrategy(glob, "trimmed-mean")
    assert s.strategy_name == "trimmed_mean"
    assert s.aggregator.params["strategy"] == libmop.fed.STRATEGY["trimmed_mean"]


def test_central_dp_clips_each_update(fedavg_round):
    glob, st = fedavg_round
    init = lf.mixture_arrays(glob)
    C = 1e-3
    s, out = reaggregate(glob, st, "fedavg", dp="central", clip_norm=C, noise_multiplier=0.0)
    step = np.sqrt(sum(float(((o.astype(np.float64) - g) ** 2).sum()) for o, g in zip(out, init)))
    assert step <= C * (1 + 1e-4)
    # each clipped delta has norm C; equal weights: step = ||(d0 + d1)/2|| with ||di|| = C
    d = [np.concatenate([(a - g).ravel().astype(np.float64) for a, g in zip(arrs, init)])
         for arrs in client_arrays(st)]
    d = [x * min(1.0, C / np.linalg.norm(x)) for x in d]
    assert abs(step - np.linalg.norm((d[0] + d[1]) / 2)) < 1e-6
    # with noise: the global moves by more than the clipped mean (seeded, reproducible)
    s2, out2 = reaggregate(glob, st, "fedavg", dp="central", clip_norm=C, noise_multiplier=1.0,
                           noise_seed=3)
    diff = np.sqrt(sum(float(((a.astype(np.float64) - b) ** 2).sum()) for a, b in zip(out2, out)))
    n_par = sum(a.size for a in out)
    assert abs(diff / np.sqrt(n_par) - C / 2) < 0.05 * C / 2   # std z·C/n per coordinate


def test_norm_bound_before_the_strategy(fedavg_round):
    """norm_bound clips (or rejects) each client delta before FedAvg: the
    result equals numpy's weighted mean of the bounded deltas."""
    glob, st = fedavg_round
    init = lf.mixture_arrays(glob)
    d = [np.concatenate([(a - g).ravel().astype(np.float64) for a, g in zip(arrs, init)])
         for arrs in client_arrays(st)]
    w = np.array([n_examples(r) for r in st.results], dtype=np.float64)
    norms = np.array([np.linalg.norm(x) for x in d])
    C = 0.5 * float(norms.min())            # both clipped
    s, out = reaggregate(glob, st, "fedavg", norm_bound=dict(max_norm=C))
    h = s.norm_bound_history[0]
    assert h["bound"] == pytest.approx(C) and h["kept"] == [True, True]
    np.testing.assert_allclose(h["norms"], norms, rtol=1e-5)
    ref = sum(wi * x * min(1.0, C / np.linalg.norm(x)) for wi, x in zip(w, d)) / w.sum()
    got = np.concatenate([(o.astype(np.float64) - g).ravel() for o, g in zip(out, init)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # reject above 1.0 x the median (the mean of the two): the larger one goes
    s, out = reaggregate(glob, st, "fedavg", norm_bound=dict(median_multiple=1.0, mode="reject"))
    big = int(np.argmax(norms))
    assert s.norm_bound_history[0]["kept"] == [i != big for i in range(2)]
    got = np.concatenate([(o.astype(np.float64) - g).ravel() for o, g in zip(out, init)])
    np.testing.assert_allclose(got, d[1 - big], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs max_norm"):
        lf.MopStrategy(glob, "fedavg", norm_bound=dict(mode="clip"))
    with pytest.raises(ValueError, match="secure aggregation"):
        lf.MopStrategy(glob, "fedavg", secure_aggregation=True,
                       norm_bound=dict(median_multiple=2.0))


def test_secure_aggregation_gives_the_mean(model, fedavg_round):
    glob, _ = fedavg_round
    st = Capture(glob, "fedavg", secure_aggregation=True, fit_config={"local_steps": 1})
    lf.run_inprocess(st, [lambda i=i: make_client(model, i) for i in range(2)], 1, log=None)
    # the server received masked byte blobs, not tensors
    for r in st.results:
        arrs = lf.reply_arrays(r)
        assert len(arrs) == 1 and arrs[0].dtype == np.uint8
    # recompute the clients' plain results (training is deterministic) and compare
    ref = Capture(glob, "median", fit_config={"local_steps": 1})   # median of 2 = mean
    lf.run_inprocess(ref, [lambda i=i: make_client(model, i) for i in range(2)], 1, log=None)
    for a, b in zip(st.global_arrays, ref.global_arrays):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="needs each update"):
        lf.MopStrategy(glob, "median", secure_aggregation=True)


def test_secure_aggregation_with_client_side_norm_bound(model, fedavg_round):
    """norm_bound=dict(max_norm=C) under secure aggregation: each client clips
    its own delta before masking, so the equal-weight mean moves by <= C and
    equals the mean of the clipped plain deltas."""
    glob, plain = fedavg_round
    init = lf.mixture_arrays(glob)
    d = [np.concatenate([(a - g).ravel().astype(np.float64) for a, g in zip(arrs, init)])
         for arrs in client_arrays(plain)]
    C = 0.5 * min(float(np.linalg.norm(x)) for x in d)
    st = Capture(glob, "fedavg", secure_aggregation=True, norm_bound=dict(max_norm=C),
                 fit_config={"local_steps": 1})
    lf.run_inprocess(st, [lambda i=i: make_client(model, i) for i in range(2)], 1, log=None)
    for r in st.results:
        assert lf.reply_metrics(r)["norm_before_bound"] > C
    got = np.concatenate([(o.astype(np.float64) - g).ravel()
                          for o, g in zip(st.global_arrays, init)])
    ref = sum(x * (C / np.linalg.norm(x)) for x in d) / 2
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert np.linalg.norm(got) <= C * (1 + 1e-4)
