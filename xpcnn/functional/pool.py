"""Max, average and global average pooling over ``(N, C, H, W)``, forward and backward, on the Array API.

The windows are gathered tap-first, ``(KH*KW, N, C, OH, OW)``, so the
reduction runs over the leading axis (fast on NumPy) and the backward pass is a
strided slice-add per tap, exactly like :func:`xpcnn.functional.conv.col2im`.

* Output size ``floor((H + 2P - K) / S) + 1`` (``ceil`` with ``ceil_mode=True``, where the last window
  must start inside the input or the left padding): PyTorch's rules.  Input rows and columns that no
  window reaches get a zero gradient.
* Max pooling pads with ``-inf`` and sends each window's gradient to its
  *first* maximum (row-major within the window), like PyTorch's CPU kernel.
* Average pooling pads with zeros that count in the denominator
  (PyTorch's ``count_include_pad=True``); a ``ceil_mode`` window hanging past the right padding
  divides by the part of it that lies inside the padded input, as PyTorch does.
* ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the kernel.

Forward functions return ``(y, cache)`` and backward functions take ``(dout, cache)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from ..checks import Pair, check_floating, check_rank, namespace, output_size, pair
from .conv import pad2d, scatter_add_taps, stack_taps, tap_slices

__all__ = [
    "PoolCache",
    "avg_pool2d",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "pool_geometry",
]


@dataclass(frozen=True)
class PoolGeometry:
    kernel: Pair
    stride: Pair
    padding: Pair
    out: Pair
    extra: Pair  # rows/columns of padding past the right padding that ceil_mode windows read

    @property
    def tiles(self) -> bool:
        """Stride = kernel, no padding: every input position lies in at most one window."""
        return self.stride == self.kernel and self.padding == (0, 0) and self.extra == (0, 0)


def pool_geometry(x_shape: tuple[int, ...], kernel_size: int | Pair, stride: int | Pair | None = None,
                  padding: int | Pair = 0, ceil_mode: bool = False) -> PoolGeometry:
    """Normalise and check the pooling arguments for an input of shape ``(N, C, H, W)``."""
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pooling padding must be at most half the kernel: kernel {k}, got padding {p}")
    sizes = (x_shape[-2], x_shape[-1])
    oh, ow = (output_size(sizes[a], k[a], s[a], p[a], 1, axis, ceil_mode) for a, axis in enumerate(("height", "width")))
    out = (oh, ow)
    eh, ew = (max(0, (out[a] - 1) * s[a] + k[a] - (sizes[a] + 2 * p[a])) for a in range(2))
    return PoolGeometry(k, s, p, out, (eh, ew))


@dataclass(frozen=True)
class PoolCache:
    """What pooling's backward needs: the input shape, the geometry and (max pooling) the first-max index."""

    x_shape: tuple[int, int, int, int]
    geometry: PoolGeometry
    argmax: Any = None  # (N, C, OH, OW) int8/int32 index i*KW + j of each window's first maximum


def _windows(x: Any, g: PoolGeometry, fill: float) -> Any:
    """(N, C, H, W) -> (KH*KW, N, C, OH, OW), padding with ``fill`` (and past the right edge for ceil_mode)."""
    xpad = pad2d(x, g.padding, fill)
    if g.extra != (0, 0):
        xp = array_api_compat.array_namespace(x)
        N, C, Hp, Wp = xpad.shape
        grown = xp.full((N, C, Hp + g.extra[0], Wp + g.extra[1]), fill, dtype=x.dtype,
                        device=array_api_compat.device(x))
        grown[:, :, :Hp, :Wp] = xpad
        xpad = grown
    return stack_taps(xpad, g.kernel, g.out, g.stride, (1, 1), axis=0)


def _scatter_taps(tap_grads: Any, x_shape: tuple[int, ...], g: PoolGeometry, like: Any) -> Any:
    """Add ``tap_grads(t)`` into the input positions each tap ``t`` read (see ``scatter_add_taps``).

    When the windows tile the input exactly (stride = kernel, no padding, no remainder) every input
    position is written by exactly one tap: assign instead of accumulating.
    """
    N, C, H, W = x_shape
    exact = g.tiles and H == g.out[0] * g.kernel[0] and W == g.out[1] * g.kernel[1]
    if not exact:
        # grow the scatter buffer by ceil_mode's extra rows/columns, then crop them with the padding
        grown = (N, C, H + g.extra[0], W + g.extra[1])
        p = g.padding
        dx = scatter_add_taps(tap_grads, grown, g.kernel, g.out, g.stride, p, (1, 1), like)
        return dx[:, :, :H, :W] if g.extra != (0, 0) else dx
    xp = array_api_compat.array_namespace(like)
    buf = xp.empty(tuple(x_shape), dtype=like.dtype, device=array_api_compat.device(like))
    for t, (hs, ws) in enumerate(tap_slices(g.kernel, g.out, g.stride, (1, 1))):
        buf[:, :, hs, ws] = tap_grads(t)
    return buf


def _check_input(x: Any) -> None:
    namespace(x)
    check_rank(x, 4, "x", "(N, C, H, W)")
    check_floating(x, "x")


def _check_dout(dout: Any, cache: PoolCache) -> None:
    namespace(dout)
    expected = (cache.x_shape[0], cache.x_shape[1], *cache.geometry.out)
    if tuple(dout.shape) != expected:
        raise ValueError(f"dout must have the forward output's shape {expected}, got {tuple(dout.shape)}")


# -- max pooling ---------------------------------------------------------------------------------------

def _max_pool2d_forward(x: Any, g: PoolGeometry) -> tuple[Any, PoolCache]:
    xp = array_api_compat.array_namespace(x)
    windows = _windows(x, g, -float("inf"))
    y = xp.max(windows, axis=0)
    # First-maximum index without argmax (slow over a leading axis on NumPy): the index of
    # the first maximum equals the number of taps t >= 1 whose running max of taps 0..t-1
    # is still below the window max.
    index_dtype = xp.int8 if windows.shape[0] <= 127 else xp.int32
    argmax = xp.zeros(y.shape, dtype=index_dtype, device=array_api_compat.device(x))
    running = windows[0, ...]
    for t in range(1, windows.shape[0]):
        argmax += xp.astype(running < y, index_dtype)
        running = xp.maximum(running, windows[t, ...])
    return y, PoolCache(tuple(x.shape), g, argmax)


def _max_pool2d_backward(dout: Any, cache: PoolCache) -> Any:
    xp = array_api_compat.array_namespace(dout)
    argmax = cache.argmax
    return _scatter_taps(lambda t: dout * xp.astype(argmax == t, dout.dtype), cache.x_shape, cache.geometry, dout)


def max_pool2d_forward(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0,
                       ceil_mode: bool = False) -> tuple[Any, PoolCache]:
    """Max pooling: returns ``(y, cache)``.

    x: (N, C, H, W) -> y: (N, C, OH, OW); ``cache.argmax: (N, C, OH, OW)`` holds the
    index (``i*KW + j``) of the first maximum in each window, for the backward pass.

    >>> import numpy as np
    >>> y, cache = max_pool2d_forward(np.arange(49.0).reshape(1, 1, 7, 7), 2)   # 7x7 -> 3x3 (floor)
    >>> y[0, 0].tolist()
    [[8.0, 10.0, 12.0], [22.0, 24.0, 26.0], [36.0, 38.0, 40.0]]
    """
    _check_input(x)
    return _max_pool2d_forward(x, pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode))


def max_pool2d(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0,
               ceil_mode: bool = False) -> Any:
    """Max pooling forward only: ``y: (N, C, OH, OW)``."""
    return max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode)[0]


def max_pool2d_backward(dout: Any, cache: PoolCache) -> Any:
    """Gradient of max pooling: ``dx: (N, C, H, W)``; each window's gradient goes to its first maximum."""
    _check_dout(dout, cache)
    namespace(dout, cache.argmax)
    return _max_pool2d_backward(dout, cache)


# -- average pooling -----------------------------------------------------------------------------------

def _divisor(g: PoolGeometry, x_shape: tuple[int, ...], like: Any) -> Any:
    """``KH*KW``, or per window (OH, OW) the part inside the padded input when ceil_mode windows overhang."""
    k, s, p = g.kernel, g.stride, g.padding
    if g.extra == (0, 0):
        return float(k[0] * k[1])
    xp = array_api_compat.array_namespace(like)
    limits = (x_shape[-2] + 2 * p[0], x_shape[-1] + 2 * p[1])
    rows = [min(o * s[0] + k[0], limits[0]) - o * s[0] for o in range(g.out[0])]
    cols = [min(o * s[1] + k[1], limits[1]) - o * s[1] for o in range(g.out[1])]
    counts = [[float(r * c) for c in cols] for r in rows]
    return xp.asarray(counts, dtype=like.dtype, device=array_api_compat.device(like))


def _avg_pool2d_forward(x: Any, g: PoolGeometry) -> tuple[Any, PoolCache]:
    xp = array_api_compat.array_namespace(x)
    y = xp.sum(_windows(x, g, 0.0), axis=0) / _divisor(g, x.shape, x)
    return y, PoolCache(tuple(x.shape), g)


def _avg_pool2d_backward(dout: Any, cache: PoolCache) -> Any:
    share = dout / _divisor(cache.geometry, cache.x_shape, dout)
    return _scatter_taps(lambda t: share, cache.x_shape, cache.geometry, dout)


def avg_pool2d_forward(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0,
                       ceil_mode: bool = False) -> tuple[Any, PoolCache]:
    """Average pooling: returns ``(y, cache)``; x: (N, C, H, W) -> y: (N, C, OH, OW)."""
    _check_input(x)
    return _avg_pool2d_forward(x, pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode))


def avg_pool2d(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0,
               ceil_mode: bool = False) -> Any:
    """Average pooling forward only: ``y: (N, C, OH, OW)``; padded zeros count in the mean."""
    return avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode)[0]


def avg_pool2d_backward(dout: Any, cache: PoolCache) -> Any:
    """Gradient of average pooling: every input in a window gets ``dout / (KH*KW)``."""
    _check_dout(dout, cache)
    return _avg_pool2d_backward(dout, cache)


# -- global average pooling ----------------------------------------------------------------------------

def _global_avg_pool2d_forward(x: Any) -> tuple[Any, tuple[int, ...]]:
    """:func:`global_avg_pool2d_forward` without the checks; the cache is the input shape."""
    xp = array_api_compat.array_namespace(x)
    N, C, H, W = x.shape
    y = xp.sum(xp.reshape(x, (N, C, H * W)), axis=2) / float(H * W)
    return y, tuple(x.shape)


def _global_avg_pool2d_backward(dout: Any, x_shape: tuple[int, ...]) -> Any:
    """:func:`global_avg_pool2d_backward` without the checks: ``dout / (H*W)`` broadcast over each map."""
    xp = array_api_compat.array_namespace(dout)
    N, C, H, W = x_shape
    share = xp.reshape(dout / float(H * W), (N, C, 1, 1))
    return share * xp.ones((1, 1, H, W), dtype=dout.dtype, device=array_api_compat.device(dout))


def global_avg_pool2d_forward(x: Any) -> tuple[Any, tuple[int, ...]]:
    """The mean of each feature map: x: (N, C, H, W) -> y: (N, C); the cache is ``x.shape``.

    >>> import numpy as np
    >>> y, cache = global_avg_pool2d_forward(np.arange(8.0).reshape(1, 2, 2, 2))
    >>> y.tolist(), cache
    ([[1.5, 5.5]], (1, 2, 2, 2))
    """
    _check_input(x)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"global average pooling needs non-empty feature maps, got x of shape {tuple(x.shape)}")
    return _global_avg_pool2d_forward(x)


def global_avg_pool2d(x: Any) -> Any:
    """Global average pooling forward only: ``y: (N, C)``."""
    return global_avg_pool2d_forward(x)[0]


def global_avg_pool2d_backward(dout: Any, x_shape: tuple[int, ...]) -> Any:
    """Gradient of global average pooling: dout: (N, C) -> dx: (N, C, H, W), each element ``dout / (H*W)``."""
    check_floating(dout, "dout")
    if tuple(dout.shape) != tuple(x_shape[:2]):
        raise ValueError(f"dout must have the forward output's shape {tuple(x_shape[:2])}, got {tuple(dout.shape)}")
    return _global_avg_pool2d_backward(dout, x_shape)
