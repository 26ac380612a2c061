"""Python bindings over mop_fed.h: updates, aggregators, partitioners.

Aggregation results are checked
against numpy on hand-made tensors (weighted mean, coordinate-wise median).
"""
import gc

import numpy as np
import pytest

from test_bindings_core import import_libmop, rss_bytes

libmop = import_libmop()
MopError = libmop.MopError

UPDATE_SYMBOLS = ["mop_update_create", "mop_update_free", "mop_update_add_tensor",
                  "mop_update_tensor_count", "mop_update_get_tensor", "mop_update_get_header",
                  "mop_update_set_meta", "mop_update_get_meta", "mop_update_serialize",
                  "mop_update_parse", "mop_update_from_mixture", "mop_update_apply"]
AGG_SYMBOLS = ["mop_aggregator_default_params", "mop_aggregator_create", "mop_aggregator_free",
               "mop_aggregator_add", "mop_aggregator_count", "mop_aggregator_finish"]
PART_SYMBOLS = ["mop_partition_skewed", "mop_partition_iid", "mop_partition_dirichlet"]


def need(symbols):
    for s in symbols:
        if not libmop.has_symbol(s):
            pytest.fail(f"C symbol {s} is not exported by the library")


def make_update(kind="delta", n_samples=1.0, client_id=0, round=0, **tensors):
    return libmop.Update(kind, round=round, client_id=client_id, n_samples=n_samples,
                         tensors=tensors)


@pytest.fixture(scope="module")
def model(model_path):
    with libmop.Model(model_path, n_threads=2) as m:
        yield m


def test_update_tensors_header_meta():
    need(UPDATE_SYMBOLS)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with libmop.Update("full", round=3, client_id=42, n_samples=17.5) as u:
        assert len(u) == 0 and bool(u)
        u.add_tensor("a", a)
        u.add_tensor("b", [1.0, 2.0])  # lists and float64 converted (copied in)
        assert len(u) == 2
        h = u.header
        assert (h.kind, h.round, h.client_id, h.n_samples) == ("full", 3, 42, 17.5)
        ts = u.tensors()
        assert list(ts) == ["a", "b"]
        np.testing.assert_array_equal(ts["a"], a)
        assert ts["a"].shape == (2, 3) and ts["a"].dtype == np.float32
        assert not np.shares_memory(ts["a"], a)  # copied by add_tensor
        ts["a"][0, 0] = 100.0  # writable view of the update's storage
        assert u.tensor("a")[0, 0] == 100.0
        u.set_meta("task", "qa")
        u.set_meta("task", "summarize")  # replaces
        assert u.get_meta("task") == "summarize"
        assert u.get_meta("absent") is None and u.get_meta("absent", "x") == "x"
        with pytest.raises(MopError) as ei:
            u.add_tensor("a", a)  # duplicate name
        assert ei.value.name == "MOP_E_INVALID_ARG" and "a" in ei.value.message
        with pytest.raises(MopError) as ei:
            u.add_tensor("nan", np.array([np.nan], dtype=np.float32))
        assert ei.value.name == "MOP_E_INVALID_ARG"
        with pytest.raises(MopError) as ei:
            u.add_tensor("five_d", np.zeros((1, 1, 1, 1, 2), dtype=np.float32))
        assert ei.value.name == "MOP_E_SHAPE"
        with pytest.raises(TypeError):
            u.add_tensor("str", np.array(["x"]))
        with pytest.raises(MopError) as ei:
            u.tensor("missing")
        assert ei.value.name in ("MOP_E_RANGE", "MOP_E_INVALID_ARG")
    with pytest.raises(ValueError):
        libmop.Update("sideways")
    with pytest.raises(MopError) as ei:
        libmop.Update("delta", round=-1)
    assert ei.value.name == "MOP_E_INVALID_ARG"


def test_update_serialize_parse():
    need(UPDATE_SYMBOLS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    with make_update("delta", n_samples=9, client_id=7, round=2, x=x, y=np.ones(3)) as u:
        u.set_meta("k", "v")
        blob = u.serialize()
    assert isinstance(blob, bytes) and len(blob) > x.nbytes
    with libmop.Update.parse(blob) as v:
        assert v.header.client_id == 7 and v.header.kind == "delta" and v.header.n_samples == 9
        np.testing.assert_array_equal(v.tensor("x"), x)
        assert v.get_meta("k") == "v"
        assert v.serialize() == blob  # byte-exact
    broken = bytearray(blob)
    broken[len(blob) // 2] ^= 0x40  # payload bit flip: the SHA-256 catches it
    with pytest.raises(MopError) as ei:
        libmop.Update.parse(bytes(broken))
    assert ei.value.name in ("MOP_E_CHECKSUM", "MOP_E_FORMAT")
    with pytest.raises(MopError) as ei:
        libmop.Update.parse(blob[:-10])
    assert ei.value.name == "MOP_E_FORMAT"
    with pytest.raises(MopError) as ei:
        libmop.Update.parse(b"\0" * 64)
    assert ei.value.name == "MOP_E_FORMAT"


def test_update_from_mixture_and_apply(model):
    need(UPDATE_SYMBOLS + ["mop_mixture_create"])
    with libmop.Mixture(model, n_experts=2, prompt_len=2, gate_hidden=4, seed=1) as a, \
            libmop.Mixture(model, n_experts=2, prompt_len=2, gate_hidden=4, seed=2) as b:
        a.params[:] += 0.1  # so the gate tensors differ too
        assert not np.array_equal(a.params, b.params)
        with libmop.Update.from_mixture(a, round=1, client_id=3, n_samples=5,
                                        gate_usage=[0.25, 0.75]) as full:
            assert full.header.kind == "full"
            names = set(full.tensors())
            assert names == {t.name for t in a.tensor_info()} | {"gate.usage"}
            np.testing.assert_array_equal(full.tensor("experts"), a.tensors()["experts"])
            np.testing.assert_allclose(full.tensor("gate.usage"), [0.25, 0.75])
            with libmop.Update.from_mixture(a, base=b) as delta:
                assert delta.header.kind == "delta"
                np.testing.assert_allclose(delta.tensor("gate.w1"),
                                           a.tensors()["gate.w1"] - b.tensors()["gate.w1"],
                                           atol=1e-6)
                before = b.params.copy()
                delta.apply(b, scale=0.5)  # b + 0.5 (a - b)
                np.testing.assert_allclose(b.params, 0.5 * (a.params + before), atol=1e-6)
            full.apply(b)  # FULL sets the values
            np.testing.assert_array_equal(b.params, a.params)
        with pytest.raises(MopError) as ei:
            libmop.Update.from_mixture(a, gate_usage=[1.0, 2.0, 3.0])
        assert ei.value.name == "MOP_E_SHAPE"
        with libmop.Mixture(model, n_experts=3, prompt_len=2, gate_hidden=4) as c, \
                libmop.Update.from_mixture(c) as other:
            with pytest.raises(MopError) as ei:
                other.apply(a)
            assert ei.value.name == "MOP_E_SHAPE"


def test_aggregator_fedavg_and_median():
    need(UPDATE_SYMBOLS + AGG_SYMBOLS)
    rng = np.random.default_rng(3)
    g = rng.standard_normal((4, 3)).astype(np.float32)
    d = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)]
    n = [1.0, 3.0, 4.0]
    with make_update("full", round=5, w=g) as glob:
        with libmop.Aggregator("fedavg") as agg:
            assert agg.params["server_lr"] == 1.0 and bool(agg)
            for i in range(3):
                with make_update("delta", n_samples=n[i], client_id=i, w=d[i]) as u:
                    agg.add(u)
            assert len(agg) == 3
            with agg.finish(glob) as nxt:
                ref = g + sum(ni * di for ni, di in zip(n, d)) / sum(n)
                np.testing.assert_allclose(nxt.tensor("w"), ref, atol=1e-5)
                h = nxt.header
                assert (h.kind, h.round, h.n_samples) == ("full", 6, 8.0)
            assert len(agg) == 0  # next round
            with pytest.raises(MopError) as ei:
                agg.finish(glob)  # no update in the round
            assert ei.value.name == "MOP_E_STATE"
            with make_update("delta", v=np.zeros(2)) as wrong:
                with make_update("delta", w=d[0]) as ok:
                    agg.add(ok)
                with pytest.raises(MopError) as ei:
                    agg.add(wrong)
                assert ei.value.name == "MOP_E_SHAPE"
        with libmop.Aggregator("median", server_lr=1.0) as agg:
            for i in range(3):
                with make_update("delta", n_samples=n[i], w=d[i]) as u:
                    agg.add(u)
            with agg.finish(glob) as nxt:
                np.testing.assert_allclose(nxt.tensor("w"), g + np.median(np.stack(d), axis=0),
                                           atol=1e-6)
    with pytest.raises(MopError) as ei:
        libmop.Aggregator("fedavgm", momentum=1.5)
    assert ei.value.name == "MOP_E_INVALID_ARG" and "momentum" in ei.value.message
    with pytest.raises(ValueError):
        libmop.Aggregator("fedmagic")
    # every strategy name maps to a value the C side accepts
    for name in libmop.fed.STRATEGY:
        libmop.Aggregator(name).close()


def test_strategy_names_and_deprecated_spelling():
    """One name per rule, the C enum's (MOP_AGG_TRIMMED_MEAN: trimmed_mean),
    as in `mop fed-sim`; the old '-' spelling works with a DeprecationWarning."""
    need(AGG_SYMBOLS)
    import warnings
    assert libmop.fed.STRATEGY["trimmed_mean"] == 6 and libmop.fed.STRATEGY["mop_aware"] == 13
    assert all("-" not in k for k in libmop.fed.STRATEGY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with libmop.Aggregator("trimmed_mean") as agg:
            assert agg.params["strategy"] == 6
        assert libmop.fed.strategy_name("mop_aware") == "mop_aware"
    for old, new, value in [("trimmed-mean", "trimmed_mean", 6), ("mop-aware", "mop_aware", 13),
                            ("multi-krum", "multi_krum", 8)]:
        with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated, use '{new}'"):
            with libmop.Aggregator(old) as agg:
                assert agg.params["strategy"] == value
    with pytest.raises(ValueError, match="unknown value 'trimmed-meen'"):
        libmop.Aggregator("trimmed-meen")


def test_partitions():
    need(PART_SYMBOLS)
    iid = libmop.partition_iid(103, 4, seed=1)
    assert iid.dtype == np.int32 and iid.shape == (103,)
    counts = np.bincount(iid, minlength=4)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(iid, libmop.partition_iid(103, 4, seed=1))  # deterministic
    assert not np.array_equal(iid, libmop.partition_iid(103, 4, seed=2))
    # skewed split (ratio 15, 3 clients): per category s = floor(c / 17) to two
    # clients and the rest to one
    task = np.repeat(np.arange(3), 170)
    sk = libmop.partition_skewed(task, 3, ratio=15.0, seed=0)
    for t in range(3):
        c = np.sort(np.bincount(sk[task == t], minlength=3))
        assert c.tolist() == [10, 10, 150]
    with pytest.raises(MopError) as ei:
        libmop.partition_skewed(np.zeros(5, dtype=np.int32), 3, ratio=15.0)
    assert ei.value.name == "MOP_E_RANGE"
    dr = libmop.partition_dirichlet(task, 5, alpha=0.1, seed=0)
    assert dr.shape == task.shape and dr.min() >= 0 and dr.max() < 5
    with pytest.raises(MopError) as ei:
        libmop.partition_dirichlet(task, 5, alpha=0.0)
    assert ei.value.name == "MOP_E_INVALID_ARG"
    with pytest.raises(TypeError):
        libmop.partition_skewed(task.astype(np.float32), 3)


def test_no_leaks_updates():
    need(UPDATE_SYMBOLS + AGG_SYMBOLS)
    gc.collect()  # earlier tests may leave handles in reference cycles (kept tracebacks)
    live0 = libmop.live_handles()
    x = np.ones((16, 16), dtype=np.float32)

    def cycle(k):
        for i in range(k):
            with libmop.Aggregator("fedavg") as agg:
                u = make_update("delta", n_samples=1.0, w=x)
                agg.add(u)
                blob = u.serialize()
                v = libmop.Update.parse(blob)
                view = v.tensor("w")
                del v  # the view keeps it alive
                g = make_update("full", w=view)
                nxt = agg.finish(g)
                del nxt, g, u, view
    cycle(50)
    rss0 = rss_bytes()
    cycle(1000)
    grown = rss_bytes() - rss0
    assert libmop.live_handles() == live0
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 cycles"


DP_SYMBOLS = ["mop_update_clip", "mop_update_add_noise", "mop_rdp_default_params",
              "mop_rdp_sampled_gaussian", "mop_rdp_epsilon", "mop_rdp_accountant_create",
              "mop_rdp_accountant_free", "mop_rdp_accountant_add", "mop_rdp_accountant_epsilon"]
SECAGG_SYMBOLS = ["mop_secagg_default_params", "mop_secagg_client_create",
                  "mop_secagg_client_free", "mop_secagg_client_public_key",
                  "mop_secagg_client_set_peer_keys", "mop_secagg_client_mask",
                  "mop_secagg_client_mask_update", "mop_secagg_client_reveal",
                  "mop_secagg_server_create", "mop_secagg_server_free",
                  "mop_secagg_server_add_masked", "mop_secagg_server_add_recovery",
                  "mop_secagg_server_finish"]


def test_clip_and_noise():
    need(UPDATE_SYMBOLS + DP_SYMBOLS)
    x = np.full(100, 0.5, dtype=np.float32)  # norm 5
    with make_update("delta", x=x, **{"gate.usage": np.array([9.0, 9.0])}) as u:
        assert u.clip(10.0) == pytest.approx(5.0, rel=1e-6)
        np.testing.assert_array_equal(u.tensor("x"), x)  # within the bound: unchanged
        assert u.clip(1.0) == pytest.approx(5.0, rel=1e-6)
        assert float(np.linalg.norm(u.tensor("x"))) == pytest.approx(1.0, rel=1e-5)
        np.testing.assert_array_equal(u.tensor("gate.usage"), [9.0, 9.0])
        with pytest.raises(MopError) as ei:
            u.clip(0.0)
        assert ei.value.name == "MOP_E_INVALID_ARG"
    big = np.zeros(20000, dtype=np.float32)
    with make_update("delta", x=big) as a, make_update("delta", x=big) as b:
        a.add_noise(0.3, seed=5)
        b.add_noise(0.3, seed=5)
        na = a.tensor("x")
        np.testing.assert_array_equal(na, b.tensor("x"))  # fixed seed: reproducible
        assert float(na.std()) == pytest.approx(0.3, rel=0.03)  # 20000 draws: se 0.5%
        assert abs(float(na.mean())) < 0.3 * 4 / np.sqrt(20000)
        with pytest.raises(MopError) as ei:
            a.add_noise(-1.0)
        assert ei.value.name == "MOP_E_INVALID_ARG"


def test_rdp_accounting():
    need(DP_SYMBOLS)
    # q = 1 is the plain Gaussian mechanism: RDP(α) = α / (2 z²)
    assert libmop.rdp_sampled_gaussian(2.0, 1.0, 8.0) == pytest.approx(8 / (2 * 4), rel=1e-9)
    assert libmop.rdp_sampled_gaussian(1.0, 0.0, 4.0) == 0.0
    eps, order = libmop.rdp_epsilon(1.12, 256 / 60000, 14063, 1e-5)  # TF-Privacy's example
    assert eps == pytest.approx(2.92, abs=0.01) and order > 1
    with libmop.RdpAccountant() as acc:
        acc.add(1.12, 256 / 60000, 14063)
        assert acc.epsilon(1e-5)[0] == pytest.approx(eps, rel=1e-9)
    with libmop.RdpAccountant("balle2020") as acc:
        acc.add(1.12, 256 / 60000, 14063)
        assert acc.epsilon(1e-5)[0] <= eps  # never larger than the classic bound
    with libmop.RdpAccountant(orders=[2.0, 4.0, 8.0]) as acc:
        acc.add(2.0, 1.0, 3)
        e, o = acc.epsilon(1e-5)
        ref = min(3 * a / 8 + np.log(1e5) / (a - 1) for a in (2.0, 4.0, 8.0))
        assert e == pytest.approx(ref, rel=1e-9) and o in (2.0, 4.0, 8.0)
    with pytest.raises(MopError) as ei:
        libmop.rdp_epsilon(0.0, 0.1, 10, 1e-5)
    assert ei.value.name == "MOP_E_INVALID_ARG"


def test_secure_aggregation_with_dropout():
    need(SECAGG_SYMBOLS)
    n, length = 4, 50
    rng = np.random.default_rng(2)
    xs = [rng.uniform(-1, 1, length).astype(np.float32) for _ in range(n)]
    params = dict(n_clients=n, length=length, round=1)
    clients = [libmop.SecAggClient(i, **params) for i in range(n)]
    keys = [c.public_key for c in clients]
    assert all(len(k) == 32 for k in keys) and len(set(keys)) == n
    for c in clients:
        c.set_peer_keys(keys)
    blobs = [c.mask(x) for c, x in zip(clients, xs)]
    assert blobs[0] != blobs[1]
    with libmop.SecAggServer(**params) as server:
        for i in (0, 1, 2):  # client 3 drops
            server.add_masked(blobs[i])
        for i in (0, 1, 2):
            server.add_recovery(clients[i].reveal([3]))
        total, included = server.finish()
    assert included.tolist() == [0, 1, 2]
    np.testing.assert_allclose(total, xs[0] + xs[1] + xs[2], atol=1e-6)
    # a corrupted blob is caught by its checksum
    with libmop.SecAggServer(**params) as server:
        bad = bytearray(blobs[0])
        bad[10] ^= 1
        with pytest.raises(MopError) as ei:
            server.add_masked(bytes(bad))
        assert ei.value.name == "MOP_E_CHECKSUM"
    # mask_update on an update of the round's length
    with libmop.SecAggClient(0, n_clients=2, length=6) as a, \
            libmop.SecAggClient(1, n_clients=2, length=6) as b, \
            libmop.SecAggServer(n_clients=2, length=6) as s:
        ks = [a.public_key, b.public_key]
        a.set_peer_keys(ks)
        b.set_peer_keys(b"".join(ks))
        with make_update("delta", p=np.arange(4.0), q=np.ones(2)) as ua, \
                make_update("delta", p=np.ones(4), q=np.arange(2.0)) as ub:
            s.add_masked(a.mask_update(ua))
            s.add_masked(b.mask_update(ub))
        total, inc = s.finish()
        np.testing.assert_allclose(total, [1, 2, 3, 4, 1, 2], atol=1e-6)
    for c in clients:
        c.close()
    with pytest.raises(MopError) as ei:
        libmop.SecAggClient(0, n_clients=1, length=4)
    assert ei.value.name in ("MOP_E_INVALID_ARG", "MOP_E_RANGE")


def _np_norm_bound(deltas, mode, max_norm, median_multiple):
    """NumPy reference of mop_update_norm_bound: (new deltas, keep, norms, bound)."""
    norms = np.array([np.sqrt(np.sum(d.astype(np.float64) ** 2)) for d in deltas])
    bound = np.inf
    if max_norm > 0:
        bound = float(max_norm)
    if median_multiple > 0:
        bound = min(bound, median_multiple * float(np.median(norms)))
    out, keep = [], []
    for d, n in zip(deltas, norms):
        if n <= bound:
            out.append(d.copy()), keep.append(True)
        elif mode == "clip":
            out.append((d * (bound / n)).astype(np.float32)), keep.append(True)
        else:
            out.append(d.copy()), keep.append(False)
    return out, np.array(keep), norms, bound


@pytest.mark.parametrize("mode,max_norm,median_multiple", [
    ("clip", 2.0, 0.0), ("reject", 2.0, 0.0), ("clip", 0.0, 1.5), ("reject", 0.0, 1.5),
    ("clip", 3.0, 1.0), ("reject", 0.0, 2.0)])
def test_norm_bound_against_numpy(mode, max_norm, median_multiple):
    need(["mop_norm_bound_params_init_sized", "mop_update_norm_bound"])
    rng = np.random.default_rng(7)
    n = 7
    deltas = [rng.normal(size=(3, 5)).astype(np.float32) * s
              for s in (0.3, 0.5, 0.4, 0.6, 0.45, 5.0, 0.35)[:n]]
    usage = np.array([0.25, 0.75], dtype=np.float32)
    ups = [libmop.Update("delta", round=1, client_id=i, n_samples=10.0,
                         tensors={"w": d, "gate.usage": usage}) for i, d in enumerate(deltas)]
    want, want_keep, want_norms, want_bound = _np_norm_bound(deltas, mode, max_norm,
                                                             median_multiple)
    keep, norms, bound = libmop.norm_bound(ups, mode=mode, max_norm=max_norm,
                                           median_multiple=median_multiple)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-6)
    assert bound == pytest.approx(want_bound, rel=1e-6)
    assert keep.tolist() == want_keep.tolist()
    for u, w in zip(ups, want):
        np.testing.assert_allclose(u.tensor("w"), w, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(u.tensor("gate.usage"), usage)
        assert np.sqrt(np.sum(u.tensor("w").astype(np.float64) ** 2)) <= max(
            bound, 0) * (1 + 1e-7) or not keep[ups.index(u)]
        u.close()


def test_norm_bound_errors():
    x = np.ones(4, dtype=np.float32)
    d = libmop.Update("delta", tensors={"w": x})
    f = libmop.Update("full", tensors={"w": x})
    with pytest.raises(MopError, match="no bound"):
        libmop.norm_bound([d])
    with pytest.raises(MopError, match="DELTA"):
        libmop.norm_bound([d, f], max_norm=1.0)
    with pytest.raises(MopError, match="same update"):
        libmop.norm_bound([d, d], max_norm=1.0)
    with pytest.raises(ValueError, match="mode"):
        libmop.norm_bound([d], mode="shrink", max_norm=1.0)
    with pytest.raises(MopError):
        libmop.norm_bound([], max_norm=1.0)
    d.close()
    with pytest.raises(ValueError, match="closed"):
        libmop.norm_bound([d], max_norm=1.0)
    f.close()


def _secagg2_round(n, t, drop, xs, length):
    """Drive a mop_secagg2 round; drop[i] = stage at which client i stops (4 = never)."""
    kw = dict(n_clients=n, length=length, round=2, min_survivors=t, clip_range=64.0)
    clients = [libmop.SecAgg2Client(i, **kw) for i in range(n)]
    server = libmop.SecAgg2Server(**kw)
    for k in range(4):
        for i, c in enumerate(clients):
            if drop[i] <= k:
                continue
            msg = None if k == 0 else server.message(i)
            server.receive(c.step(msg, xs[i] if k == 2 else None))
        server.advance()
    total, inc = server.result()
    for c in clients:
        c.close()
    server.close()
    return total, inc


def test_secagg2_with_dropouts_against_numpy():
    need(["mop_secagg2_client_create", "mop_secagg2_client_step", "mop_secagg2_server_create",
          "mop_secagg2_server_receive", "mop_secagg2_server_advance",
          "mop_secagg2_server_message", "mop_secagg2_server_result"])
    rng = np.random.default_rng(3)
    n, length = 7, 50
    xs = [(rng.integers(-4000, 4000, size=length) / 128.0).astype(np.float32) for _ in range(n)]
    drop = [4, 0, 4, 1, 2, 3, 4]          # one client drops at each stage
    total, inc = _secagg2_round(n, 3, drop, xs, length)  # 3 answer the unmasking
    alive = [i for i in range(n) if drop[i] > 2]
    assert inc.tolist() == alive
    np.testing.assert_array_equal(total, np.sum([xs[i] for i in alive], axis=0, dtype=np.float64)
                                  .astype(np.float32))
    with pytest.raises(MopError, match="fewer than the threshold"):
        _secagg2_round(5, 3, [4, 2, 2, 2, 4], xs, length)


def test_secagg2_refuses_second_survivor_list_and_tampering():
    kw = dict(n_clients=3, length=4, min_survivors=2)
    cs = [libmop.SecAgg2Client(i, **kw) for i in range(3)]
    s = libmop.SecAgg2Server(**kw)
    x = np.array([1.0, -2.0, 0.5, 4.0], dtype=np.float32)
    for k in range(3):
        for i, c in enumerate(cs):
            s.receive(c.step(None if k == 0 else s.message(i), x if k == 2 else None))
        s.advance()
    surv = s.message(0)
    bad = bytearray(surv)
    bad[-1] ^= 1
    with pytest.raises(MopError, match="checksum") as e:
        cs[0].step(bytes(bad))
    assert e.value.name == "MOP_E_CHECKSUM"
    with pytest.raises(MopError):
        cs[0].step(surv[:20])
    s.receive(cs[0].step(surv))
    with pytest.raises(MopError, match="both shares"):
        cs[0].step(surv)
    s.receive(cs[1].step(surv))
    ans2 = cs[2].step(surv)
    s.receive(ans2)
    with pytest.raises(MopError, match="already sent"):   # a replayed answer
        s.receive(ans2)
    s.advance()
    total, inc = s.result()
    np.testing.assert_array_equal(total, 3 * x)
    assert inc.tolist() == [0, 1, 2]
    for c in cs:
        c.close()
    s.close()
