"""The Numba kernels of the tap-row convolution (:mod:`.conv` drives them; its docstring has the layouts).

Per sample ``n``: :func:`_build_rows` copies ``x[n]`` into the row matrix ``rows: (KK, ncol)``,
:func:`_tap_products` adds up one GEMM per tap row into the output, :func:`_bias_relu` finishes it in
place; backward, :func:`_sample_backward` adds the sample's weight gradient into its block's partial and
scatters ``dx[n]`` (:func:`_scatter_rows`, the adjoint of :func:`_build_rows`).  The ``*_share`` kernels run
a thread's share of samples (forward) or of blocks of samples (backward) in one compiled call, calling
NumPy's OpenBLAS through :mod:`.blas`.  Every array is passed flat.
"""

from __future__ import annotations

import numpy as np

from . import blas
from ._jit import jit, jit_sum

# Kernels index flat arrays with unsigned (uint64) offsets: Numba skips its negative-index wraparound
# for unsigned indices, which lets LLVM vectorise the row copies (6x faster than 4-D signed indexing).
# Offsets are computed as int64 and converted once per row.
#
# The geometry arguments, in this order everywhere ("geom" below):
#   C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases


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
def _build_rows(xf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, rowsf):  # pragma: no cover
    """x[n] -> rows (flat (C*KW, S*Q*OW), S = len(phases)): row ``c*KW + j``, column ``(s*Q + q)*OW + ow``
    holds ``x[n, c, q*sh + phases[s] - ph, ow*sw + j*dw - pw]`` (0 in the padding)."""
    S = phases.shape[0]
    ncol = S * Q * OW
    usw = np.uint64(sw)
    zero = rowsf.dtype.type(0)
    for c in range(C):
        for j in range(KW):
            r = c * KW + j
            off = j * dw - pw
            lo, hi = _row_range(OW, off, sw, W)
            for s in range(S):
                for q in range(Q):
                    dst = np.uint64(r * ncol + (s * Q + q) * OW)
                    ih = q * sh + phases[s] - ph
                    if ih < 0 or ih >= H:
                        for ow in range(np.uint64(OW)):
                            rowsf[dst + ow] = zero
                        continue
                    for ow in range(np.uint64(lo)):
                        rowsf[dst + ow] = zero
                    src = np.uint64(((n * C + c) * H + ih) * W + off + lo * sw)
                    d2 = dst + np.uint64(lo)
                    if sw == 1:
                        for ow in range(np.uint64(hi - lo)):
                            rowsf[d2 + ow] = xf[src + ow]
                    else:
                        for ow in range(np.uint64(hi - lo)):
                            rowsf[d2 + ow] = xf[src + ow * usw]
                    for ow in range(np.uint64(hi), np.uint64(OW)):
                        rowsf[dst + ow] = zero


@jit
def _scatter_rows(drowsf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, dxf):  # pragma: no cover
    """The adjoint of :func:`_build_rows`: dx[n] = the scatter-add of ``drows`` (dx[n] is overwritten)."""
    S = phases.shape[0]
    ncol = S * Q * OW
    usw = np.uint64(sw)
    zero = dxf.dtype.type(0)
    first = np.uint64(n * C * H * W)
    for k in range(np.uint64(C * H * W)):
        dxf[first + k] = zero
    for c in range(C):
        for j in range(KW):
            r = c * KW + j
            off = j * dw - pw
            lo, hi = _row_range(OW, off, sw, W)
            for s in range(S):
                for q in range(Q):
                    ih = q * sh + phases[s] - ph
                    if ih < 0 or ih >= H:
                        continue
                    src = np.uint64(r * ncol + (s * Q + q) * OW + lo)
                    dst = np.uint64(((n * C + c) * H + ih) * W + off + lo * sw)
                    if sw == 1:
                        for ow in range(np.uint64(hi - lo)):
                            dxf[dst + ow] += drowsf[src + ow]
                    else:
                        for ow in range(np.uint64(hi - lo)):
                            dxf[dst + ow * usw] += drowsf[src + ow]


@jit
def _tap_products(Wp, rowsf, ncol, offsets, F, KK, L, outf):  # pragma: no cover - compiled
    """out (flat (F, L)) = sum over tap rows t of ``Wp[t] @ rows[:, offsets[t] : offsets[t] + L]``
    (``Wp``: flat (KH, F, KK)), added in tap order."""
    for t in range(offsets.shape[0]):
        a = Wp[t * F * KK:]
        b = rowsf[offsets[t]:]
        if t == 0:
            blas.gemm(False, False, F, L, KK, a, KK, b, ncol, outf, L)
        else:
            blas.gemm_add(False, False, F, L, KK, a, KK, b, ncol, outf, L)


@jit
def _bias_relu(yf, n, F, L, b, has_bias, relu):  # pragma: no cover - compiled
    """y[n] (flat (N, F, L)) += b[f] per channel, then max(., 0) if ``relu`` (NaN stays NaN), in place."""
    zero = yf.dtype.type(0)
    for f in range(F):
        bf = b[f] if has_bias else zero
        base = np.uint64((n * F + f) * L)
        if relu:
            for l in range(np.uint64(L)):
                v = yf[base + l] + bf
                yf[base + l] = zero if v <= zero else v
        elif has_bias:
            for l in range(np.uint64(L)):
                yf[base + l] += bf


@jit_sum
def _add_bias_grad(doutf, n, F, L, dbias):  # pragma: no cover - compiled
    """dbias[f] += sum of dout[n, f, :] (float64)."""
    for f in range(F):
        acc = 0.0
        src = np.uint64((n * F + f) * L)
        for l in range(np.uint64(L)):
            acc += doutf[src + l]
        dbias[f] += acc


@jit_sum
def _mask_relu(doutf, yf, n, F, L, dmatf, dbias):  # pragma: no cover - compiled
    """dmat (flat (F, L)) = dout[n] * (y[n] > 0) (the gradient through a fused ReLU); dbias[f] += its sums."""
    zero = dmatf.dtype.type(0)
    for f in range(F):
        acc = 0.0
        src = np.uint64((n * F + f) * L)
        dst = np.uint64(f * L)
        for l in range(np.uint64(L)):
            v = doutf[src + l] if yf[src + l] > zero else zero
            dmatf[dst + l] = v
            acc += v
        dbias[f] += acc


@jit
def _sample_backward(xf, Wp, offsets, dmatf, n, accumulate, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases,
                     rowsf, drowsf, part, need_dx, dxf):  # pragma: no cover - compiled
    """One sample's backward from its output gradient ``dmat: (F, L)``:

    part[t] (flat (KH, KK, F)) (+)= rows[:, offsets[t] : offsets[t] + L] @ dmat^T   (dW^T of tap row t;
    overwritten unless ``accumulate``), and, with ``need_dx``, drows[:, offsets[t] :] += Wp[t]^T @ dmat,
    scattered into dx[n].
    """
    KK = C * KW
    ncol = phases.shape[0] * Q * OW
    _build_rows(xf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, rowsf)
    T = offsets.shape[0]
    for t in range(T):
        b = rowsf[offsets[t]:]
        c = part[t * KK * F:]
        if accumulate:
            blas.gemm_add(False, True, KK, F, L, b, ncol, dmatf, L, c, F)
        else:
            blas.gemm(False, True, KK, F, L, b, ncol, dmatf, L, c, F)
    if not need_dx:
        return
    if T == 1 and L == ncol:  # one product covers every column
        blas.gemm(True, False, KK, L, F, Wp, KK, dmatf, L, drowsf, ncol)
    else:
        zero = drowsf.dtype.type(0)
        for k in range(np.uint64(KK * ncol)):
            drowsf[k] = zero
        for t in range(T):
            blas.gemm_add(True, False, KK, L, F, Wp[t * F * KK:], KK, dmatf, L, drowsf[offsets[t]:], ncol)
    _scatter_rows(drowsf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, dxf)


# ----------------------------------------------------------------------------------- whole shares

# With :mod:`.blas` available, each thread runs its share in one compiled call: the GIL is taken once per
# thread per op.  Forward shares are samples ``first, first + step, ...``; backward shares are blocks of
# ``G`` samples (each block adds its samples' weight gradients, in sample order, into its own partial).

@jit
def _forward_share(xf, Wp, offsets, bias, has_bias, relu, N, first, step, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OW,
                   Q, phases, rowsf, yf):  # pragma: no cover - compiled
    """Conv forward of samples ``first, first + step, ...`` straight into y (flat (N, F, L))."""
    KK = C * KW
    ncol = phases.shape[0] * Q * OW
    for n in range(first, N, step):
        _build_rows(xf, n, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q, phases, rowsf)
        _tap_products(Wp, rowsf, ncol, offsets, F, KK, L, yf[n * F * L:])
        if has_bias or relu:
            _bias_relu(yf, n, F, L, bias, has_bias, relu)


@jit
def _backward_share(xf, Wp, offsets, doutf, yf, relu, N, G, first, step, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OW,
                    Q, phases, dmatf, rowsf, drowsf, parts, db_parts, need_dx, dxf):  # pragma: no cover - compiled
    """Conv backward of blocks ``first, first + step, ...`` (``relu``: through a fused ReLU, ``yf`` its output)."""
    for k in range(first, (N + G - 1) // G, step):
        db_parts[k, :] = 0.0
        for n in range(k * G, min(N, k * G + G)):
            if relu:
                _mask_relu(doutf, yf, n, F, L, dmatf, db_parts[k])
                _sample_backward(xf, Wp, offsets, dmatf, n, n > k * G, F, L, C, H, W, KW, sh, sw, ph, pw, dw, OW, Q,
                                 phases, rowsf, drowsf, parts[k], need_dx, dxf)
            else:  # dout[n] is already (F, L)
                _sample_backward(xf, Wp, offsets, doutf[n * F * L:], n, n > k * G, F, L, C, H, W, KW, sh, sw, ph,
                                 pw, dw, OW, Q, phases, rowsf, drowsf, parts[k], need_dx, dxf)
                _add_bias_grad(doutf, n, F, L, db_parts[k])
