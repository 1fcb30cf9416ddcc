"""The Numba kernels of the blocked implicit-GEMM convolution (:mod:`.conv` drives them).

Layouts as :mod:`.conv`'s docstring: ``col_b: (K, nb*L)`` with channel-major rows, GEMM output ``(F, nb*L)``,
every array passed flat.  ``_im2col_block``/``_col2im_block`` build and scatter a block's columns,
``_epilogue`` adds the bias (and ReLU) into ``y``, ``_gather_dout*`` lay a block's output gradient out as
``dmat`` with its bias-gradient partial; the ``*_share`` kernels run a thread's whole share of blocks,
calling NumPy's OpenBLAS through :mod:`.blas`.
"""

from __future__ import annotations

import numpy as np

from . import blas
from ._jit import jit, jit_sum

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
                    v = outf[src + l] + bf
                    yf[dst + l] = zero if v <= zero else v  # NaN stays NaN, as np.maximum
            else:
                for l in range(np.uint64(L)):
                    yf[dst + l] = outf[src + l] + bf


@jit_sum
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


# ----------------------------------------------------------------------------------- whole shares

# With :mod:`.blas` available, each thread runs its share of blocks (``first, first + step, ...``) in one
# compiled call: the GIL is taken once per thread per op instead of several times per block.

@jit
def _forward_product(xf, Wf, n0, m, C, H, W, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, colf,
                     outf):  # pragma: no cover - compiled
    """A block's forward product: its columns, then ``out = Wm @ col`` (flat ``(F, m*L)``)."""
    K = C * KH * KW
    L = OH * OW
    _im2col_block(xf, C, H, W, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, colf)
    blas.gemm(False, False, F, m * L, K, Wf, K, colf, m * L, outf, m * L)


@jit
def _forward_share(xf, Wf, bias, has_bias, relu, N, nb_max, first, step, C, H, W, F, KH, KW, sh, sw, ph, pw,
                   dh, dw, OH, OW, colf, outf, yf):  # pragma: no cover - compiled
    """Conv forward of blocks ``first, first + step, ...``: :func:`_forward_product`, then :func:`_epilogue`."""
    for k in range(first, (N + nb_max - 1) // nb_max, step):
        n0 = k * nb_max
        m = min(nb_max, N - n0)
        _forward_product(xf, Wf, n0, m, C, H, W, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, colf, outf)
        _epilogue(outf, bias, has_bias, relu, F, OH * OW, n0, m, yf)


@jit
def _backward_products(xf, Wf, k, n0, m, C, H, W, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dmatf, colf,
                       dcolf, dwt_parts, need_dx, dxf):  # pragma: no cover - compiled
    """A block's products once its ``dmat`` is filled: ``dW_k^T = col @ dmat^T``, ``dx`` via ``Wm^T @ dmat``."""
    K = C * KH * KW
    L = OH * OW
    _im2col_block(xf, C, H, W, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, colf)
    blas.gemm(False, True, K, F, m * L, colf, m * L, dmatf, m * L, dwt_parts[k], F)
    if need_dx:
        blas.gemm(True, False, K, m * L, F, Wf, K, dmatf, m * L, dcolf, m * L)
        _col2im_block(dcolf, C, H, W, n0, m, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dxf)


@jit
def _backward_share(xf, Wf, doutf, yf, relu, N, nb_max, first, step, C, H, W, F, KH, KW, sh, sw, ph, pw, dh, dw,
                    OH, OW, dmatf, colf, dcolf, dwt_parts, db_parts, need_dx, dxf):  # pragma: no cover - compiled
    """Conv backward of blocks ``first, first + step, ...`` (``relu``: through a fused ReLU, ``yf`` its output)."""
    L = OH * OW
    for k in range(first, (N + nb_max - 1) // nb_max, step):
        n0 = k * nb_max
        m = min(nb_max, N - n0)
        if relu:
            _gather_dout_relu(doutf, yf, F, L, n0, m, dmatf, db_parts[k])
        else:
            _gather_dout(doutf, F, L, n0, m, dmatf, db_parts[k])
        _backward_products(xf, Wf, k, n0, m, C, H, W, F, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dmatf, colf,
                           dcolf, dwt_parts, need_dx, dxf)


@jit_sum
def _gather_dout_relu(doutf, yf, F, L, n0, nb, dmatf, dbias):  # pragma: no cover - compiled
    """:func:`_gather_dout` of ``dout * (y > 0)`` (the gradient through a fused ReLU)."""
    ncol = nb * L
    zero = dmatf.dtype.type(0)
    for f in range(F):
        acc = 0.0
        for s in range(nb):
            src = np.uint64(((n0 + s) * F + f) * L)
            dst = np.uint64(f * ncol + s * L)
            for l in range(np.uint64(L)):
                v = doutf[src + l] if yf[src + l] > zero else zero
                dmatf[dst + l] = v
                acc += v
        dbias[f] = acc
