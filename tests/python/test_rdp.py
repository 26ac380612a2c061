"""Cross-check libmop's RDP accountant against Opacus' reference implementation.

Opacus (pip install --no-deps opacus) ships opacus/accountants/analysis/rdp.py,
which needs only numpy and scipy; it is loaded straight from its file so the
package's torch-heavy __init__ is not imported. Skipped when Opacus is absent.
"""
import ctypes
import importlib.util
import math

import pytest


def load_opacus_rdp():
    spec = importlib.util.find_spec("opacus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("opacus not installed")
    path = spec.submodule_search_locations[0] + "/accountants/analysis/rdp.py"
    mod_spec = importlib.util.spec_from_file_location("opacus_rdp", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lib(libmop_path):
    lib = ctypes.CDLL(libmop_path)
    lib.mop_rdp_sampled_gaussian.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                             ctypes.POINTER(ctypes.c_double)]
    lib.mop_rdp_sampled_gaussian.restype = ctypes.c_int
    lib.mop_rdp_epsilon.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.c_int64,
                                    ctypes.c_double, ctypes.POINTER(ctypes.c_double),
                                    ctypes.POINTER(ctypes.c_double)]
    lib.mop_rdp_epsilon.restype = ctypes.c_int
    return lib


def mop_rdp(lib, sigma, q, alpha):
    out = ctypes.c_double()
    assert lib.mop_rdp_sampled_gaussian(sigma, q, alpha, ctypes.byref(out)) == 0
    return out.value


@pytest.mark.parametrize("q", [1e-4, 0.00427, 0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("sigma", [0.6, 1.1, 2.0, 8.0])
def test_rdp_matches_opacus(lib, q, sigma):
    ref = load_opacus_rdp()
    for alpha in [1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.75, 8.0, 9.1, 12.0, 32.0, 63.0, 128.0, 256.0]:
        want = float(ref.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[alpha])[0])
        got = mop_rdp(lib, sigma, q, alpha)
        # relative 1e-6, plus an absolute floor for RDP values near 0
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (q, sigma, alpha)


@pytest.mark.parametrize("sigma,q,steps", [(1.12, 256 / 60000, 14063), (1.1, 256 / 60000, 14063),
                                           (0.7, 256 / 60000, 10547), (4.0, 0.01, 10000),
                                           (1.0, 0.1, 500)])
def test_epsilon_matches_opacus_classic(lib, sigma, q, steps):
    ref = load_opacus_rdp()
    orders = ([1 + x / 10.0 for x in range(1, 100)] + [1.25, 1.75] + list(range(11, 64)) +
              [64, 80, 96, 128, 256, 512, 1024])
    rdp = ref.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    want = min(r + math.log(1 / 1e-5) / (a - 1) for r, a in zip(rdp, orders))
    eps, order = ctypes.c_double(), ctypes.c_double()
    assert lib.mop_rdp_epsilon(sigma, q, steps, 1e-5, ctypes.byref(eps), ctypes.byref(order)) == 0
    assert eps.value == pytest.approx(want, rel=1e-6)
