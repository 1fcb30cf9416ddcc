"""Max and average pooling over ``(N, C, H, W)``, forward and backward, on the Array API.

The windows are gathered tap-first, ``(KH*KW, N, C, OH, OW)``, so the
reduction runs over the leading axis (fast on NumPy) and the backward pass is a
strided slice-add per tap, exactly like :func:`xpcnn.functional.conv.col2im`.

* Max pooling pads with ``-inf`` and sends each window's gradient to its
  *first* maximum (row-major within the window), like PyTorch's CPU kernel.
* Average pooling pads with zeros that count in the denominator
  (PyTorch's ``count_include_pad=True``).
* ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the kernel.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..checks import Pair, check_floating, check_rank, namespace, pair
from .conv import conv_geometry, pad2d, scatter_add_taps, stack_taps, tap_slices

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "pool_geometry",
]


def pool_geometry(x_shape: tuple[int, ...], kernel_size: int | Pair, stride: int | Pair | None,
                  padding: int | Pair) -> tuple[Pair, Pair, Pair, Pair]:
    """Normalise the pooling arguments: returns ``(kernel, stride, padding, (OH, OW))``."""
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"pooling padding must be at most half the kernel: kernel {k}, got padding {p}")
    return k, s, p, conv_geometry(x_shape, k, s, p, (1, 1))


def _windows(x: Any, k: Pair, s: Pair, p: Pair, out: Pair, fill: float) -> Any:
    """(N, C, H, W) -> (KH*KW, N, C, OH, OW), padding with ``fill``."""
    return stack_taps(pad2d(x, p, fill), k, out, s, (1, 1), axis=0)


def _check_input(x: Any) -> Any:
    xp = namespace(x)
    check_rank(x, 4, "x", "(N, C, H, W)")
    check_floating(x, "x")
    return xp


def _check_dout(dout: Any, x_shape: tuple[int, ...], out: Pair) -> None:
    expected = (x_shape[0], x_shape[1], *out)
    if tuple(dout.shape) != expected:
        raise ValueError(f"dout must have the forward output's shape {expected}, got {tuple(dout.shape)}")


def _scatter_taps(tap_grads: Any, x_shape: tuple[int, ...], k: Pair, s: Pair, p: Pair, out: Pair,
                  like: Any) -> Any:
    """Add ``tap_grads(t)`` into the input positions each tap ``t`` read (see ``scatter_add_taps``).

    When the windows tile the input (stride = kernel, no padding; the output size is exact, so no
    remainder) every input position is written by exactly one tap: assign instead of accumulating.
    """
    if not (s == k and p == (0, 0)):
        return scatter_add_taps(tap_grads, x_shape, k, out, s, p, (1, 1), like)
    xp = array_api_compat.array_namespace(like)
    buf = xp.empty(tuple(x_shape), dtype=like.dtype, device=array_api_compat.device(like))
    for t, (hs, ws) in enumerate(tap_slices(k, out, s, (1, 1))):
        buf[:, :, hs, ws] = tap_grads(t)
    return buf


def max_pool2d_forward(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None,
                       padding: int | Pair = 0) -> tuple[Any, Any]:
    """Max pooling: returns ``(y, argmax)``.

    x: (N, C, H, W) -> y: (N, C, OH, OW); ``argmax: (N, C, OH, OW)`` holds the
    index (``i*KW + j``) of the first maximum in each window, for the backward pass.
    """
    xp = _check_input(x)
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    windows = _windows(x, k, s, p, out, -float("inf"))
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
    return y, argmax


def max_pool2d(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0) -> Any:
    """Max pooling forward only: ``y: (N, C, OH, OW)``."""
    return max_pool2d_forward(x, kernel_size, stride, padding)[0]


def max_pool2d_backward(dout: Any, argmax: Any, x_shape: tuple[int, int, int, int], kernel_size: int | Pair,
                        stride: int | Pair | None = None, padding: int | Pair = 0) -> Any:
    """Gradient of max pooling: ``dx: (N, C, H, W)``; each window's gradient goes to its first maximum."""
    xp = namespace(dout, argmax)
    k, s, p, out = pool_geometry(x_shape, kernel_size, stride, padding)
    _check_dout(dout, x_shape, out)
    return _scatter_taps(lambda t: dout * xp.astype(argmax == t, dout.dtype), x_shape, k, s, p, out, dout)


def avg_pool2d(x: Any, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0) -> Any:
    """Average pooling: x: (N, C, H, W) -> y: (N, C, OH, OW); padded zeros count in the mean."""
    xp = _check_input(x)
    k, s, p, out = pool_geometry(x.shape, kernel_size, stride, padding)
    return xp.mean(_windows(x, k, s, p, out, 0.0), axis=0)


def avg_pool2d_backward(dout: Any, x_shape: tuple[int, int, int, int], kernel_size: int | Pair,
                        stride: int | Pair | None = None, padding: int | Pair = 0) -> Any:
    """Gradient of average pooling: every input in a window gets ``dout / (KH*KW)``."""
    namespace(dout)
    k, s, p, out = pool_geometry(x_shape, kernel_size, stride, padding)
    _check_dout(dout, x_shape, out)
    share = dout / float(k[0] * k[1])
    return _scatter_taps(lambda t: share, x_shape, k, s, p, out, dout)
