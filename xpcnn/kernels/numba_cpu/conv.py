"""Convolution as per-sample "tap-row" GEMMs: Numba lays out a sample's input rows, BLAS multiplies.

Conventions as :mod:`xpcnn.functional.conv` (``x: (N, C, H, W)``, ``W: (F, C, KH, KW)``, PyTorch's output
size).  im2col would copy every input pixel ``KH*KW`` times into a ``(C*KH*KW, OH*OW)`` matrix, and for
the small-channel layers of real nets that copy costs as much as the GEMM.  Here a sample's *rows*
matrix holds only the ``KW`` horizontal taps; the ``KH`` vertical taps are column offsets into it:

    rows: (KK, ncol)   KK = C*KW,  row (c, j) = c*KW + j,  column (s*Q + q)*OW + ow
    rows[(c, j), (s*Q + q)*OW + ow] = x[n, c, q*sh + phases[s] - ph, ow*sw + j*dw - pw]   (0 in the padding)

Tap row ``i`` reads input rows ``oh*sh + i*dh``: phase ``(i*dh) % sh`` (the row's position in the
stride), shifted by ``(i*dh) // sh`` rows, so its operand is the contiguous column range starting at
``offsets[i] = (slot(phase)*Q + shift)*OW``; ``Q = OH + max shift`` rows per phase (stride 1: one
phase, ``Q = OH + (KH-1)*dh``).  With ``Wp[i] = W[:, :, i, :]`` as ``(F, C*KW)``, per sample:

    forward   y[n] (F, L) = sum_i Wp[i] @ rows[:, offsets[i] : offsets[i] + L]     (L = OH*OW; then bias, ReLU)
    backward  dW^T[i] += rows[:, offsets[i] : offsets[i] + L] @ dout[n]^T          (rows rebuilt, not stored)
              drows[:, offsets[i] :] += Wp[i]^T @ dout[n]   -> scattered back into dx[n]

Each is one BLAS GEMM per tap row (``gemm_add`` accumulates): the GEMMs see the same operands as
im2col's would, from a rows matrix ``KH`` times smaller that stays in L1/L2.  Measured on one core
against per-block im2col (batch 128, float32): ResNet-8's 16->16 3x3 conv on 28x28 13.4 -> 7.4 ms
forward, 18.4 -> 12.9 ms backward.  Folding the vertical taps back into the rows (im2col per sample,
one thicker GEMM) was slower for every layer of the model zoo but the 1->32 3x3 first layer (by 10%),
so there is no such mode.

Forward, each thread takes samples ``t, t + n, ...``; backward, blocks of ``group`` samples (each adds
its samples' weight gradients in sample order into its own partial; partials are added in block order),
so results do not depend on the thread count.  Where :mod:`.blas` found NumPy's OpenBLAS, each thread
runs its whole share in one compiled call; otherwise the per-sample steps are driven from Python with
``np.matmul`` (the same products, not necessarily the same bits).  The forward cache holds ``x`` and
``W`` only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import blas, threads
from .conv_kernels import (
    _add_bias_grad,
    _backward_share,
    _bias_relu,
    _build_rows,
    _forward_share,
    _mask_relu,
    _scatter_rows,
)

__all__ = ["ConvCache", "ConvPlan", "backward_blocks", "conv2d_backward", "conv2d_forward", "conv_eligible",
           "forward_samples", "make_plan", "scratch"]

#: at most this many samples per backward block (fewer for small batches, so there are ~16 blocks to share)
MAX_GROUP = 8
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
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


class ConvPlan(NamedTuple):
    """A convolution's sizes and row layout: ``x: (N, C, H, W)``, ``W: (F, C, KH, KW)`` -> ``(N, F, OH, OW)``."""

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
    Q: int               # rows of output height per phase
    phases: np.ndarray   # (S,) int64: the stride phases the taps use
    offsets: np.ndarray  # (KH,) int64: each tap row's first column in the rows matrix
    group: int           # samples per backward block

    @property
    def L(self) -> int:
        return self.OH * self.OW

    @property
    def KK(self) -> int:
        """Rows of the rows matrix."""
        return self.C * self.KW

    @property
    def ncol(self) -> int:
        """Columns of the rows matrix."""
        return len(self.phases) * self.Q * self.OW

    def geom(self) -> tuple[Any, ...]:
        """The geometry arguments of the row kernels, after ``n``."""
        return (self.C, self.H, self.W, self.KW, self.sh, self.sw, self.ph, self.pw, self.dw, self.OW, self.Q,
                self.phases)

    def pack(self, W: np.ndarray) -> np.ndarray:
        """``W: (F, C, KH, KW)`` -> ``Wp`` flat ``(KH, F, C*KW)``: ``Wp[i, f, c*KW + j] = W[f, c, i, j]``."""
        return np.ascontiguousarray(W.transpose(2, 0, 1, 3)).reshape(-1)

    def weight_grad(self, parts: np.ndarray) -> np.ndarray:
        """dW: (F, C, KH, KW) from the per-block partials of ``dW^T`` (flat ``(KH, C, KW, F)`` each), added in
        block order."""
        total = _sum_blocks(parts).reshape(self.KH, self.C, self.KW, self.F)
        return np.ascontiguousarray(total.transpose(3, 1, 0, 2))


def make_plan(x: np.ndarray, W: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int]) -> ConvPlan:
    """The plan of ``conv(x, W)``: output size, phases, tap offsets, backward block size."""
    N, C, H, Wd = x.shape
    F, _, KH, KW = W.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    tap_phase = [(i * dh) % sh for i in range(KH)]
    tap_shift = [(i * dh) // sh for i in range(KH)]
    Q, phases = OH + max(tap_shift), sorted(set(tap_phase))
    offsets = [(phases.index(phase) * Q + shift) * OW for phase, shift in zip(tap_phase, tap_shift, strict=True)]
    group = max(1, min(MAX_GROUP, -(-N // 16)))
    return ConvPlan(N, C, H, Wd, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, Q,
                    np.array(phases, dtype=np.int64), np.array(offsets, dtype=np.int64), group)


#: whether ops run each thread's share in one compiled call (needs :mod:`.blas`); tests switch it off to
#: check the Python-driven path, which is used where NumPy's BLAS cannot be called from Numba
WHOLE_SHARES = blas.AVAILABLE


def forward_samples(p: ConvPlan, share: Callable[[int, int], None], sample: Callable[[int], None]) -> None:
    """Run the forward of every sample: ``share(first, step)`` per thread with :data:`WHOLE_SHARES`, else
    ``sample(n)`` for each ``n`` from Python."""
    threads.hold_blas()
    if WHOLE_SHARES:
        threads.run_shares(share, p.N)
        return

    def block(k: int) -> None:
        for n in range(k * p.group, min(p.N, (k + 1) * p.group)):
            sample(n)

    threads.run_blocks(block, -(-p.N // p.group))


def products_python(x: np.ndarray, Wp: np.ndarray, p: ConvPlan, n: int, out: np.ndarray) -> None:
    """``out: (F, L) = sum_t Wp[t] @ rows[:, offsets[t] : offsets[t] + L]`` for sample ``n`` with ``np.matmul``."""
    rows = scratch("rows", (p.KK, p.ncol), x.dtype)
    _build_rows(x.reshape(-1), n, *p.geom(), rows.reshape(-1))
    Wt = Wp.reshape(p.KH, p.F, p.KK)
    for t, off in enumerate(p.offsets):
        if t == 0:
            np.matmul(Wt[0], rows[:, off:off + p.L], out=out)
        else:
            out += Wt[t] @ rows[:, off:off + p.L]


#: ``share(first, step, parts, db_parts, dxf)``; ``dxf`` is a 1-element dummy without dx
BackwardShare = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], None]
#: ``fill(n, db_part) -> dmat``: sample ``n``'s output gradient as ``(F, L)``; adds its sums into ``db_part``
Fill = Callable[[int, np.ndarray], np.ndarray]


def backward_blocks(x: np.ndarray, Wp: np.ndarray, p: ConvPlan, share: BackwardShare, fill: Fill,
                    need_dx: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``: with :data:`WHOLE_SHARES` each thread runs ``share`` over its blocks, else every
    sample's ``fill`` and products run from Python."""
    dtype = x.dtype
    n_blocks = -(-p.N // p.group)
    parts = np.empty((n_blocks, p.KH * p.KK * p.F), dtype=dtype)
    db_parts = np.empty((n_blocks, p.F), dtype=np.float64)
    dx = np.empty((p.N, p.C, p.H, p.W), dtype=dtype) if need_dx else None
    dxf = dx.reshape(-1) if dx is not None else np.zeros(1, dtype=dtype)
    threads.hold_blas()
    if WHOLE_SHARES:
        threads.run_shares(lambda first, step: share(first, step, parts, db_parts, dxf), n_blocks)
    else:
        Wt = Wp.reshape(p.KH, p.F, p.KK)

        def block(k: int) -> None:
            db_parts[k] = 0.0
            part = parts[k].reshape(p.KH, p.KK, p.F)
            rows = scratch("rows", (p.KK, p.ncol), dtype)
            for n in range(k * p.group, min(p.N, (k + 1) * p.group)):
                dmat = fill(n, db_parts[k])
                _build_rows(x.reshape(-1), n, *p.geom(), rows.reshape(-1))
                for t, off in enumerate(p.offsets):
                    prod = rows[:, off:off + p.L] @ dmat.T
                    if n == k * p.group:
                        part[t] = prod
                    else:
                        part[t] += prod
                if need_dx:
                    drows = scratch("drows", (p.KK, p.ncol), dtype)
                    drows[...] = 0
                    for t, off in enumerate(p.offsets):
                        drows[:, off:off + p.L] += Wt[t].T @ dmat
                    _scatter_rows(drows.reshape(-1), n, *p.geom(), dxf)

        threads.run_blocks(block, n_blocks)
    return dx, p.weight_grad(parts), _sum_blocks(db_parts).astype(dtype)


def _sum_blocks(parts: np.ndarray) -> np.ndarray:
    """Add the per-block partials in block order (fixed, whatever the thread count)."""
    total = parts[0].copy()
    for k in range(1, parts.shape[0]):
        total += parts[k]
    return total


@dataclass(frozen=True)
class ConvCache:
    """What the backward needs: the input (rows are rebuilt), the packed weights, the plan."""

    x: np.ndarray                 # (N, C, H, W), C-contiguous
    Wp: np.ndarray                # flat (KH, F, KK): ConvPlan.pack(W)
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
    x = np.ascontiguousarray(x)
    p = make_plan(x, W, stride, padding, dilation)
    Wp = p.pack(W)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    has_bias = b is not None
    y = np.empty((p.N, p.F, p.OH, p.OW), dtype=x.dtype)
    xf, yf = x.reshape(-1), y.reshape(-1)

    def share(first: int, step: int) -> None:
        _forward_share(xf, Wp, p.offsets, bias, has_bias, relu, p.N, first, step, p.F, p.L, *p.geom(),
                       scratch("rows", (p.KK * p.ncol,), x.dtype), yf)

    def sample(n: int) -> None:
        products_python(x, Wp, p, n, y[n].reshape(p.F, p.L))
        _bias_relu(yf, n, p.F, p.L, bias, has_bias, relu)

    forward_samples(p, share, sample)
    return y, ConvCache(x, Wp, p, y if relu else None)


def conv2d_backward(dout: np.ndarray, cache: Any,
                    need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``; dx: (N, C, H, W) or None (``need_dx`` False), dW: (F, C, KH, KW), db: (F,)."""
    if not isinstance(cache, ConvCache):  # a depthwise forward's cache
        from .depthwise import depthwise_backward

        return depthwise_backward(dout, cache, need_dx)
    p, x = cache.plan, cache.x
    df = np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1)
    yf = cache.y.reshape(-1) if cache.y is not None else df
    relu = cache.y is not None

    def share(first: int, step: int, parts: np.ndarray, db_parts: np.ndarray, dxf: np.ndarray) -> None:
        _backward_share(x.reshape(-1), cache.Wp, p.offsets, df, yf, relu, p.N, p.group, first, step, p.F, p.L,
                        *p.geom(), scratch("dmat", (p.F * p.L,), x.dtype),
                        scratch("rows", (p.KK * p.ncol,), x.dtype), scratch("drows", (p.KK * p.ncol,), x.dtype),
                        parts, db_parts, need_dx, dxf)

    def fill(n: int, db_part: np.ndarray) -> np.ndarray:
        if not relu:
            _add_bias_grad(df, n, p.F, p.L, db_part)
            return df[n * p.F * p.L:(n + 1) * p.F * p.L].reshape(p.F, p.L)
        dmat = scratch("dmat", (p.F * p.L,), x.dtype)
        _mask_relu(df, yf, n, p.F, p.L, dmat, db_part)
        return dmat.reshape(p.F, p.L)

    return backward_blocks(x, cache.Wp, p, share, fill, need_dx)
