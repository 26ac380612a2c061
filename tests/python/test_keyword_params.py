"""Constructors and functions that mirror a C params struct name every field.

Mixture, Optimizer, prune / Model.prune, Aggregator, Context and the four
secure-aggregation classes take one keyword parameter per settable field of
mop_mixture_params, mop_adamw_params, mop_prune_params,
mop_aggregator_params, mop_ctx_params and mop_secagg_params (no ``**params``), each defaulting
to None = the library's default (docs/PYTHON.md). The fields are read from the
ctypes Structures, so a field added to a struct without a parameter fails
here, and so does a docstring whose [default] differs from the C one. No
model is needed: fill_params is replaced by a spy that records what
reaches the struct and stops before any C call.
"""
import ctypes
import inspect
import re

import pytest

from test_bindings_core import import_libmop

libmop = import_libmop()
L = libmop._lib

#: fields no caller sets by name: the ABI size, callbacks, and calib_tokens'
#: length (taken from the calib_tokens array)
NOT_SETTABLE = {"struct_size", "progress", "progress_user", "n_calib_tokens"}


def settable_fields(cls):
    out = []
    for name, ctype in cls._fields_:
        if name in NOT_SETTABLE:
            continue
        if (ctype is ctypes.c_void_p or ctype is ctypes.c_char_p
                or issubclass(ctype, (ctypes._Pointer, ctypes._CFuncPtr))):
            continue  # pointers (calib_tokens has its own array parameter)
        out.append(name)
    return out


#: name -> (callable, its params struct, where its parameters are documented)
CASES = {
    "Mixture": (libmop.Mixture.__init__, L.MixtureParams, libmop.Mixture),
    "Optimizer": (libmop.Optimizer.__init__, L.AdamWParams, libmop.Optimizer),
    "prune": (libmop.prune, L.PruneParams, libmop.prune),
    "Model.prune": (libmop.Model.prune, L.PruneParams, libmop.Model.prune),
    "Aggregator": (libmop.Aggregator.__init__, libmop.fed.AggregatorParams, libmop.Aggregator),
    "Context": (libmop.Context.__init__, L.CtxParams, libmop.Context),
    "SecAggClient": (libmop.fed.SecAggClient.__init__, libmop.fed.SecAggParams,
                     libmop.fed.SecAggClient),
    "SecAggServer": (libmop.fed.SecAggServer.__init__, libmop.fed.SecAggParams,
                     libmop.fed.SecAggServer),
    "SecAgg2Client": (libmop.fed.SecAgg2Client.__init__, libmop.fed.SecAggParams,
                      libmop.fed.SecAgg2Client),
    "SecAgg2Server": (libmop.fed.SecAgg2Server.__init__, libmop.fed.SecAggParams,
                      libmop.fed.SecAgg2Server),
}


@pytest.mark.parametrize("what", sorted(CASES))
def test_every_field_is_a_named_parameter(what):
    func, cls, documented = CASES[what]
    sig = inspect.signature(func)
    kinds = {p.kind for p in sig.parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{what} still takes **kwargs"
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, f"{what} takes *args"
    fields = settable_fields(cls)
    assert fields, cls
    missing = [f for f in fields if f not in sig.parameters]
    assert not missing, f"{what}: fields of {cls.__name__} with no parameter: {missing}"
    for f in fields:
        p = sig.parameters[f]
        assert p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD), (what, f, p.kind)
        assert p.default is None, f"{what}({f}=...) defaults to {p.default!r}, not None"
        assert p.annotation is not p.empty, (what, f)
    doc = inspect.getdoc(documented)
    undocumented = [f for f in fields if f":param {f}:" not in doc]
    assert not undocumented, f"{what}: docstring lacks {undocumented}"
    assert "@p" not in doc and "@c " not in doc  # Python style, no Doxygen


def test_prune_and_model_prune_agree():
    a = inspect.signature(libmop.prune).parameters
    b = inspect.signature(libmop.Model.prune).parameters
    assert list(a)[1:] == list(b)[1:]  # same names and order after model/self


class Stop(Exception):
    pass


@pytest.fixture
def spy(monkeypatch):
    seen = {}

    def fill(struct, params, what, enums=None):
        seen[type(struct).__name__] = dict(params)
        raise Stop

    monkeypatch.setattr(L, "fill_params", fill)
    return seen


def calls():
    # a distinct, valid-typed value per field (checked only by the spy)
    def kw(cls):
        return {f: i + 2 for i, f in enumerate(settable_fields(cls))}
    return {
        "Mixture": (lambda **k: libmop.Mixture(None, **k), L.MixtureParams),
        "Optimizer": (lambda **k: libmop.Optimizer(8, **k), L.AdamWParams),
        "prune": (lambda **k: libmop.prune(None, **k), L.PruneParams),
        "Model.prune": (lambda **k: libmop.Model.prune(None, **k), L.PruneParams),
        "Aggregator": (lambda **k: libmop.Aggregator(**k), libmop.fed.AggregatorParams),
        "Context": (lambda **k: libmop.Context(None, **k), L.CtxParams),
        "SecAggClient": (lambda **k: libmop.fed.SecAggClient(0, **k), libmop.fed.SecAggParams),
        "SecAggServer": (lambda **k: libmop.fed.SecAggServer(**k), libmop.fed.SecAggParams),
        "SecAgg2Client": (lambda **k: libmop.fed.SecAgg2Client(0, **k), libmop.fed.SecAggParams),
        "SecAgg2Server": (lambda **k: libmop.fed.SecAgg2Server(**k), libmop.fed.SecAggParams),
    }, kw


@pytest.mark.parametrize("what", sorted(CASES))
def test_every_parameter_reaches_the_struct(what, spy):
    table, kw = calls()
    make, cls = table[what]
    values = kw(cls)
    with pytest.raises(Stop):
        make(**values)
    assert spy[cls.__name__] == values
    # nothing passed: every field None, so fill_params keeps every C default
    spy.clear()
    with pytest.raises(Stop):
        make()
    passed = spy[cls.__name__]
    assert set(passed) == set(values)
    assert all(v is None for v in passed.values()), passed


@pytest.mark.parametrize("what", sorted(CASES))
def test_misspelt_keyword_is_a_type_error(what):
    table, _ = calls()
    make, _ = table[what]
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_expert_typo'"):
        make(n_expert_typo=3)


def test_defaults_are_the_libraries():
    with libmop.Optimizer(8) as opt:
        c = L.params_init(L.AdamWParams, "mop_adamw_params_init_sized")
        assert opt.params == {f: getattr(c, f) for f, _ in c._fields_ if f != "struct_size"}
    with libmop.Aggregator() as agg:
        assert agg.params["strategy"] == libmop.fed.STRATEGY["fedavg"]
        assert agg.params["momentum"] == pytest.approx(0.9)
    with libmop.Aggregator("krum", krum_f=0, seed=7) as agg:
        assert agg.params["strategy"] == libmop.fed.STRATEGY["krum"]
        assert (agg.params["krum_f"], agg.params["seed"]) == (0, 7)


ENUMS = {"Mixture": libmop.mixture._ENUMS, "prune": libmop.sparse._ENUMS,
         "Model.prune": libmop.sparse._ENUMS, "Aggregator": {"strategy": libmop.fed.STRATEGY},
         "Optimizer": {}, "Context": {}, "SecAggClient": {}, "SecAggServer": {}, "SecAgg2Client": {},
         "SecAgg2Server": {}}
INIT = {"MixtureParams": "mop_mixture_params_init_sized", "AdamWParams": "mop_adamw_params_init_sized",
        "PruneParams": "mop_prune_params_init_sized",
        "AggregatorParams": "mop_aggregator_params_init_sized",
        "SecAggParams": "mop_secagg_params_init_sized", "CtxParams": "mop_ctx_params_init_sized"}


@pytest.mark.parametrize("what", sorted(CASES))
def test_documented_defaults_are_the_c_defaults(what):
    """The default in brackets at the end of each ``:param:`` is what
    mop_X_params_init() gives (so the docstrings cannot go stale)."""
    _, cls, documented = CASES[what]
    c = L.params_init(cls, INIT[cls.__name__])
    doc = inspect.getdoc(documented)
    for f in settable_fields(cls):
        m = re.search(rf":param {f}:(.*?)(?=\n:param |\n:raises |\n\n|\Z)", doc, re.S)
        assert m, (what, f)
        brackets = re.findall(r"\[([^\[\]]*)\]", m.group(1))
        assert brackets, f"{what}: no [default] for {f}"
        word = re.split(r"[ ,]", brackets[-1].strip())[0]
        want = getattr(c, f)
        if f in ENUMS[what]:
            assert ENUMS[what][f][word] == want, (what, f, word, want)
        elif word in ("True", "False"):
            assert int(word == "True") == want, (what, f, word, want)
        else:
            assert float(word) == pytest.approx(want, rel=1e-6), (what, f, word, want)
