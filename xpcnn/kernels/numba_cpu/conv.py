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
in block order, so the result does not depend on the thread count.  Where :mod:`.blas` found NumPy's
OpenBLAS, the GEMMs are called from inside Numba and each thread runs its share of blocks (``t, t + n,
...``) in one compiled call (the share kernels of :mod:`.conv_kernels`): the GIL is taken once per thread
per op instead of several times per block, which is what kept a second thread from helping on small
layers.  Otherwise each block is driven from Python with ``np.matmul``; the results are the same bits.

The forward cache holds ``x`` and
``W`` (no column matrix).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import blas, threads
from .conv_kernels import (
    _backward_share,
    _col2im_block,
    _epilogue,
    _forward_share,
    _gather_dout,
    _gather_dout_relu,
    _im2col_block,
)

__all__ = ["ConvCache", "ConvPlan", "backward_blocks", "conv2d_backward", "conv2d_forward", "conv_eligible",
           "forward_blocks", "make_plan", "plan_block"]

#: bytes of column matrix per block the block size aims at (an L2-sized working set)
BLOCK_BYTES = 768 * 1024
MAX_BLOCK = 16
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


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

class ConvPlan(NamedTuple):
    """A convolution's sizes and blocking: ``x: (N, C, H, W)``, ``W: (F, C, KH, KW)`` -> ``(N, F, OH, OW)``."""

    N: int
    C: int
    H: int
    W: int
    F: int
    KH: int
    KW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    OH: int
    OW: int
    block: int  # samples per block

    @property
    def K(self) -> int:
        return self.C * self.KH * self.KW

    @property
    def L(self) -> int:
        return self.OH * self.OW

    def taps(self) -> tuple[int, ...]:
        """The geometry arguments of the im2col/col2im kernels, after ``(C, H, W, n0, nb)``."""
        return (self.KH, self.KW, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw, self.OH, self.OW)


def plan_block(N: int, K: int, L: int, itemsize: int, F: int = 0) -> int:
    """Samples per block: as many as keep the block's columns ``(K, nb*L)`` and GEMM output ``(F, nb*L)``
    near :data:`BLOCK_BYTES` together."""
    per_sample = max(1, (K + F) * L * itemsize)
    return max(1, min(N, MAX_BLOCK, BLOCK_BYTES // per_sample))


def make_plan(x: np.ndarray, W: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int]) -> ConvPlan:
    N, C, H, Wd = x.shape
    F, _, KH, KW = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    nb = plan_block(N, C * KH * KW, OH * OW, x.dtype.itemsize, F)
    return ConvPlan(N, C, H, Wd, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, nb)


#: whether ops run each thread's blocks in one compiled call (needs :mod:`.blas`); tests switch it off
#: to check the per-block path, which is used where NumPy's BLAS cannot be called from Numba
WHOLE_SHARES = blas.AVAILABLE

#: ``share(first, step, col, out)``: run blocks ``first, first + step, ...`` with the thread's scratch
ForwardShare = Callable[[int, int, np.ndarray, np.ndarray], None]


def forward_blocks(x: np.ndarray, W: np.ndarray, plan: ConvPlan,
                   epilogue: Callable[[int, int, np.ndarray], None], share: ForwardShare | None = None) -> None:
    """For every block: columns (Numba), ``out = Wm @ col`` (BLAS), then ``epilogue(n0, nb, out)``.

    ``out: (F, nb*L)``, column ``s*L + l`` for sample ``n0 + s`` and output pixel ``l``.  With
    :data:`WHOLE_SHARES`, ``share`` does the same for a thread's whole share of blocks in one call.
    """
    p = plan
    K, L = p.K, p.L
    n_blocks = -(-p.N // p.block)
    if share is not None and WHOLE_SHARES:
        def run_share(first: int, step: int) -> None:
            share(first, step, _scratch("col", (K * p.block * L,), x.dtype),
                  _scratch("out", (p.F * p.block * L,), x.dtype))

        threads.hold_blas()
        threads.run_shares(run_share, n_blocks)
        return
    Wm = W.reshape(p.F, K)
    xf = x.reshape(-1)

    def block(k: int) -> None:
        n0 = k * p.block
        m = min(p.block, p.N - n0)
        col = _scratch("col", (K, m * L), x.dtype)
        _im2col_block(xf, p.C, p.H, p.W, n0, m, *p.taps(), col.reshape(-1))
        out = _scratch("out", (p.F, m * L), x.dtype)
        np.matmul(Wm, col, out=out)
        epilogue(n0, m, out)

    threads.hold_blas()
    threads.run_blocks(block, n_blocks)


#: ``share(first, step, dmat, col, dcol, dwt_parts, db_parts, dxf)`` (``dxf`` a 1-element dummy without dx)
BackwardShare = Callable[..., None]


def backward_blocks(x: np.ndarray, W: np.ndarray, plan: ConvPlan,
                    fill: Callable[[int, int, np.ndarray, np.ndarray], None],
                    need_dx: bool, share: BackwardShare | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)`` where ``fill(n0, nb, dmat, db_part)`` writes the block's output gradient as
    ``dmat: (F, nb*L)`` and its bias-gradient partial ``db_part: (F,)`` (float64).  With
    :data:`WHOLE_SHARES`, ``share`` runs a thread's whole share of blocks (fill and products) in one call."""
    p = plan
    K, L, F = p.K, p.L, p.F
    dtype = x.dtype
    n_blocks = -(-p.N // p.block)
    WmT = W.reshape(F, K).T
    dWt_parts = np.empty((n_blocks, K, F), dtype=dtype)  # dW^T per block: col @ dmat^T is the faster GEMM
    db_parts = np.empty((n_blocks, F), dtype=np.float64)
    dx = np.empty((p.N, p.C, p.H, p.W), dtype=dtype) if need_dx else None
    xf = x.reshape(-1)
    dxf = dx.reshape(-1) if dx is not None else None

    if share is not None and WHOLE_SHARES:
        dx_target = dxf if dxf is not None else np.zeros(1, dtype=dtype)

        def run_share(first: int, step: int) -> None:
            size = p.block * L
            share(first, step, _scratch("dmat", (F * size,), dtype), _scratch("col", (K * size,), dtype),
                  _scratch("dcol", (K * size,), dtype), dWt_parts, db_parts, dx_target)

        threads.hold_blas()
        threads.run_shares(run_share, n_blocks)
        return dx, _dw_from_parts(dWt_parts, p), _sum_blocks(db_parts).astype(dtype)

    def block(k: int) -> None:
        n0 = k * p.block
        m = min(p.block, p.N - n0)
        dmat = _scratch("dmat", (F, m * L), dtype)
        fill(n0, m, dmat, db_parts[k])
        col = _scratch("col", (K, m * L), dtype)
        _im2col_block(xf, p.C, p.H, p.W, n0, m, *p.taps(), col.reshape(-1))
        np.matmul(col, dmat.T, out=dWt_parts[k])
        if dxf is not None:
            dcol = _scratch("dcol", (K, m * L), dtype)
            np.matmul(WmT, dmat, out=dcol)
            _col2im_block(dcol.reshape(-1), p.C, p.H, p.W, n0, m, *p.taps(), dxf)

    threads.hold_blas()
    threads.run_blocks(block, n_blocks)
    return dx, _dw_from_parts(dWt_parts, p), _sum_blocks(db_parts).astype(dtype)


def _dw_from_parts(dWt_parts: np.ndarray, p: ConvPlan) -> np.ndarray:
    """dW: (F, C, KH, KW) from the per-block partials of dW^T, added in block order."""
    return np.ascontiguousarray(_sum_blocks(dWt_parts).T).reshape(p.F, p.C, p.KH, p.KW)


def _sum_blocks(parts: np.ndarray) -> np.ndarray:
    """Add the per-block partials in block order (fixed, whatever the thread count)."""
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        total += parts[k]
    return total


@dataclass(frozen=True)
class ConvCache:
    """What the backward needs: the input (columns are recomputed), the weights, the plan."""

    x: np.ndarray                 # (N, C, H, W), C-contiguous
    W: np.ndarray                 # (F, C, KH, KW), C-contiguous
    plan: ConvPlan
    y: np.ndarray | None = None   # the output when ReLU was fused in (its sign masks dout)


def _as_pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, int) for a in v):
        return int(v[0]), int(v[1])
    return None


def conv_eligible(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any, *args: Any, **kwargs: Any) -> bool:
    """NumPy float32/float64, matching dtypes, ungrouped or depthwise (``groups == C == F``), a non-empty
    output; anything else (other grouped convolutions included) uses the reference."""
    if args or any(k not in ("groups",) for k in kwargs):
        return False
    if type(x) is not np.ndarray or type(W) is not np.ndarray or (b is not None and type(b) is not np.ndarray):
        return False
    if x.dtype not in FLOATS or W.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        return False
    groups = kwargs.get("groups", 1)
    if x.ndim != 4 or W.ndim != 4 or x.shape[0] == 0 or W.shape[0] == 0 or type(groups) is not int:
        return False
    if groups != 1 and not (groups == x.shape[1] == W.shape[0] and W.shape[1] == 1):
        return False
    if groups == 1 and x.shape[1] != W.shape[1]:
        return False
    s, p, d = _as_pair(stride), _as_pair(padding), _as_pair(dilation)
    if s is None or p is None or d is None or min(s) < 1 or min(d) < 1 or min(p) < 0:
        return False
    oh = (x.shape[2] + 2 * p[0] - d[0] * (W.shape[2] - 1) - 1) // s[0] + 1
    ow = (x.shape[3] + 2 * p[1] - d[1] * (W.shape[3] - 1) - 1) // s[1] + 1
    return oh > 0 and ow > 0


def conv2d_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], relu: bool = False,
                   groups: int = 1) -> tuple[np.ndarray, ConvCache]:
    """y: (N, F, OH, OW) = conv(x, W) + b (then ReLU if ``relu``); the cache for :func:`conv2d_backward`.

    ``groups=C`` (depthwise, one filter per channel; no fused ReLU) runs :mod:`.depthwise`'s loops."""
    if groups != 1:
        from .depthwise import depthwise_forward

        if relu:
            raise ValueError("the fused ReLU is for ungrouped convolutions")
        return depthwise_forward(x, W, b, stride, padding, dilation)  # type: ignore[return-value]
    x, W = np.ascontiguousarray(x), np.ascontiguousarray(W)
    p = make_plan(x, W, stride, padding, dilation)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    y = np.empty((p.N, p.F, p.OH, p.OW), dtype=x.dtype)
    yf = y.reshape(-1)

    def epilogue(n0: int, m: int, out: np.ndarray) -> None:
        _epilogue(out.reshape(-1), bias, b is not None, relu, p.F, p.L, n0, m, yf)

    def share(first: int, step: int, col: np.ndarray, out: np.ndarray) -> None:
        _forward_share(x.reshape(-1), W.reshape(-1), bias, b is not None, relu, p.N, p.block, first, step, p.C,
                       p.H, p.W, p.F, *p.taps(), col, out, yf)

    forward_blocks(x, W, p, epilogue, share)
    return y, ConvCache(x, W, p, y if relu else None)


def conv2d_backward(dout: np.ndarray, cache: Any,
                    need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``; dx: (N, C, H, W) or None (``need_dx`` False), dW: (F, C, KH, KW), db: (F,)."""
    if not isinstance(cache, ConvCache):  # a depthwise forward's cache
        from .depthwise import depthwise_backward

        return depthwise_backward(dout, cache, need_dx)
    p = cache.plan
    df = np.ascontiguousarray(dout, dtype=cache.x.dtype).reshape(-1)
    yf = cache.y.reshape(-1) if cache.y is not None else None

    def fill(n0: int, m: int, dmat: np.ndarray, db_part: np.ndarray) -> None:
        if yf is None:
            _gather_dout(df, p.F, p.L, n0, m, dmat.reshape(-1), db_part)
        else:
            _gather_dout_relu(df, yf, p.F, p.L, n0, m, dmat.reshape(-1), db_part)

    def share(first: int, step: int, dmat: np.ndarray, col: np.ndarray, dcol: np.ndarray, dwt_parts: np.ndarray,
              db_parts: np.ndarray, dxf: np.ndarray) -> None:
        _backward_share(cache.x.reshape(-1), cache.W.reshape(-1), df, yf if yf is not None else df, yf is not None,
                        p.N, p.block, first, step, p.C, p.H, p.W, p.F, *p.taps(), dmat, col, dcol, dwt_parts,
                        db_parts, need_dx, dxf)

    return backward_blocks(cache.x, cache.W, p, fill, need_dx, share)
