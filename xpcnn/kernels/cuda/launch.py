"""Launching the CUDA sources on a CuPy-like module: compiled modules, grid sizes, array layouts.

``cp`` is ``cupy`` or a stand-in with the same surface (:mod:`xpcnn.kernels.cuda.standin`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from . import NVRTC_OPTIONS, source

if TYPE_CHECKING:
    from .update_ops import FlatGroup

KERNEL_SET = "cuda"
THREADS = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
XENT_THREADS = 256  # loss.cu's block size

i32, i64, f32 = np.int32, np.int64, np.float32

class Kernels:
    """The compiled CUDA modules of one CuPy-like module ``cp`` (``cupy`` or a stand-in), compiled lazily."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self.null = np.uint64(0)  # a null pointer argument
        self.tallies: dict[Any, Any] = {}
        self.groups: OrderedDict[int, FlatGroup] = OrderedDict()

    def function(self, src: str, name: str) -> Any:
        fn = self._functions.get(name)
        if fn is None:
            module = self._modules.get(src)
            if module is None:
                module = self._modules[src] = self.cp.RawModule(code=source(src), options=NVRTC_OPTIONS)
            fn = self._functions[name] = module.get_function(name)
        return fn

    def launch(self, src: str, name: str, n: int, args: tuple[Any, ...]) -> None:
        """Launch ``name`` with enough THREADS-thread blocks for ``n`` items (grid-stride beyond MAX_BLOCKS)."""
        blocks = max(1, min(MAX_BLOCKS, -(-n // THREADS)))
        self.function(src, name)((blocks,), (THREADS,), args)

    def ptr(self, a: Any | None) -> Any:
        return self.null if a is None else a


# -- layouts ---------------------------------------------------------------------------------------

def _estrides(a: Any) -> tuple[int, ...]:
    """Element strides (CuPy's ``strides`` are in bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


def _memory_order(a: Any) -> tuple[int, ...] | None:
    """The axis permutation ``perm`` with ``a.transpose(perm)`` C-contiguous, or None when ``a`` has gaps."""
    st = _estrides(a)
    perm = tuple(sorted(range(a.ndim), key=lambda ax: -st[ax] if a.shape[ax] > 1 else 0))
    expect = 1
    for ax in reversed(perm):
        if a.shape[ax] > 1 and st[ax] != expect:
            return None
        expect *= a.shape[ax]
    return perm


def _order(a: Any) -> tuple[int, ...]:
    """:func:`_memory_order`, or C order for an array with gaps (a fresh array then gets C order)."""
    perm = _memory_order(a)
    return tuple(range(a.ndim)) if perm is None else perm


def _empty_in_order(cp: Any, shape: tuple[int, ...], perm: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array of ``shape`` whose memory runs in the axis order ``perm``."""
    base = cp.empty(tuple(shape[ax] for ax in perm), dtype=dtype)
    return base.transpose(tuple(int(i) for i in np.argsort(perm)))


def _is_f32(*arrays: Any) -> bool:
    return all(a is None or a.dtype == np.float32 for a in arrays)
