"""The pip package: `pip install ./bindings/python` builds libmop with meson
(meson-python) and bundles libmop.so, so a fresh venv imports libmop with no
environment variable.

The slow test builds the wheel from bindings/python into a temporary
directory (offline: --no-build-isolation with the venv's meson-python,
scripts/requirements-dev.txt), installs it into a fresh venv that sees
Debian's numpy 1.x, and imports it from outside the source tree with
LIBMOP_LIBRARY / LIBMOP_BUILD_DIR / pkg-config out of the way; about a minute
on 2 cores. numpy 2.x in an isolated venv (needs PyPI) and `pip install .` at
the repository root: scripts/check-wheel.sh.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "bindings" / "python"


def test_meson_installs_every_module():
    listed = set(re.findall(r"'([^']+\.(?:py|typed))'", (PKG / "libmop" / "meson.build").read_text()))
    present = {p.name for p in (PKG / "libmop").iterdir() if p.suffix in (".py", ".typed")}
    assert listed == present


def test_root_and_bindings_pyproject_agree():
    a = tomllib.loads((PKG / "pyproject.toml").read_text())
    b = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for k in ("name", "version", "description", "dependencies", "requires-python",
              "optional-dependencies", "classifiers"):
        assert a["project"][k] == b["project"][k], k
    assert a["build-system"] == b["build-system"]
    # the subproject link that lets bindings/python/meson.build build the library
    link = PKG / "subprojects" / "libmop"
    assert link.is_symlink() and link.resolve() == ROOT


@pytest.mark.skipif(shutil.which("ninja") is None, reason="ninja not installed")
def test_wheel_bundles_library_and_imports_in_fresh_venv(tmp_path, model_path):
    pytest.importorskip("mesonpy", reason="meson-python not installed "
                                          "(scripts/requirements-dev.txt)")
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(wheels), str(PKG)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    whl = list(wheels.glob("libmop-*.whl"))
    assert len(whl) == 1
    import zipfile
    names = zipfile.ZipFile(whl[0]).namelist()
    assert "libmop/libmop.so" in names and "libmop/flower.py" in names
    assert not any(n.endswith((".h", ".a", ".pc")) for n in names), names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index",
                        "--disable-pip-version-check", str(whl[0])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if k not in ("LIBMOP_LIBRARY", "LIBMOP_BUILD_DIR", "PYTHONPATH", "PKG_CONFIG_PATH")}
    env["PKG_CONFIG_LIBDIR"] = str(tmp_path)   # no libmop.pc
    code = ("import numpy, libmop; print(libmop.library_path); print(libmop.version()); "
            f"m = libmop.Model({model_path!r}, n_threads=1); "
            "print(list(m.tokenize('hello world')))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    path, version, toks = r.stdout.split("\n")[:3]
    assert path.startswith(str(env_dir)) and path.endswith("libmop/libmop.so")
    assert version.split(".")[0] == tomllib.loads((PKG / "pyproject.toml").read_text()
                                                  )["project"]["version"].split(".")[0]
    assert toks == "[28120, 905]"


def test_docstrings_have_no_doxygen_markup():
    """Python docstrings name parameters as ``name``, not Doxygen's @p / @param."""
    bad = []
    for p in sorted((PKG / "libmop").glob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"@(p|param|return|brief)\b", line):
                bad.append(f"{p.name}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
