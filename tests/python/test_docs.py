"""The documentation's code runs: every fenced block whose info string is
``python runnable`` in README.md and docs/*.md is executed, each in a fresh
Python process in a temporary directory, with the in-tree package
(PYTHONPATH=bindings/python, the test library) and ``MOP_MODEL`` set to the
real model. A block must run as pasted: no names from other blocks.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python runnable[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks():
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(m.group(1), id=f"{doc.name}:{line}"))
    return out


BLOCKS = blocks()


def test_some_blocks_are_marked():
    assert len(BLOCKS) >= 3, "no ```python runnable blocks found"


@pytest.mark.parametrize("code", BLOCKS)
def test_doc_block_runs(code, tmp_path, libmop_path, model_path):
    env = dict(os.environ, MOP_MODEL=model_path, LIBMOP_LIBRARY=str(libmop_path),
               PYTHONPATH=str(ROOT / "bindings" / "python"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-3000:]}"
