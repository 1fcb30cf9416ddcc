"""Test helpers shared by the suite (import with ``from helpers import ...``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

from xpcnn import functional as F


def avg_cache(x_shape: tuple[int, ...], kernel: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False) -> F.PoolCache:
    """The cache average pooling's backward needs for an input of ``x_shape`` (it holds no arrays)."""
    return F.PoolCache(tuple(x_shape), F.pool_geometry(x_shape, kernel, stride, padding, ceil_mode))
