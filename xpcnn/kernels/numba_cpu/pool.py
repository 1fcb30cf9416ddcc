"""Max and average pooling in Numba, forward and backward, with the reference's semantics.

Same geometry object and conventions as :mod:`xpcnn.functional.pool` (PyTorch's output sizes,
``ceil_mode``, padding at most half the kernel): max pooling treats padding as ``-inf`` and records
the index ``i*KW + j`` of each window's *first* maximum (row-major, the reference's ``argmax`` exactly,
``int8`` when the window has at most 127 taps, else ``int32``; a NaN in a window makes its output NaN, as
in NumPy's max and PyTorch's kernel); average pooling counts padded zeros
(``count_include_pad``) and divides a ``ceil_mode`` window by its part inside the padded input.

``relu=True`` folds a preceding ReLU in (used by the fused Conv->ReLU->MaxPool): ``y = max(max_window(x), 0)``
and the backward sends ``dout`` to the first maximum only where ``y > 0`` -- exactly ReLU then pooling,
since ReLU is monotone.  Work is split over samples between the worker threads (no reductions
across samples, so any thread count gives the same bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import threads
from ._jit import jit

__all__ = ["NumbaPoolCache", "avg_pool2d_backward", "avg_pool2d_forward", "max_pool2d_backward",
           "max_pool2d_forward", "pool_eligible"]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@jit
def first_max4(a, b, c, d):  # pragma: no cover - compiled (inlined by the callers)
    """``(max, index)`` of a 2x2 window ``[a, b; c, d]``: the first maximum, NaN winning like the general loop."""
    if a != a or b != b or c != c or d != d:  # rare: the first NaN
        if a != a:
            return a, 0
        if b != b:
            return b, 1
        if c != c:
            return c, 2
        return d, 3
    best, arg = a, 0
    if b > best:
        best, arg = b, 1
    if c > best:
        best, arg = c, 2
    if d > best:
        best, arg = d, 3
    return best, arg


@jit
def _max_fwd(xf, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW, relu, n0, n1, yf, idxf):  # pragma: no cover
    neg = -np.inf
    zero = yf.dtype.type(0)
    if KH == 2 and KW == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and 2 * OH <= H and 2 * OW <= W:
        for n in range(n0, n1):  # the common 2x2 tiling: no bounds checks, unrolled window
            for c in range(C):
                plane = (n * C + c) * H * W
                obase = (n * C + c) * OH * OW
                for oh in range(OH):
                    r0 = plane + 2 * oh * W
                    for ow in range(OW):
                        k = np.uint64(r0 + 2 * ow)
                        best, arg = first_max4(xf[k], xf[k + 1], xf[k + W], xf[k + W + 1])
                        if relu and best <= zero:
                            best = zero
                        o = np.uint64(obase + oh * OW + ow)
                        yf[o] = best
                        idxf[o] = arg
        return
    for n in range(n0, n1):
        for c in range(C):
            plane = (n * C + c) * H * W
            obase = (n * C + c) * OH * OW
            for oh in range(OH):
                h0 = oh * sh - ph
                for ow in range(OW):
                    w0 = ow * sw - pw
                    best = neg
                    arg = 0
                    t = 0
                    for i in range(KH):
                        h = h0 + i
                        inside_h = 0 <= h < H
                        for j in range(KW):
                            w = w0 + j
                            if inside_h and 0 <= w < W:
                                v = xf[np.uint64(plane + h * W + w)]
                                if v > best or t == 0 or (v != v and best == best):  # NaN propagates
                                    best = v
                                    arg = t
                            t += 1
                    o = np.uint64(obase + oh * OW + ow)
                    if relu and best <= zero:  # a NaN stays NaN, as through ReLU
                        best = zero
                    yf[o] = best
                    idxf[o] = arg


@jit
def _max_bwd(doutf, idxf, yf, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW, relu, n0, n1, dxf):  # pragma: no cover
    zero = dxf.dtype.type(0)
    for k in range(np.uint64(n0 * C * H * W), np.uint64(n1 * C * H * W)):
        dxf[k] = zero
    for n in range(n0, n1):
        for c in range(C):
            plane = (n * C + c) * H * W
            obase = (n * C + c) * OH * OW
            for oh in range(OH):
                for ow in range(OW):
                    o = np.uint64(obase + oh * OW + ow)
                    if relu and not yf[o] > zero:
                        continue
                    t = idxf[o]
                    h = oh * sh - ph + t // KW
                    w = ow * sw - pw + t % KW
                    if 0 <= h < H and 0 <= w < W:
                        dxf[np.uint64(plane + h * W + w)] += doutf[o]


@jit
def _avg_fwd(xf, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW, n0, n1, yf):  # pragma: no cover
    for n in range(n0, n1):
        for c in range(C):
            plane = (n * C + c) * H * W
            obase = (n * C + c) * OH * OW
            for oh in range(OH):
                hs = oh * sh - ph
                he = min(hs + KH, H + ph)
                for ow in range(OW):
                    ws = ow * sw - pw
                    we = min(ws + KW, W + pw)
                    count = (he - hs) * (we - ws)
                    acc = yf.dtype.type(0)
                    for h in range(max(hs, 0), min(he, H)):
                        for w in range(max(ws, 0), min(we, W)):
                            acc += xf[np.uint64(plane + h * W + w)]
                    yf[np.uint64(obase + oh * OW + ow)] = acc / count


@jit
def _avg_bwd(doutf, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW, n0, n1, dxf):  # pragma: no cover
    zero = dxf.dtype.type(0)
    for k in range(np.uint64(n0 * C * H * W), np.uint64(n1 * C * H * W)):
        dxf[k] = zero
    for n in range(n0, n1):
        for c in range(C):
            plane = (n * C + c) * H * W
            obase = (n * C + c) * OH * OW
            for oh in range(OH):
                hs = oh * sh - ph
                he = min(hs + KH, H + ph)
                for ow in range(OW):
                    ws = ow * sw - pw
                    we = min(ws + KW, W + pw)
                    share = doutf[np.uint64(obase + oh * OW + ow)] / ((he - hs) * (we - ws))
                    for h in range(max(hs, 0), min(he, H)):
                        for w in range(max(ws, 0), min(we, W)):
                            dxf[np.uint64(plane + h * W + w)] += share


@dataclass(frozen=True)
class NumbaPoolCache:
    """What the backward needs: the input shape, the geometry, the first-max index (max pooling) and,
    with a folded ReLU, the output (its sign says where the gradient passes)."""

    x_shape: tuple[int, int, int, int]
    geometry: Any                     # xpcnn.functional.pool.PoolGeometry
    dtype: np.dtype
    argmax: np.ndarray | None = None  # (N, C, OH, OW) int8/int32
    relu: bool = False
    y: np.ndarray | None = None


def pool_eligible(x: Any, geometry: Any, *args: Any, **kwargs: Any) -> bool:
    """NumPy float32/float64 ``(N, C, H, W)`` with a non-empty output."""
    return (not args and not kwargs and type(x) is np.ndarray and x.dtype in FLOATS and x.ndim == 4
            and x.size > 0 and min(geometry.out) > 0)


def _spread(task: Any, N: int) -> None:
    """Run ``task(n0, n1)`` over sample ranges on the worker threads."""
    n_blocks = min(N, 2 * threads.workers())
    step = -(-N // n_blocks)
    threads.run_blocks(lambda k: task(k * step, min(N, (k + 1) * step)), -(-N // step))


def _geom(x_shape: tuple[int, ...], g: Any) -> tuple[int, ...]:
    _, C, H, W = x_shape
    return (C, H, W, g.kernel[0], g.kernel[1], g.stride[0], g.stride[1], g.padding[0], g.padding[1],
            g.out[0], g.out[1])


def max_pool2d_forward(x: np.ndarray, geometry: Any, relu: bool = False) -> tuple[np.ndarray, NumbaPoolCache]:
    """y: (N, C, OH, OW) window maxima (of ``max(x, 0)`` if ``relu``); the cache holds the first-max index."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[0], x.shape[1]
    taps = geometry.kernel[0] * geometry.kernel[1]
    y = np.empty((N, C, *geometry.out), dtype=x.dtype)
    idx = np.empty((N, C, *geometry.out), dtype=np.int8 if taps <= 127 else np.int32)
    dims = _geom(x.shape, geometry)
    xf, yf, idxf = x.reshape(-1), y.reshape(-1), idx.reshape(-1)
    _spread(lambda n0, n1: _max_fwd(xf, *dims, relu, n0, n1, yf, idxf), N)
    return y, NumbaPoolCache(tuple(x.shape), geometry, x.dtype, idx, relu, y if relu else None)


def max_pool2d_backward(dout: np.ndarray, cache: NumbaPoolCache) -> np.ndarray:
    """dx: (N, C, H, W); each window's gradient goes to its first maximum (not where a folded ReLU cut it)."""
    d = np.ascontiguousarray(dout, dtype=cache.dtype)
    dx = np.empty(cache.x_shape, dtype=cache.dtype)
    dims = _geom(cache.x_shape, cache.geometry)
    yf = cache.y.reshape(-1) if cache.y is not None else d.reshape(-1)
    assert cache.argmax is not None, "a max-pooling cache holds the first-max index"
    df, idxf, dxf = d.reshape(-1), cache.argmax.reshape(-1), dx.reshape(-1)
    _spread(lambda n0, n1: _max_bwd(df, idxf, yf, *dims, cache.relu, n0, n1, dxf), cache.x_shape[0])
    return dx


def avg_pool2d_forward(x: np.ndarray, geometry: Any) -> tuple[np.ndarray, NumbaPoolCache]:
    """y: (N, C, OH, OW) window means (padded zeros count)."""
    x = np.ascontiguousarray(x)
    y = np.empty((x.shape[0], x.shape[1], *geometry.out), dtype=x.dtype)
    dims = _geom(x.shape, geometry)
    xf, yf = x.reshape(-1), y.reshape(-1)
    _spread(lambda n0, n1: _avg_fwd(xf, *dims, n0, n1, yf), x.shape[0])
    return y, NumbaPoolCache(tuple(x.shape), geometry, x.dtype)


def avg_pool2d_backward(dout: np.ndarray, cache: NumbaPoolCache) -> np.ndarray:
    """dx: (N, C, H, W); every input of a window gets ``dout / window size``."""
    d = np.ascontiguousarray(dout, dtype=cache.dtype)
    dx = np.empty(cache.x_shape, dtype=cache.dtype)
    dims = _geom(cache.x_shape, cache.geometry)
    df, dxf = d.reshape(-1), dx.reshape(-1)
    _spread(lambda n0, n1: _avg_bwd(df, *dims, n0, n1, dxf), cache.x_shape[0])
    return dx
