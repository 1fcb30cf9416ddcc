"""Property tests (hypothesis) for im2col / col2im / conv2d over random geometries.

* the output size: im2col and conv2d either return ``OH = (H + 2P - D(K-1) - 1)/S + 1`` (per axis)
  or raise ValueError exactly when that is not a positive integer;
* adjointness: ``<im2col(x), c> == <x, col2im(c)>`` in float64 (NumPy, and the strict lane);
* conv2d (built on im2col) equals the direct nested-loop convolution.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpcnn import backend as B
from xpcnn.functional import conv as Fc

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def axis(draw, out=None):
    """One spatial axis: (size, kernel, stride, padding, dilation), any size (may not tile)."""
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, 2))
    d = draw(st.integers(1, 2))
    if out is None:
        size = draw(st.integers(1, 10))
    else:  # solve the size from a drawn output length, so the geometry always tiles
        size = R.in_len(draw(st.integers(1, 4)), k, s, p, d)
        assume(size >= 1)
    return size, k, s, p, d


@st.composite
def geometry(draw, tiling=True):
    N = draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    h = draw(axis(out=True if tiling else None))
    w = draw(axis(out=True if tiling else None))
    return {"x": (N, C, h[0], w[0]), "kernel": (h[1], w[1]), "stride": (h[2], w[2]), "padding": (h[3], w[3]),
            "dilation": (h[4], w[4])}


def args(g):
    return g["kernel"], g["stride"], g["padding"], g["dilation"]


def formula(size, k, s, p, d):
    """The documented output length ``floor((H + 2P - D(K-1) - 1) / S) + 1`` (PyTorch's), or None when empty."""
    num = size + 2 * p - d * (k - 1) - 1
    if num < 0:
        return None
    return num // s + 1


@SETTINGS
@given(g=geometry(tiling=False), F=st.integers(1, 3))
def test_output_size_formula(g, F):
    N, C, H, W = g["x"]
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = args(g)
    oh, ow = formula(H, KH, sh, ph, dh), formula(W, KW, sw, pw, dw)
    x = np.zeros(g["x"])
    Wt = np.zeros((F, C, KH, KW))
    if oh is None or ow is None:
        with pytest.raises(ValueError, match="along (height|width)"):
            Fc.im2col(x, *args(g))
        with pytest.raises(ValueError, match="along (height|width)"):
            Fc.conv2d(x, Wt, None, g["stride"], g["padding"], g["dilation"])
        return
    assert Fc.conv_geometry(g["x"], *args(g)) == (oh, ow)
    assert Fc.im2col(x, *args(g)).shape == (N, KH * KW * C, oh * ow)
    assert Fc.conv2d(x, Wt, None, g["stride"], g["padding"], g["dilation"]).shape == (N, F, oh, ow)


def _adjoint_gap(g, be, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g["x"])
    col_shape = tuple(Fc.im2col(np.zeros(g["x"]), *args(g)).shape)
    c = rng.standard_normal(col_shape)
    lhs = float(np.sum(B.to_numpy(Fc.im2col(B.asarray(x, backend=be), *args(g))) * c))
    back = Fc.col2im(B.asarray(c, backend=be), g["x"], *args(g))
    assert tuple(back.shape) == g["x"]
    rhs = float(np.sum(x * B.to_numpy(back)))
    scale = float(np.sum(np.abs(B.to_numpy(back)) * np.abs(x))) + 1e-300
    return lhs, rhs, scale


@SETTINGS
@given(g=geometry(), seed=st.integers(0, 2**32 - 1))
def test_im2col_col2im_adjoint_numpy(g, seed):
    lhs, rhs, scale = _adjoint_gap(g, "numpy", seed)
    assert abs(lhs - rhs) <= 1e-12 * scale


@settings(max_examples=20, deadline=None)
@given(g=geometry(), seed=st.integers(0, 2**32 - 1))
def test_im2col_col2im_adjoint_strict(g, seed):
    pytest.importorskip("array_api_strict")
    lhs, rhs, scale = _adjoint_gap(g, "array_api_strict", seed)
    assert abs(lhs - rhs) <= 1e-12 * scale


@SETTINGS
@given(g=geometry(), F=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_equals_loop_reference(g, F, bias, seed):
    rng = np.random.default_rng(seed)
    C = g["x"][1]
    x = rng.standard_normal(g["x"])
    Wt = rng.standard_normal((F, C, *g["kernel"]))
    b = rng.standard_normal(F) if bias else None
    want = R.conv2d(x, Wt, b, g["stride"], g["padding"], g["dilation"])
    y = Fc.conv2d(x, Wt, b, g["stride"], g["padding"], g["dilation"])
    assert y.shape == want.shape and y.dtype == np.float64
    R.assert_close(y, want, "float64", what="conv2d")
    # and im2col itself equals the loop-built column matrix (exact: a gather)
    np.testing.assert_array_equal(Fc.im2col(x, *args(g)), R.im2col(x, *args(g)))
