"""Depthwise convolution (``groups == C == F``: one filter per channel) as direct loops in Numba.

``x: (N, C, H, W)``, ``W: (C, 1, KH, KW)``, ``b: (C,)`` or None -> ``y: (N, C, OH, OW)`` with PyTorch's
output size.  Per channel plane, tap by tap (Eq. of the reference's tap form):

    y[n, c, oh, ow]  = b[c] + sum_{i, j} W[c, 0, i, j] * x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    dx[n, c, h, w]   = sum over the taps that read (h, w) of W[c, 0, i, j] * dout[n, c, oh, ow]
    dW[c, 0, i, j]   = sum_{n, oh, ow} dout[n, c, oh, ow] * x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    db[c]            = sum_{n, oh, ow} dout[n, c, oh, ow]

There is no GEMM to feed (each output reads ``KH*KW`` inputs of one channel), so the work is a few
multiply-adds per loaded value and the loops run row by row over contiguous memory.  Blocks of
:data:`BLOCK` samples go to the worker threads; ``dW`` and ``db`` are float64 partials per block, added
in block order, so the result does not depend on the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import threads
from ._jit import jit
from .conv_kernels import _row_range

__all__ = ["DepthwiseCache", "depthwise_backward", "depthwise_eligible", "depthwise_forward"]

#: samples per block
BLOCK = 4


@jit
def _forward(xf, Wf, b, has_bias, n0, n1, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW,
             yf):  # pragma: no cover - compiled
    """y for samples [n0, n1) (flat arrays)."""
    zero = yf.dtype.type(0)
    for n in range(n0, n1):
        for c in range(C):
            obase = (n * C + c) * OH * OW
            bc = b[c] if has_bias else zero
            for k in range(np.uint64(OH * OW)):
                yf[np.uint64(obase) + k] = bc
            ibase = (n * C + c) * H * W
            for i in range(KH):
                for j in range(KW):
                    wv = Wf[(c * KH + i) * KW + j]
                    off = j * dw - pw
                    lo, hi = _row_range(OW, off, sw, W)
                    for oh in range(OH):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        dst = np.uint64(obase + oh * OW + lo)
                        src = np.uint64(ibase + ih * W + off + lo * sw)
                        for q in range(np.uint64(hi - lo)):
                            yf[dst + q] += wv * xf[src + q * np.uint64(sw)]


@jit
def _backward(doutf, xf, Wf, n0, n1, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, need_dx, dxf, dWp,
              dbp):  # pragma: no cover - compiled
    """dx for samples [n0, n1) (if ``need_dx``), and this block's float64 partials of dW (C*KH*KW) and db (C)."""
    zero = dxf.dtype.type(0)
    for k in range(dWp.size):
        dWp[k] = 0.0
    for c in range(C):
        dbp[c] = 0.0
    for n in range(n0, n1):
        for c in range(C):
            obase = (n * C + c) * OH * OW
            ibase = (n * C + c) * H * W
            acc = 0.0
            for k in range(np.uint64(OH * OW)):
                acc += doutf[np.uint64(obase) + k]
            dbp[c] += acc
            if need_dx:
                for k in range(np.uint64(H * W)):
                    dxf[np.uint64(ibase) + k] = zero
            for i in range(KH):
                for j in range(KW):
                    t = (c * KH + i) * KW + j
                    wv = Wf[t]
                    off = j * dw - pw
                    lo, hi = _row_range(OW, off, sw, W)
                    g = 0.0
                    for oh in range(OH):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        drow = np.uint64(obase + oh * OW + lo)
                        xrow = np.uint64(ibase + ih * W + off + lo * sw)
                        for q in range(np.uint64(hi - lo)):
                            d = doutf[drow + q]
                            g += d * xf[xrow + q * np.uint64(sw)]
                            if need_dx:
                                dxf[xrow + q * np.uint64(sw)] += wv * d
                    dWp[t] += g


@dataclass(frozen=True)
class DepthwiseCache:
    """What the backward needs: the input, the weights and the geometry."""

    x: np.ndarray     # (N, C, H, W), C-contiguous
    W: np.ndarray     # (C, 1, KH, KW), C-contiguous
    dims: tuple[int, ...]  # KH, KW, sh, sw, ph, pw, dh, dw, OH, OW


def depthwise_eligible(x: np.ndarray, W: np.ndarray, groups: int) -> bool:
    """One filter per channel (``groups == C == F``, ``W: (C, 1, KH, KW)``)."""
    C = x.shape[1]
    return groups == C and W.shape[0] == C and W.shape[1] == 1


def _blocks(N: int) -> int:
    return -(-N // BLOCK)


def depthwise_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                      padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[np.ndarray, DepthwiseCache]:
    """y: (N, C, OH, OW); the cache for :func:`depthwise_backward`."""
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    N, C, H, Wd = x.shape
    KH, KW = W.shape[2], W.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    dims = (KH, KW, sh, sw, ph, pw, dh, dw, OH, OW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    xf, Wf, yf = x.reshape(-1), W.reshape(-1), y.reshape(-1)

    def task(k: int) -> None:
        _forward(xf, Wf, bias, b is not None, k * BLOCK, min(N, (k + 1) * BLOCK), C, H, Wd, *dims, yf)

    threads.run_blocks(task, _blocks(N))
    return y, DepthwiseCache(x, W, dims)


def depthwise_backward(dout: np.ndarray, cache: DepthwiseCache,
                       need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``: dx (N, C, H, W) or None, dW (C, 1, KH, KW), db (C,)."""
    x, W = cache.x, cache.W
    N, C, H, Wd = x.shape
    d = np.ascontiguousarray(dout, dtype=x.dtype)
    n_blocks = _blocks(N)
    dW_parts = np.empty((n_blocks, W.size))
    db_parts = np.empty((n_blocks, C))
    dx = np.empty_like(x) if need_dx else np.zeros(1, dtype=x.dtype)
    df, xf, Wf, dxf = d.reshape(-1), x.reshape(-1), W.reshape(-1), dx.reshape(-1)

    def task(k: int) -> None:
        _backward(df, xf, Wf, k * BLOCK, min(N, (k + 1) * BLOCK), C, H, Wd, *cache.dims, need_dx, dxf,
                  dW_parts[k], db_parts[k])

    threads.run_blocks(task, n_blocks)
    dW, db = dW_parts[0].copy(), db_parts[0].copy()
    for k in range(1, n_blocks):  # block order: the same sums whatever thread ran each block
        dW += dW_parts[k]
        db += db_parts[k]
    return (dx if need_dx else None), dW.astype(x.dtype).reshape(W.shape), db.astype(x.dtype)

