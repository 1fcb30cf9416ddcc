"""``xpcnn export`` without the onnx extra: one line naming the extra, exit status 2 (no traceback)."""

from __future__ import annotations

import sys

from xpcnn.interop import main_export


def test_export_without_onnx_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "xpcnn.interop.onnx_export", raising=False)
    assert main_export([str(tmp_path / "c.npz"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpcnn export: error:"), err
    assert "onnx" in err and "pip install 'xpcnn[onnx]'" in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_the_xpcnn_command_dispatches_export(monkeypatch, capsys, tmp_path):
    """``xpcnn export ...`` reaches the same entry point (here: its one-line error without the onnx extra)."""
    from xpcnn.cli import main

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.delitem(sys.modules, "xpcnn.interop.onnx_export", raising=False)
    assert main(["export", str(tmp_path / "c.npz"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'xpcnn[onnx]'" in err, err
    assert not (tmp_path / "m.onnx").exists()
