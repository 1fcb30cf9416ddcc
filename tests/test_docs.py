"""The documentation runs: every docstring example in ``xpcnn`` (doctest) and the README's Python blocks.

A README block is skipped only when the line before its fence says why, as
``<!-- not run in tests: REASON -->`` (a GPU, a long training run).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import xpcnn

#: optional packages whose absence makes a module's doctests skip (never a bug in xpcnn itself)
OPTIONAL = {"torch", "numba", "cupy", "cupyx", "onnx", "onnxruntime", "safetensors", "mpi4py", "matplotlib"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(xpcnn.__path__, "xpcnn.") if not m.name.endswith("__main__"))
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs the optional package {exc.name}")
        raise
    with xpcnn.using("numpy"), xpcnn.kernels.using_kernels("reference"):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """``(line number, code, skip reason or None)`` for every ```python block of the README."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            skip = re.match(r"<!-- not run in tests: (.+) -->", lines[i - 1].strip()) if i else None
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            blocks.append((start + 1, "\n".join(lines[start + 1:j]), skip.group(1) if skip else None))
            i = j
        i += 1
    return blocks


@pytest.mark.parametrize("line, code, skip", readme_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_python_blocks(line, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(f"README block at line {line}: {skip}")
    monkeypatch.chdir(tmp_path)
    with xpcnn.using("numpy"):
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def test_readme_has_runnable_blocks():
    assert sum(1 for _, _, skip in readme_blocks() if skip is None) >= 1
