"""Direct nested-loop references for convolution, im2col/col2im and pooling, plus test helpers.

Shares no code with :mod:`xpcnn`: plain NumPy arrays and Python loops written
from the definitions, accumulated in float64.  Padding is never materialised;
an index outside the input simply reads as 0 (convolution, average pooling) or
``-inf`` (max pooling).  Kernel/stride/padding/dilation arguments are pairs
``(height, width)`` or ints.

Conventions (the ones xpcnn documents): ``x: (N, C, H, W)``,
``W: (F, C/groups, KH, KW)`` (filter ``f`` of group ``f // (F/groups)`` reads that group's
channels), ``b: (F,)``; im2col row ``(i*KW + j)*C + c``, column
``oh*OW + ow``; max pooling's gradient goes to the first maximum of its window
in row-major order; average pooling divides by ``KH*KW`` (padded zeros count).
"""

from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def out_len(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """PyTorch's output length (floor, or ceil where the last window starts inside the input or the
    left padding); None when it would be empty."""
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        return None
    n = -(-(size + 2 * padding - span) // stride) if ceil_mode else (size + 2 * padding - span) // stride
    if ceil_mode and n * stride >= size + padding:
        n -= 1
    return n + 1


def in_len(out, kernel, stride, padding, dilation=1):
    """The input length that gives exactly ``out`` outputs (may be < 1: then no such input exists)."""
    return stride * (out - 1) + dilation * (kernel - 1) + 1 - 2 * padding


def _geometry(x_shape, kernel, stride, padding, dilation, ceil_mode=False):
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, padding, dilation))
    H, W = x_shape[-2], x_shape[-1]
    oh, ow = out_len(H, KH, sh, ph, dh, ceil_mode), out_len(W, KW, sw, pw, dw, ceil_mode)
    assert oh is not None and ow is not None, "reference called with an empty output"
    return KH, KW, sh, sw, ph, pw, dh, dw, oh, ow


def _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
    """Yield ``(r, q, i, j, h, w, inside)`` for every output position and tap, taps row-major."""
    for r in range(oh):
        for q in range(ow):
            for i in range(KH):
                for j in range(KW):
                    h = r * sh - ph + i * dh
                    w = q * sw - pw + j * dw
                    yield r, q, i, j, h, w, (0 <= h < H and 0 <= w < W)


# ----------------------------------------------------------------------------- convolution

def conv2d(x, Wt, b=None, stride=1, padding=0, dilation=1, groups=1):
    """``y[n, f, r, q] = b[f] + sum_{c,i,j} W[f, c, i, j] * x[n, g*C/G + c, r*sh - ph + i*dh, q*sw - pw + j*dw]``
    where ``g = f // (F/G)`` is the filter's group and ``c`` runs over the ``C/G`` channels of that group."""
    x = np.asarray(x, dtype=np.float64)
    Wt = np.asarray(Wt, dtype=np.float64)
    N, C, H, W = x.shape
    F, Cg = Wt.shape[0], Wt.shape[1]
    assert C == Cg * groups and F % groups == 0
    Fg = F // groups
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x.shape, Wt.shape[2:], stride, padding, dilation)
    y = np.zeros((N, F, oh, ow))
    for n in range(N):
        for f in range(F):
            c0 = (f // Fg) * Cg
            for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
                if not inside:
                    continue
                for c in range(Cg):
                    y[n, f, r, q] += Wt[f, c, i, j] * x[n, c0 + c, h, w]
            if b is not None:
                y[n, f] += float(b[f])
    return y


def conv2d_backward(x, Wt, dout, stride=1, padding=0, dilation=1, groups=1):
    """The analytic gradients ``(dx, dW, db)`` of ``sum(conv2d(x, W, b) * dout)``, by the same loops."""
    x = np.asarray(x, dtype=np.float64)
    Wt = np.asarray(Wt, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    N, C, H, W = x.shape
    F, Cg = Wt.shape[0], Wt.shape[1]
    assert C == Cg * groups and F % groups == 0
    Fg = F // groups
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x.shape, Wt.shape[2:], stride, padding, dilation)
    assert dout.shape == (N, F, oh, ow)
    dx = np.zeros_like(x)
    dW = np.zeros_like(Wt)
    db = np.zeros(F)
    for n in range(N):
        for f in range(F):
            c0 = (f // Fg) * Cg
            for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
                if not inside:
                    continue
                g = dout[n, f, r, q]
                for c in range(Cg):
                    dx[n, c0 + c, h, w] += Wt[f, c, i, j] * g
                    dW[f, c, i, j] += x[n, c0 + c, h, w] * g
            db[f] += dout[n, f].sum()
    return dx, dW, db


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """``col[n, (i*KW + j)*C + c, r*OW + q] = x[n, c, h, w]`` (0 where the tap reads padding)."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x.shape, kernel, stride, padding, dilation)
    col = np.zeros((N, KH * KW * C, oh * ow))
    for n in range(N):
        for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
            if inside:
                for c in range(C):
                    col[n, (i * KW + j) * C + c, r * ow + q] = x[n, c, h, w]
    return col


def col2im(col, x_shape, kernel, stride=1, padding=0, dilation=1):
    """Scatter-add every column entry back to the input position it was read from (padding dropped)."""
    col = np.asarray(col, dtype=np.float64)
    N, C, H, W = x_shape
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x_shape, kernel, stride, padding, dilation)
    assert col.shape == (N, KH * KW * C, oh * ow)
    x = np.zeros((N, C, H, W))
    for n in range(N):
        for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
            if inside:
                for c in range(C):
                    x[n, c, h, w] += col[n, (i * KW + j) * C + c, r * ow + q]
    return x


# ----------------------------------------------------------------------------- pooling

def _pool_args(x_shape, kernel, stride, padding, ceil_mode=False):
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    return _geometry(x_shape, kernel, stride, padding, 1, ceil_mode)


def _avg_divisor(r, q, H, W, KH, KW, sh, sw, ph, pw):
    """PyTorch's count_include_pad divisor: the window's part inside the padded input (KH*KW unless a
    ceil_mode window hangs past the right/bottom padding)."""
    h0, w0 = r * sh - ph, q * sw - pw
    return (min(h0 + KH, H + ph) - h0) * (min(w0 + KW, W + pw) - w0)


def max_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False):
    """Returns ``(y, where)``: the window maxima and, per output, the ``(h, w)`` of the first maximum."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _pool_args(x.shape, kernel, stride, padding, ceil_mode)
    y = np.full((N, C, oh, ow), -math.inf)
    where = np.full((N, C, oh, ow, 2), -1, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
                v = x[n, c, h, w] if inside else -math.inf
                if v > y[n, c, r, q]:  # strictly greater: a later equal value never wins
                    y[n, c, r, q] = v
                    where[n, c, r, q] = (h, w)
    return y, where


def max_pool2d_backward(x, dout, kernel, stride=None, padding=0, ceil_mode=False):
    """``dx``: each window's ``dout`` added at its first maximum (row-major within the window)."""
    x = np.asarray(x, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    _, where = max_pool2d(x, kernel, stride, padding, ceil_mode)
    assert dout.shape == where.shape[:4]
    dx = np.zeros_like(x)
    for n, c, r, q in np.ndindex(*dout.shape):
        h, w = where[n, c, r, q]
        assert h >= 0, "a window with no real element"
        dx[n, c, h, w] += dout[n, c, r, q]
    return dx


def avg_pool2d(x, kernel, stride=None, padding=0, ceil_mode=False):
    """``y = (sum of the window's real elements) / (KH*KW)``: padded zeros count in the mean."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _pool_args(x.shape, kernel, stride, padding, ceil_mode)
    y = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
                if inside:
                    y[n, c, r, q] += x[n, c, h, w] / _avg_divisor(r, q, H, W, KH, KW, sh, sw, ph, pw)
    return y


def avg_pool2d_backward(x_shape, dout, kernel, stride=None, padding=0, ceil_mode=False):
    """``dx[h, w] = sum over the windows containing (h, w) of dout / (KH*KW)``."""
    dout = np.asarray(dout, dtype=np.float64)
    N, C, H, W = x_shape
    KH, KW, sh, sw, ph, pw, dh, dw, oh, ow = _pool_args(x_shape, kernel, stride, padding, ceil_mode)
    assert dout.shape == (N, C, oh, ow)
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for r, q, i, j, h, w, inside in _windows(H, W, KH, KW, sh, sw, ph, pw, dh, dw, oh, ow):
                if inside:
                    dx[n, c, h, w] += dout[n, c, r, q] / _avg_divisor(r, q, H, W, KH, KW, sh, sw, ph, pw)
    return dx


# ----------------------------------------------------------------------------- helpers for the tests

TOL = {"float64": 1e-10, "float32": 1e-5}


def assert_close(got, want, dtype: str, tol: float | None = None, what: str = "") -> None:
    """Relative comparison on the host: ``|got - want| <= tol * (|want| + max|want|)``, shapes equal."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    tol = TOL[dtype] if tol is None else tol
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(scale, 1e-300), err_msg=what)


def distinct_values(rng, shape, spacing: float = 0.1):
    """A random permutation of ``spacing * (0, 1, 2, ...)`` minus its mean: no ties, gaps >> gradcheck's eps."""
    size = int(np.prod(shape))
    v = rng.permutation(size).astype(np.float64) * spacing
    return (v - v.mean()).reshape(shape)
