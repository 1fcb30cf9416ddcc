"""Conv -> ReLU -> MaxPool in one pass per sample (the fast implementation of the fused op).

The convolution runs sample by sample as in :mod:`.conv`; a sample's GEMM output ``(F, L)`` goes
straight through bias, ReLU and max pooling (Numba) into the pooled output, so the full-size conv
output is never stored.  The cache keeps the input, the pooled output and each window's first-max
index; the backward routes ``dout`` to the first maximum where the pooled value is positive (ReLU's
gradient) to build the sample's ``dmat``, then runs the convolution's backward.

Results equal Conv2D -> ReLU -> MaxPool2D on this kernel set bit for bit (same GEMMs, same sums);
the window index may differ from unfused pooling's only in windows whose maximum is <= 0, where the
gradient is zero either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._jit import jit
from .conv import ConvPlan, backward_blocks, conv_eligible, forward_samples, make_plan, products_python, scratch
from .conv_kernels import _build_rows, _sample_backward, _tap_products
from .pool import first_max4, pool_eligible

__all__ = ["FusedCache", "fused_backward", "fused_eligible", "fused_forward"]


@jit
def _pool_epilogue(outf, b, has_bias, F, OH, OW, KH, KW, sh, sw, ph, pw, POH, POW, n0, nb,
                   yf, idxf):  # pragma: no cover - compiled
    """out (flat (F, nb*OH*OW)) + b -> ReLU -> max pool -> y, idx (flat (N, F, POH, POW))."""
    L = OH * OW
    ncol = nb * L
    neg = -np.inf
    zero = yf.dtype.type(0)
    if KH == 2 and KW == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and 2 * POH <= OH and 2 * POW <= OW:
        for s in range(nb):  # the common 2x2 tiling: no bounds checks, unrolled window
            for f in range(F):
                bf = b[f] if has_bias else zero
                plane = f * ncol + s * L
                obase = ((n0 + s) * F + f) * POH * POW
                for oh in range(POH):
                    r0 = plane + 2 * oh * OW
                    for ow in range(POW):
                        k = np.uint64(r0 + 2 * ow)
                        best, arg = first_max4(outf[k] + bf, outf[k + 1] + bf, outf[k + OW] + bf,
                                               outf[k + OW + 1] + bf)
                        o = np.uint64(obase + oh * POW + ow)
                        yf[o] = zero if best <= zero else best
                        idxf[o] = arg
        return
    for s in range(nb):
        for f in range(F):
            bf = b[f] if has_bias else zero
            plane = f * ncol + s * L
            obase = ((n0 + s) * F + f) * POH * POW
            for oh in range(POH):
                h0 = oh * sh - ph
                for ow in range(POW):
                    w0 = ow * sw - pw
                    best = neg
                    arg = 0
                    t = 0
                    for i in range(KH):
                        h = h0 + i
                        inside_h = 0 <= h < OH
                        for j in range(KW):
                            w = w0 + j
                            if inside_h and 0 <= w < OW:
                                v = outf[np.uint64(plane + h * OW + w)] + bf
                                if v > best or t == 0 or (v != v and best == best):  # NaN propagates
                                    best = v
                                    arg = t
                            t += 1
                    o = np.uint64(obase + oh * POW + ow)
                    yf[o] = zero if best <= zero else best  # ReLU; NaN stays NaN
                    idxf[o] = arg


@jit
def _pool_fill(doutf, yf, idxf, F, OH, OW, KW, sh, sw, ph, pw, POH, POW, n0, nb, dmatf,
               dbias):  # pragma: no cover - compiled
    """dmat (flat (F, nb*OH*OW)) = dout routed to each window's first max where y > 0; dbias += its sums."""
    L = OH * OW
    ncol = nb * L
    zero = dmatf.dtype.type(0)
    for k in range(np.uint64(F * ncol)):
        dmatf[k] = zero
    for f in range(F):
        acc = 0.0
        for s in range(nb):
            plane = f * ncol + s * L
            obase = ((n0 + s) * F + f) * POH * POW
            for oh in range(POH):
                for ow in range(POW):
                    o = np.uint64(obase + oh * POW + ow)
                    if not yf[o] > zero:
                        continue
                    t = idxf[o]
                    h = oh * sh - ph + t // KW
                    w = ow * sw - pw + t % KW
                    v = doutf[o]
                    dmatf[np.uint64(plane + h * OW + w)] += v
                    acc += v
        dbias[f] += acc


@jit
def _forward_share(xf, Wp, offsets, bias, has_bias, N, first, step, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OH, OW,
                   Q, phases, PKH, PKW, psh, psw, pph, ppw, POH, POW, rowsf, outf, yf,
                   idxf):  # pragma: no cover - compiled
    """Fused forward of samples ``first, first + step, ...``: the conv products, then :func:`_pool_epilogue`."""
    KK = C * KW
    ncol = phases.shape[0] * Q * OW
    for n in range(first, N, step):
        _build_rows(xf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, rowsf)
        _tap_products(Wp, rowsf, ncol, offsets, F, KK, L, outf)
        _pool_epilogue(outf, bias, has_bias, F, OH, OW, PKH, PKW, psh, psw, pph, ppw, POH, POW, n, 1, yf, idxf)


@jit
def _backward_share(xf, Wp, offsets, doutf, yf, idxf, N, G, first, step, F, L, C, H, W, KW, sh, sw, ph, pw, dw,
                    OH, OW, Q, phases, PKW, psh, psw, pph, ppw, POH, POW, dmatf, rowsf, drowsf, parts, db_parts,
                    need_dx, dxf):  # pragma: no cover - compiled
    """Fused backward of blocks of ``G`` samples ``first, first + step, ...``: :func:`_pool_fill`, then the
    conv's per-sample backward."""
    for k in range(first, (N + G - 1) // G, step):
        db_parts[k, :] = 0.0
        for n in range(k * G, min(N, k * G + G)):
            _pool_fill(doutf, yf, idxf, F, OH, OW, PKW, psh, psw, pph, ppw, POH, POW, n, 1, dmatf, db_parts[k])
            _sample_backward(xf, Wp, offsets, dmatf, n, n > k * G, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q,
                             phases, rowsf, drowsf, parts[k], need_dx, dxf)


@dataclass(frozen=True)
class FusedCache:
    x: np.ndarray          # conv input (N, C, H, W)
    Wp: np.ndarray         # the packed weights (ConvPlan.pack)
    plan: ConvPlan
    geometry: Any          # the pooling's PoolGeometry
    y: np.ndarray          # pooled output (N, F, POH, POW)
    argmax: np.ndarray     # (N, F, POH, POW) first-max tap index


def fused_eligible(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any, geometry: Any,
                   *args: Any, **kwargs: Any) -> bool:
    """The convolution is eligible on this set and the pooling has a non-empty output."""
    if args or kwargs or not conv_eligible(x, W, b, stride, padding, dilation):
        return False
    return pool_eligible(x, geometry) and min(geometry.out) > 0


def fused_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None, stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int], geometry: Any) -> tuple[np.ndarray, FusedCache]:
    """y = max_pool(relu(conv(x, W) + b)): (N, F, POH, POW)."""
    x = np.ascontiguousarray(x)
    p = make_plan(x, W, stride, padding, dilation)
    Wp = p.pack(W)
    g = geometry
    taps = g.kernel[0] * g.kernel[1]
    y = np.empty((p.N, p.F, *g.out), dtype=x.dtype)
    idx = np.empty((p.N, p.F, *g.out), dtype=np.int8 if taps <= 127 else np.int32)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    xf, yf, idxf = x.reshape(-1), y.reshape(-1), idx.reshape(-1)
    dims = (*g.kernel, *g.stride, *g.padding, *g.out)

    def share(first: int, step: int) -> None:
        _forward_share(xf, Wp, p.offsets, bias, b is not None, p.N, first, step, p.F, p.L, p.C, p.H, p.W, p.KW,
                       p.sh, p.sw, p.ph, p.pw, p.dw, p.OH, p.OW, p.Q, p.phases, *dims,
                       scratch("rows", (p.KK * p.ncol,), x.dtype), scratch("out", (p.F * p.L,), x.dtype), yf, idxf)

    def sample(n: int) -> None:
        out = scratch("out", (p.F, p.L), x.dtype)
        products_python(x, Wp, p, n, out)
        _pool_epilogue(out.reshape(-1), bias, b is not None, p.F, p.OH, p.OW, *dims, n, 1, yf, idxf)

    forward_samples(p, share, sample)
    return y, FusedCache(x, Wp, p, g, y, idx)


def fused_backward(dout: np.ndarray, cache: FusedCache,
                   need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)`` of the fused block (dx None when ``need_dx`` is False)."""
    p, g, x = cache.plan, cache.geometry, cache.x
    df = np.ascontiguousarray(dout, dtype=x.dtype).reshape(-1)
    yf, idxf = cache.y.reshape(-1), cache.argmax.reshape(-1)
    dims = (g.kernel[1], *g.stride, *g.padding, *g.out)

    def share(first: int, step: int, parts: np.ndarray, db_parts: np.ndarray, dxf: np.ndarray) -> None:
        _backward_share(x.reshape(-1), cache.Wp, p.offsets, df, yf, idxf, p.N, p.group, first, step, p.F, p.L, p.C,
                        p.H, p.W, p.KW, p.sh, p.sw, p.ph, p.pw, p.dw, p.OH, p.OW, p.Q, p.phases, *dims,
                        scratch("dmat", (p.F * p.L,), x.dtype), scratch("rows", (p.KK * p.ncol,), x.dtype),
                        scratch("drows", (p.KK * p.ncol,), x.dtype), parts, db_parts, need_dx, dxf)

    def fill(n: int, db_part: np.ndarray) -> np.ndarray:
        dmat = scratch("dmat", (p.F * p.L,), x.dtype)
        _pool_fill(df, yf, idxf, p.F, p.OH, p.OW, *dims, n, 1, dmat, db_part)
        return dmat.reshape(p.F, p.L)

    return backward_blocks(x, cache.Wp, p, share, fill, need_dx)
