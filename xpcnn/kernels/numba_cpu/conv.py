"""Convolution as a blocked implicit GEMM: Numba builds each block's columns, BLAS multiplies, Numba scatters.

Conventions as :mod:`xpcnn.functional.conv` (``x: (N, C, H, W)``, ``W: (F, C, KH, KW)``, PyTorch's output
size), but the work is split into blocks of ``nb`` samples (about 8, chosen so a block's column
matrix stays in L2), and the column rows are channel-major so ``W`` needs no permutation:

    col_b: (K, nb*L)   K = C*KH*KW (row = (c*KH + i)*KW + j),  L = OH*OW (column = s*L + oh*OW + ow)
    Wm = W.reshape(F, K)

Per block (one BLAS GEMM per product):

    forward   out = Wm @ col_b           -> epilogue (Numba): y[n0+s, f, l] = out[f, s*L + l] + b[f] (ReLU optional)
    backward  dmat = dout block as (F, nb*L) (Numba gather, also the block's bias-gradient partial)
              dW_b^T = col_b @ dmat^T    (col_b recomputed, not stored)
              dcol = Wm^T @ dmat         -> col2im (Numba) straight into dx[n0 : n0+nb]

Blocks run on the worker threads of :mod:`.threads`; ``dW`` and ``db`` are the per-block partials added
in block order, so the result does not depend on the thread count.  The forward cache holds ``x`` and
``W`` (no column matrix).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import threads
from ._jit import jit

__all__ = ["ConvCache", "conv2d_backward", "conv2d_forward", "conv_eligible", "plan_block"]

#: bytes of column matrix per block the block size aims at (an L2-sized working set)
BLOCK_BYTES = 768 * 1024
MAX_BLOCK = 16
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------- Numba kernels

# Kernels index flat arrays with unsigned (uint64) offsets: Numba skips its negative-index wraparound
# for unsigned indices, which lets LLVM vectorise the row copies (6x faster than 4-D signed indexing).
# Offsets are computed as int64 and converted once per row.

@jit
def _row_range(OW, off, sw, W):  # pragma: no cover - compiled
    """The output columns ``[lo, hi)`` whose input column ``ow*sw + off`` lies in ``[0, W)``."""
    lo = 0
    if off < 0:
        lo = min(OW, (-off + sw - 1) // sw)
    if W - 1 - off < 0:
        hi = 0
    else:
        hi = min(OW, (W - 1 - off) // sw + 1)
    return lo, max(lo, hi)


@jit
def _im2col_block(xf, C, H, W, n0, nb, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, colf):  # pragma: no cover
    """x (flat (N, C, H, W)) -> col (flat (C*KH*KW, nb*OH*OW)) for samples n0 .. n0+nb-1 (zeros in padding)."""
    L = OH * OW
    ncol = nb * L
    usw = np.uint64(sw)
    zero = colf.dtype.type(0)
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                r = (c * KH + i) * KW + j
                off = j * dw - pw
                lo, hi = _row_range(OW, off, sw, W)
                for s in range(nb):
                    for oh in range(OH):
                        dst = np.uint64(r * ncol + s * L + oh * OW)
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            for ow in range(np.uint64(OW)):
                                colf[dst + ow] = zero
                            continue
                        for ow in range(np.uint64(lo)):
                            colf[dst + ow] = zero
                        src = np.uint64((((n0 + s) * C + c) * H + ih) * W + off + lo * sw)
                        d2 = dst + np.uint64(lo)
                        if sw == 1:
                            for ow in range(np.uint64(hi - lo)):
                                colf[d2 + ow] = xf[src + ow]
                        else:
                            for ow in range(np.uint64(hi - lo)):
                                colf[d2 + ow] = xf[src + ow * usw]
                        for ow in range(np.uint64(hi), np.uint64(OW)):
                            colf[dst + ow] = zero


@jit
def _col2im_block(dcolf, C, H, W, n0, nb, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dxf):  # pragma: no cover
    """The adjoint of :func:`_im2col_block`: dx[n0 : n0+nb] (flat) = scatter-add of dcol (C*KH*KW, nb*OH*OW)."""
    L = OH * OW
    ncol = nb * L
    usw = np.uint64(sw)
    zero = dxf.dtype.type(0)
    first = np.uint64(n0 * C * H * W)
    for k in range(np.uint64(nb * C * H * W)):
        dxf[first + k] = zero
    for s in range(nb):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    r = (c * KH + i) * KW + j
                    off = j * dw - pw
                    lo, hi = _row_range(OW, off, sw, W)
                    for oh in range(OH):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= H:
                            continue
                        src = np.uint64(r * ncol + s * L + oh * OW + lo)
                        dst = np.uint64((((n0 + s) * C + c) * H + ih) * W + off + lo * sw)
                        if sw == 1:
                            for ow in range(np.uint64(hi - lo)):
                                dxf[dst + ow] += dcolf[src + ow]
                        else:
                            for ow in range(np.uint64(hi - lo)):
                                dxf[dst + ow * usw] += dcolf[src + ow]


@jit
def _epilogue(outf, b, has_bias, relu, F, L, n0, nb, yf):  # pragma: no cover - compiled
    """out (flat (F, nb*L)) -> y[n0 + s, f, :] = out[f, s*L : (s+1)*L] (+ b[f]), then max(., 0) if relu."""
    ncol = nb * L
    zero = yf.dtype.type(0)
    for s in range(nb):
        for f in range(F):
            bf = b[f] if has_bias else zero
            src = np.uint64(f * ncol + s * L)
            dst = np.uint64(((n0 + s) * F + f) * L)
            if relu:
                for l in range(np.uint64(L)):
                    yf[dst + l] = max(outf[src + l] + bf, zero)
            else:
                for l in range(np.uint64(L)):
                    yf[dst + l] = outf[src + l] + bf


@jit
def _gather_dout(doutf, F, L, n0, nb, dmatf, dbias):  # pragma: no cover - compiled
    """dout (flat (N, F, L)) -> dmat (flat (F, nb*L)) for samples n0 .. n0+nb-1; dbias[f] = their sum (float64)."""
    ncol = nb * L
    for f in range(F):
        acc = 0.0
        for s in range(nb):
            src = np.uint64(((n0 + s) * F + f) * L)
            dst = np.uint64(f * ncol + s * L)
            for l in range(np.uint64(L)):
                v = doutf[src + l]
                dmatf[dst + l] = v
                acc += v
        dbias[f] = acc


# ----------------------------------------------------------------------------------- block buffers

_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch array of ``shape`` (reused across calls; grows, never shrinks)."""
    size = 1
    for d in shape:
        size *= d
    key = (name, dtype)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, 1), dtype=dtype)
    return buf[:size].reshape(shape)


# ----------------------------------------------------------------------------------- the op

@dataclass(frozen=True)
class ConvCache:
    """What the backward needs: the input (columns are recomputed), the weights, the geometry, the blocking."""

    x: np.ndarray                 # (N, C, H, W), C-contiguous
    W: np.ndarray                 # (F, C, KH, KW), C-contiguous
    has_bias: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]          # (OH, OW)
    block: int                    # samples per block
    relu: bool = False            # the forward applied ReLU to its output (fused epilogue)
    y: np.ndarray | None = None   # the output, kept when relu (its sign masks dout)


def plan_block(N: int, K: int, L: int, itemsize: int) -> int:
    """Samples per block: as many as keep the block's ``(K, nb*L)`` columns near :data:`BLOCK_BYTES`."""
    per_sample = max(1, K * L * itemsize)
    return max(1, min(N, MAX_BLOCK, BLOCK_BYTES // per_sample))


def _as_pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, int) for a in v):
        return int(v[0]), int(v[1])
    return None


def conv_eligible(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any, *args: Any, **kwargs: Any) -> bool:
    """NumPy float32/float64, matching dtypes, ungrouped, a non-empty output; anything else uses the reference."""
    if args or any(k not in ("groups",) for k in kwargs) or kwargs.get("groups", 1) != 1:
        return False
    if type(x) is not np.ndarray or type(W) is not np.ndarray or (b is not None and type(b) is not np.ndarray):
        return False
    if x.dtype not in FLOATS or W.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        return False
    if x.ndim != 4 or W.ndim != 4 or x.shape[1] != W.shape[1] or x.shape[0] == 0 or W.shape[0] == 0:
        return False
    s, p, d = _as_pair(stride), _as_pair(padding), _as_pair(dilation)
    if s is None or p is None or d is None or min(s) < 1 or min(d) < 1 or min(p) < 0:
        return False
    oh = (x.shape[2] + 2 * p[0] - d[0] * (W.shape[2] - 1) - 1) // s[0] + 1
    ow = (x.shape[3] + 2 * p[1] - d[1] * (W.shape[3] - 1) - 1) // s[1] + 1
    return oh > 0 and ow > 0


def conv2d_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], relu: bool = False,
                   **_: Any) -> tuple[np.ndarray, ConvCache]:
    """y: (N, F, OH, OW) = conv(x, W) + b (then ReLU if ``relu``); the cache for :func:`conv2d_backward`."""
    x = np.ascontiguousarray(x)
    W = np.ascontiguousarray(W)
    N, C, H, Wd = x.shape
    F, _, KH, KW = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    K, L = C * KH * KW, OH * OW
    nb = plan_block(N, K, L, x.dtype.itemsize)
    n_blocks = -(-N // nb)
    Wm = W.reshape(F, K)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    y = np.empty((N, F, L), dtype=x.dtype)
    xf, yf = x.reshape(-1), y.reshape(-1)

    def block(k: int) -> None:
        n0 = k * nb
        m = min(nb, N - n0)
        col = _scratch("col", (K, m * L), x.dtype)
        _im2col_block(xf, C, H, Wd, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, col.reshape(-1))
        out = _scratch("out", (F, m * L), x.dtype)
        np.matmul(Wm, col, out=out)
        _epilogue(out.reshape(-1), bias, b is not None, relu, F, L, n0, m, yf)

    with threads.blas_single_thread():
        threads.run_blocks(block, n_blocks)
    y4 = y.reshape(N, F, OH, OW)
    cache = ConvCache(x, W, b is not None, tuple(stride), tuple(padding), tuple(dilation), (OH, OW), nb, relu,
                      y4 if relu else None)
    return y4, cache


@jit
def _relu_mask(dout, y, out):  # pragma: no cover - compiled
    """out = dout where y > 0, else 0 (flat arrays)."""
    for k in range(dout.size):
        out[k] = dout[k] if y[k] > 0.0 else 0.0


def conv2d_backward(dout: np.ndarray, cache: ConvCache,
                    need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``; dx: (N, C, H, W) or None (``need_dx`` False), dW: (F, C, KH, KW), db: (F,)."""
    x, W = cache.x, cache.W
    N, C, H, Wd = x.shape
    F, _, KH, KW = W.shape
    OH, OW = cache.out
    (sh, sw), (ph, pw), (dh, dw) = cache.stride, cache.padding, cache.dilation
    K, L = C * KH * KW, OH * OW
    dtype = x.dtype
    d3 = np.ascontiguousarray(dout, dtype=dtype).reshape(N, F, L)
    if cache.relu:
        masked = np.empty_like(d3)
        _relu_mask(d3.reshape(-1), cache.y.reshape(-1), masked.reshape(-1))
        d3 = masked
    nb = cache.block
    n_blocks = -(-N // nb)
    Wm = W.reshape(F, K)
    WmT = Wm.T
    dWt_parts = np.empty((n_blocks, K, F), dtype=dtype)  # dW^T per block: col @ dmat^T is the faster GEMM
    db_parts = np.empty((n_blocks, F), dtype=np.float64)
    dx = np.empty((N, C, H, Wd), dtype=dtype) if need_dx else None
    xf, d3f = x.reshape(-1), d3.reshape(-1)
    dxf = dx.reshape(-1) if dx is not None else None

    def block(k: int) -> None:
        n0 = k * nb
        m = min(nb, N - n0)
        dmat = _scratch("dmat", (F, m * L), dtype)
        _gather_dout(d3f, F, L, n0, m, dmat.reshape(-1), db_parts[k])
        col = _scratch("col", (K, m * L), dtype)
        _im2col_block(xf, C, H, Wd, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, col.reshape(-1))
        np.matmul(col, dmat.T, out=dWt_parts[k])
        if dx is not None:
            dcol = _scratch("dcol", (K, m * L), dtype)
            np.matmul(WmT, dmat, out=dcol)
            _col2im_block(dcol.reshape(-1), C, H, Wd, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dxf)

    with threads.blas_single_thread():
        threads.run_blocks(block, n_blocks)
    dW = np.ascontiguousarray(_sum_blocks(dWt_parts).T).reshape(F, C, KH, KW)
    db = _sum_blocks(db_parts).astype(dtype)
    return dx, dW, db


def _sum_blocks(parts: np.ndarray) -> np.ndarray:
    """Add the per-block partials in block order (fixed, whatever the thread count)."""
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        total += parts[k]
    return total
