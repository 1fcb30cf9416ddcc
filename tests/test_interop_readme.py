"""The README's PyTorch -> xpcnn -> ONNX walkthrough runs (test_docs.py skips it: it needs the optional packages)."""

from __future__ import annotations

from pathlib import Path

import pytest

import xpcnn

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "tests/test_interop_readme.py runs it"


def walkthrough() -> str:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if MARK in line)
    assert lines[start + 1].strip() == "```python", "the marked README block must follow its marker line"
    end = next(j for j in range(start + 2, len(lines)) if lines[j].strip() == "```")
    return "\n".join(lines[start + 2:end])


def test_readme_interop_walkthrough(tmp_path, monkeypatch):
    for name in ("torch", "onnx", "onnxruntime", "safetensors"):
        pytest.importorskip(name, reason=f"the README's interop walkthrough needs {name}")
    import torch

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with xpcnn.using("numpy"):
            exec(compile(walkthrough(), "README.md (interop walkthrough)", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "lenet5.onnx").is_file() and (tmp_path / "lenet5.safetensors").is_file()
