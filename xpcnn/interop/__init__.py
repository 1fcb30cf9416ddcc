"""Models in and out of xpcnn: PyTorch weights, safetensors files, ONNX export.

The optional packages load only when a function that needs them is called:

* :func:`from_torch`, :func:`to_torch` need ``torch`` (``pip install 'xpcnn[torch]'``);
* :func:`save_safetensors`, :func:`load_safetensors` need ``safetensors`` (``pip install 'xpcnn[safetensors]'``);
* :func:`export_onnx` needs ``onnx`` (``pip install 'xpcnn[onnx]'``, which also brings ``onnxruntime``).

The mapping between xpcnn layers and torch modules, and between their state-dict names, is one table:
:mod:`xpcnn.interop.twins`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .twins import InteropError, UnsupportedModuleError, state_names

__all__ = ["InteropError", "UnsupportedModuleError", "export_onnx", "from_torch", "load_safetensors", "main_export",
           "save_safetensors", "state_names", "to_torch"]


def from_torch(*args: Any, **kwargs: Any) -> Any:
    """See :func:`xpcnn.interop.pytorch.from_torch` (needs torch)."""
    from .pytorch import from_torch as impl

    return impl(*args, **kwargs)


def to_torch(*args: Any, **kwargs: Any) -> Any:
    """See :func:`xpcnn.interop.pytorch.to_torch` (needs torch)."""
    from .pytorch import to_torch as impl

    return impl(*args, **kwargs)


def save_safetensors(*args: Any, **kwargs: Any) -> Any:
    """See :func:`xpcnn.interop.safetensors_io.save_safetensors` (needs safetensors)."""
    from .safetensors_io import save_safetensors as impl

    return impl(*args, **kwargs)


def load_safetensors(*args: Any, **kwargs: Any) -> Any:
    """See :func:`xpcnn.interop.safetensors_io.load_safetensors` (needs safetensors)."""
    from .safetensors_io import load_safetensors as impl

    return impl(*args, **kwargs)


def export_onnx(*args: Any, **kwargs: Any) -> Any:
    """See :func:`xpcnn.interop.onnx_export.export_onnx` (needs onnx)."""
    from .onnx_export import export_onnx as impl

    return impl(*args, **kwargs)


def main_export(argv: Sequence[str] | None = None) -> int:
    """``xpcnn export CHECKPOINT MODEL.onnx [--input-shape 1,1,28,28]``: see :func:`.onnx_export.main_export`.

    Without the onnx package: a one-line error naming the extra to install, exit status 2.
    """
    try:
        from .onnx_export import main_export as impl
    except ImportError as exc:
        print(f"xpcnn export: error: ONNX export needs the {exc.name or 'onnx'} package: "
              "pip install 'xpcnn[onnx]'", file=sys.stderr)
        return 2
    return impl(argv)
