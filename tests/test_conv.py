"""Tests for :mod:`xpcnn.functional.conv` and :class:`xpcnn.layers.Conv2D`, on every backend lane.

Oracles that share no code with the implementation: the nested-loop
references in ``tests/reference.py`` (forward, analytic backward, im2col,
col2im) and central differences (:func:`xpcnn.gradcheck`) in float64.  Inputs
are generated as NumPy on the host, moved with ``xpcnn.backend.asarray``;
results are compared on the host.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import backend as B
from xpcnn import kernels
from xpcnn.functional import conv as Fc
from xpcnn.gradient_check import GradcheckError
from xpcnn.layers import Conv2D

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R

DTYPES = ["float64", "float32"]


def make_case(N, C, F, kernel, stride, padding, dilation, out):
    """A conv geometry whose output is exactly ``out``: the input size is solved from the formula."""
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = (R._pair(v) for v in (kernel, stride, padding, dilation))
    H, W = R.in_len(out[0], KH, sh, ph, dh), R.in_len(out[1], KW, sw, pw, dw)
    assert H >= 1 and W >= 1, (H, W)
    assert (R.out_len(H, KH, sh, ph, dh), R.out_len(W, KW, sw, pw, dw)) == tuple(out)
    case = {"x": (N, C, H, W), "W": (F, C, KH, KW), "stride": stride, "padding": padding, "dilation": dilation}
    return pytest.param(case, id=f"x{N}x{C}x{H}x{W}-W{F}x{C}x{KH}x{KW}-s{stride}-p{padding}-d{dilation}")


# The full grid stride 1..3 x padding 0..2 x dilation 1..2 on a non-square kernel, with the width
# axis using different (rotated) values from the height axis so that every pair argument is non-square.
GRID = [
    make_case(2, 2, 3, (3, 2), (s, s % 3 + 1), (p, (p + 1) % 3), (d, 3 - d), (3, 4))
    for s in (1, 2, 3) for p in (0, 1, 2) for d in (1, 2)
]
EXTRA = [
    make_case(1, 1, 1, 1, 1, 0, 1, (4, 3)),              # 1x1 kernel, single channel/filter, int args
    make_case(2, 3, 2, 3, 1, 1, 1, (5, 5)),              # "same" conv, int args
    make_case(3, 4, 2, (5, 4), 1, 0, 1, (1, 1)),         # kernel covers the whole input
    make_case(2, 3, 5, (2, 4), (3, 2), (0, 1), (1, 2), (2, 3)),
    make_case(1, 2, 2, (3, 3), 2, 2, 2, (3, 2)),         # padding wider than the dilated half-kernel
]
CASES = GRID + EXTRA
# Small geometries for the (slow: two forwards per element) central-difference checks.
GRADCHECK_CASES = [
    make_case(1, 2, 2, (3, 2), (2, 1), (1, 2), (1, 2), (2, 3)),
    make_case(1, 1, 2, 3, 1, 1, 2, (3, 3)),
    make_case(1, 2, 1, (2, 3), (3, 2), 0, 1, (2, 2)),
    make_case(1, 2, 2, 3, 2, 2, 2, (3, 2)),
]


def host_inputs(case, rng, dtype="float64"):
    x = rng.standard_normal(case["x"]).astype(dtype)
    W = rng.standard_normal(case["W"]).astype(dtype)
    b = rng.standard_normal(case["W"][0]).astype(dtype)
    return x, W, b


def geom(case):
    return case["stride"], case["padding"], case["dilation"]


def check_array(be, got, want, dtype, what, tol=None):
    """Shape, backend dtype and values (on the host)."""
    assert tuple(got.shape) == want.shape, f"{what}: shape {tuple(got.shape)}, expected {want.shape}"
    assert got.dtype == getattr(be.xp, dtype), f"{what}: dtype {got.dtype}, expected {dtype} on {be.name}"
    R.assert_close(B.to_numpy(got), want, dtype, tol=tol, what=what)


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_conv2d_forward_matches_loop_reference(backend, case, dtype, rng):
    """With and without bias (both in one test to keep the suite fast)."""
    x, W, b = host_inputs(case, rng, dtype)
    xs, Ws = B.asarray(x), B.asarray(W)
    N, C, H, Wd = case["x"]
    _, _, KH, KW = case["W"]
    for bias in (True, False):
        want = R.conv2d(x, W, b if bias else None, *geom(case))
        bb = B.asarray(b) if bias else None
        y, cache = Fc.conv2d_forward(xs, Ws, bb, *geom(case))
        check_array(backend, y, want, dtype, f"y (bias={bias})")
        assert tuple(cache.col.shape) == (N, KH * KW * C, want.shape[2] * want.shape[3])
        # conv2d is the forward without the cache
        check_array(backend, Fc.conv2d(xs, Ws, bb, *geom(case)), want, dtype, f"conv2d (bias={bias})")


def test_conv2d_bias_is_added_per_filter(backend, rng):
    """With a zero kernel the output is exactly the bias broadcast over (N, OH, OW)."""
    x = rng.standard_normal((2, 3, 5, 4))
    W = np.zeros((4, 3, 2, 2))
    b = rng.standard_normal(4)
    y = B.to_numpy(Fc.conv2d(B.asarray(x), B.asarray(W), B.asarray(b)))
    assert y.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(1, 4, 1, 1), y.shape))


def test_conv2d_int_and_pair_arguments_agree(backend, rng):
    x = B.asarray(rng.standard_normal((1, 2, 7, 7)))
    W = B.asarray(rng.standard_normal((3, 2, 3, 3)))
    a = B.to_numpy(Fc.conv2d(x, W, None, 2, 1, 2))
    p = B.to_numpy(Fc.conv2d(x, W, None, (2, 2), (1, 1), (2, 2)))
    np.testing.assert_array_equal(a, p)
    assert a.shape == (1, 3, 3, 3)


@pytest.mark.parametrize("x_shape, stride, padding", [((1, 2, 6, 7), 2, 0), ((2, 1, 7, 6), 2, 1),
                                                      ((1, 1, 7, 7), (3, 1), 0), ((1, 1, 32, 32), 2, 1)])
def test_conv2d_floors_the_output_size_like_pytorch(backend, x_shape, stride, padding, rng):
    """Where the windows do not tile the input, the output size is floored (PyTorch's rule); the rows and
    columns no window reaches get a zero gradient.  Oracle: the nested-loop reference."""
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((3, x_shape[1], 3, 3))
    s, p = R._pair(stride), R._pair(padding)
    want_shape = (x_shape[0], 3, *((x_shape[2 + a] + 2 * p[a] - 3) // s[a] + 1 for a in range(2)))
    y, cache = Fc.conv2d_forward(B.asarray(x), B.asarray(W), None, stride, padding)
    assert tuple(y.shape) == want_shape
    check_array(backend, y, R.conv2d(x, W, None, stride, padding), "float64", "y")
    cols = Fc.im2col(B.asarray(x), 3, stride, padding)
    assert tuple(cols.shape) == (x_shape[0], 9 * x_shape[1], want_shape[2] * want_shape[3])
    dout = rng.standard_normal(want_shape)
    dx, dW, _ = Fc.conv2d_backward(B.asarray(dout), cache)
    want_dx, want_dW, _ = R.conv2d_backward(x, W, dout, stride, padding)
    check_array(backend, dx, want_dx, "float64", "dx")
    check_array(backend, dW, want_dW, "float64", "dW")
    reach = [(want_shape[2 + a] - 1) * s[a] + 3 - p[a] for a in range(2)]  # first row/column never read
    assert np.all(B.to_numpy(dx)[:, :, reach[0]:, :] == 0) and np.all(B.to_numpy(dx)[:, :, :, reach[1]:] == 0)


# ----------------------------------------------------------------------------- backward

def _forward_backward(case, x, W, b, dout, need_dx=True):
    y, cache = Fc.conv2d_forward(x, W, b, *geom(case))
    return Fc.conv2d_backward(dout, cache, need_dx=need_dx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_conv2d_backward_matches_loop_reference(backend, case, dtype, rng):
    x, W, b = host_inputs(case, rng, dtype)
    y_shape = R.conv2d(x, W, None, *geom(case)).shape
    dout = rng.standard_normal(y_shape).astype(dtype)
    want_dx, want_dW, want_db = R.conv2d_backward(x, W, dout, *geom(case))
    dx, dW, db = _forward_backward(case, B.asarray(x), B.asarray(W), B.asarray(b), B.asarray(dout))
    check_array(backend, dx, want_dx, dtype, "dx")
    check_array(backend, dW, want_dW, dtype, "dW")
    check_array(backend, db, want_db, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_need_dx_false(backend, dtype, rng):
    case = EXTRA[3].values[0]
    x, W, b = host_inputs(case, rng, dtype)
    y_shape = R.conv2d(x, W, None, *geom(case)).shape
    dout = B.asarray(rng.standard_normal(y_shape).astype(dtype))
    xs, Ws, bs = B.asarray(x), B.asarray(W), B.asarray(b)
    full = _forward_backward(case, xs, Ws, bs, dout, need_dx=True)
    dx, dW, db = _forward_backward(case, xs, Ws, bs, dout, need_dx=False)
    assert dx is None
    assert full[0] is not None
    check_array(backend, dW, B.to_numpy(full[1]), dtype, "dW", tol=1e-12)
    check_array(backend, db, B.to_numpy(full[2]), dtype, "db", tol=1e-12)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_conv2d_backward_gradcheck(backend, case, bias, rng):
    x, W, b = host_inputs(case, rng)
    x = x[:1]  # one sample keeps the central differences cheap

    def f(*arrays):
        xs, Ws = arrays[0], arrays[1]
        bs = arrays[2] if bias else None
        y, cache = Fc.conv2d_forward(xs, Ws, bs, *geom(case))

        def backward(dout):
            dx, dW, db = Fc.conv2d_backward(dout, cache)
            return (dx, dW, db) if bias else (dx, dW)

        return y, backward

    inputs = [B.asarray(x), B.asarray(W)] + ([B.asarray(b)] if bias else [])
    result = xpcnn.gradcheck(f, inputs)
    assert result.ok
    assert set(result.max_abs_error) == {f"input {i}" for i in range(len(inputs))}


def test_gradcheck_catches_a_wrong_conv_gradient(backend, rng):
    """The gradcheck oracle itself can fail: a dW off by a transposed kernel is rejected."""
    case = GRADCHECK_CASES[0].values[0]
    x, W, _ = host_inputs(case, rng)

    def f(xs, Ws):
        y, cache = Fc.conv2d_forward(xs, Ws, None, *geom(case))

        def backward(dout):
            dx, dW, _ = Fc.conv2d_backward(dout, cache)
            return dx, backend.xp.flip(dW, axis=2)

        return y, backward

    with pytest.raises(GradcheckError, match=r"gradient of input 1 is wrong at index"):
        xpcnn.gradcheck(f, [B.asarray(x[:1]), B.asarray(W)])


def test_conv2d_backward_rejects_wrong_dout_shape(backend, rng):
    x = B.asarray(rng.standard_normal((2, 1, 5, 5)))
    W = B.asarray(rng.standard_normal((3, 1, 3, 3)))
    y, cache = Fc.conv2d_forward(x, W)
    bad = B.asarray(np.zeros((2, 3, 4, 3)))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3, 3, 3\), "
                                         r"got \(2, 3, 4, 3\)"):
        Fc.conv2d_backward(bad, cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_empty_batch(backend, dtype, rng):
    """N = 0 is valid (as in PyTorch): empty outputs and zero parameter gradients."""
    x = np.zeros((0, 2, 5, 6), dtype=dtype)
    W = rng.standard_normal((3, 2, 3, 2)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    y, cache = Fc.conv2d_forward(B.asarray(x), B.asarray(W), B.asarray(b), 2, 1, 1)
    check_array(backend, y, R.conv2d(x, W, b, 2, 1, 1), dtype, "y")
    dout = np.zeros(tuple(y.shape), dtype=dtype)
    want = R.conv2d_backward(x, W, dout, 2, 1, 1)
    got = Fc.conv2d_backward(B.asarray(dout), cache)
    for name, g, w in zip(("dx", "dW", "db"), got, want):
        check_array(backend, g, w, dtype, name)


# ----------------------------------------------------------------------------- im2col / col2im

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_im2col_matches_loop_reference(backend, case, dtype, rng):
    x = rng.standard_normal(case["x"]).astype(dtype)
    kernel = case["W"][2:]
    want = R.im2col(x, kernel, *geom(case))
    col = Fc.im2col(B.asarray(x), kernel, *geom(case))
    check_array(backend, col, want, dtype, "col", tol=0.0)  # a pure gather: exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_col2im_matches_loop_scatter_add(backend, case, dtype, rng):
    kernel = case["W"][2:]
    col_shape = R.im2col(np.zeros(case["x"]), kernel, *geom(case)).shape
    col = rng.standard_normal(col_shape).astype(dtype)
    want = R.col2im(col, case["x"], kernel, *geom(case))
    got = Fc.col2im(B.asarray(col), case["x"], kernel, *geom(case))
    check_array(backend, got, want, dtype, "col2im")


def test_im2col_row_order_is_tap_major(backend):
    """Row ``(i*KW + j)*C + c``: with x = 100*c + 10*h + w the column entries spell out their source."""
    C, H, W = 3, 4, 5
    c, h, w = np.meshgrid(np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    x = (100.0 * c + 10.0 * h + w)[None]
    col = B.to_numpy(Fc.im2col(B.asarray(x), (2, 3)))  # no padding: every entry is a real pixel
    assert col.shape == (1, 2 * 3 * C, 3 * 3)
    for i in range(2):
        for j in range(3):
            for ch in range(C):
                for r in range(3):
                    for q in range(3):
                        assert col[0, (i * 3 + j) * C + ch, r * 3 + q] == 100 * ch + 10 * (r + i) + (q + j)


def test_col2im_rejects_wrong_col_shape(backend):
    col = B.asarray(np.zeros((1, 9, 10)))
    with pytest.raises(ValueError, match=r"col must have shape \(1, 18, 9\) for x_shape \(1, 2, 5, 5\), "
                                         r"got \(1, 9, 10\)"):
        Fc.col2im(col, (1, 2, 5, 5), 3, 1, 0)


# ----------------------------------------------------------------------------- Conv2D layer

def _layer(case, bias=True, dtype="float64"):
    F, C, KH, KW = case["W"]
    return Conv2D(C, F, (KH, KW), case["stride"], case["padding"], case["dilation"], bias=bias, dtype=dtype,
                  rng=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_layer_params(backend, bias, dtype):
    layer = Conv2D(3, 5, (2, 4), bias=bias, dtype=dtype, rng=1)
    assert set(layer.params) == ({"W", "b"} if bias else {"W"})
    assert tuple(layer.params["W"].shape) == (5, 3, 2, 4)
    assert layer.params["W"].dtype == getattr(backend.xp, dtype)
    assert B.backend_name(layer.params["W"]) == B.backend_name(backend.xp.zeros(1))
    if bias:
        assert tuple(layer.params["b"].shape) == (5,)
        assert layer.params["b"].dtype == getattr(backend.xp, dtype)
    assert layer.output_shape((7, 3, 6, 9)) == (7, 5, 5, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", [EXTRA[3], GRID[11]])
def test_conv2d_layer_matches_functional(backend, case, bias, dtype, rng):
    layer = _layer(case, bias, dtype)
    if bias:  # non-zero bias, so a dropped bias would show
        layer.params["b"] = B.asarray(rng.standard_normal(case["W"][0]), dtype=dtype)
    x = B.asarray(rng.standard_normal(case["x"]), dtype=dtype)
    y = layer.forward(x, train=True)
    want_y, cache = Fc.conv2d_forward(x, layer.params["W"], layer.params.get("b"), *geom(case))
    # the same numbers as the functional reference when the layer ran it; a fast kernel set (tested
    # against the reference in tests/test_kernels_*.py) agrees to the dtype's tolerance
    s, p, d = (layer.stride, layer.padding, layer.dilation)
    exact = kernels.conv2d.implementation(x, layer.params["W"], layer.params.get("b"), s, p, d) == "reference"
    tol = 0.0 if exact else None
    check_array(backend, y, B.to_numpy(want_y), dtype, "y", tol=tol)
    assert layer.output_shape(case["x"]) == tuple(y.shape)

    dout_host = rng.standard_normal(tuple(y.shape)).astype(dtype)
    dout = B.asarray(dout_host)
    dx = layer.backward(dout)
    want_dx, want_dW, want_db = Fc.conv2d_backward(dout, cache)
    check_array(backend, dx, B.to_numpy(want_dx), dtype, "dx", tol=tol)
    check_array(backend, layer.grads["W"], B.to_numpy(want_dW), dtype, "dW", tol=tol)
    if bias:
        check_array(backend, layer.grads["b"], B.to_numpy(want_db), dtype, "db", tol=tol)
    else:
        assert "b" not in layer.grads
    np.testing.assert_array_equal(B.to_numpy(dout), dout_host)  # backward never modifies dout
    # and the values are right, not just consistent: the loop reference
    ref_dx, ref_dW, _ = R.conv2d_backward(B.to_numpy(x), B.to_numpy(layer.params["W"]), dout_host, *geom(case))
    R.assert_close(B.to_numpy(dx), ref_dx, dtype, what="dx vs loop")
    R.assert_close(B.to_numpy(layer.grads["W"]), ref_dW, dtype, what="dW vs loop")


def test_conv2d_layer_first_layer_skips_dx(backend, rng):
    case = EXTRA[3].values[0]
    layer = _layer(case)
    x = B.asarray(rng.standard_normal(case["x"]))
    y = layer.forward(x, train=True)
    dout = B.asarray(rng.standard_normal(tuple(y.shape)))
    dx_full = layer.backward(dout)
    dW_full = B.to_numpy(layer.grads["W"]).copy()
    layer.need_input_grad = False
    layer.forward(x, train=True)
    assert dx_full is not None
    assert layer.backward(dout) is None
    R.assert_close(B.to_numpy(layer.grads["W"]), dW_full, "float64", tol=1e-12, what="dW")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", GRADCHECK_CASES[::3])
def test_conv2d_layer_gradcheck(backend, case, bias, rng):
    layer = _layer(case, bias)
    if bias:
        layer.params["b"] = B.asarray(rng.standard_normal(case["W"][0]))
    x = B.asarray(rng.standard_normal((1, *case["x"][1:])))
    result = xpcnn.gradcheck(layer, x)
    assert result.ok
    assert set(result.max_abs_error) == ({"x", "W", "b"} if bias else {"x", "W"})


def test_conv2d_layer_backward_needs_train_forward(backend, rng):
    layer = Conv2D(1, 2, 3, dtype="float64", rng=0)
    x = B.asarray(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(B.asarray(np.zeros((1, 2, 2, 2))))
    layer.forward(x, train=False)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(B.asarray(np.zeros((1, 2, 2, 2))))


def test_conv2d_layer_rejects_input_dtype(backend, rng):
    layer = Conv2D(1, 2, 3, dtype="float64", rng=0)
    x = B.asarray(rng.standard_normal((1, 1, 4, 4)), dtype="float32")
    with pytest.raises(TypeError, match=r"input dtype .*float32 does not match the parameters' dtype .*float64"):
        layer.forward(x)


# ----------------------------------------------------------------------------- cross-lane identity

CROSS_TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [GRID[5], GRID[14], EXTRA[3]])
def test_conv_ops_equal_numpy_lane(backend, case, dtype, rng):
    x, W, b = host_inputs(case, rng, dtype)
    kernel = case["W"][2:]
    tol = CROSS_TOL[dtype]

    def run(be):
        xs, Ws, bs = (B.asarray(a, backend=be) for a in (x, W, b))
        y, cache = Fc.conv2d_forward(xs, Ws, bs, *geom(case))
        dout = B.asarray(np.cos(np.arange(np.prod(y.shape))).reshape(tuple(y.shape)).astype(dtype), backend=be)
        dx, dW, db = Fc.conv2d_backward(dout, cache)
        back = Fc.col2im(cache.col, case["x"], kernel, *geom(case))
        return {"y": y, "col": Fc.im2col(xs, kernel, *geom(case)), "dx": dx, "dW": dW, "db": db, "col2im": back}

    ref = {k: B.to_numpy(v) for k, v in run("numpy").items()}
    got = run(backend)
    for name, value in got.items():
        check_array(backend, value, ref[name], dtype, f"{name} vs numpy lane", tol=tol)


# ----------------------------------------------------------------------------- bad input

def test_conv2d_rejects_wrong_rank(backend):
    x3 = B.asarray(np.zeros((2, 5, 5)))
    W = B.asarray(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) \(4-D\), got shape \(2, 5, 5\) \(3-D\)"):
        Fc.conv2d(x3, W)
    x = B.asarray(np.zeros((1, 2, 5, 5)))
    W3 = B.asarray(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"W must be \(F, C/groups, KH, KW\) \(4-D\), got shape \(2, 3, 3\) \(3-D\)"):
        Fc.conv2d(x, W3)
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) \(4-D\), got shape \(2, 5, 5\)"):
        Fc.im2col(x3, 3)
    layer = Conv2D(2, 1, 3, dtype="float64", rng=0)
    with pytest.raises(ValueError, match=r"Conv2D input must be \(N, C, H, W\) \(4-D\), got shape \(2, 5, 5\)"):
        layer.forward(x3)


def test_conv2d_rejects_channel_mismatch(backend):
    x = B.asarray(np.zeros((1, 2, 5, 5)))
    W = B.asarray(np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"channel mismatch: W expects 3 input channels .*but x has 2"):
        Fc.conv2d(x, W)
    layer = Conv2D(3, 4, 3, dtype="float64", rng=0)
    with pytest.raises(ValueError, match=r"expects 3 input channels.*x has 2"):
        layer.forward(x)
    with pytest.raises(ValueError, match=r"Conv2D expects \(N, 3, H, W\), got \(1, 2, 5, 5\)"):
        layer.output_shape((1, 2, 5, 5))


def test_conv2d_rejects_bias_shape(backend):
    x = B.asarray(np.zeros((1, 2, 5, 5)))
    W = B.asarray(np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"b must have shape \(4,\) for W of shape \(4, 2, 3, 3\), got \(3,\)"):
        Fc.conv2d(x, W, B.asarray(np.zeros(3)))


@pytest.mark.parametrize("padding, dilation, axis, extent, size", [
    (0, 1, "height", 5, 3), (0, 2, "height", 9, 3), ((2, 0), 1, "width", 5, 4)])
def test_conv2d_rejects_kernel_larger_than_padded_input(backend, padding, dilation, axis, extent, size):
    x = B.asarray(np.zeros((1, 1, 3, 4)))
    W = B.asarray(np.zeros((1, 1, 5, 5)))
    p = R._pair(padding)[0 if axis == "height" else 1]
    with pytest.raises(ValueError, match=rf"kernel extent {extent} along {axis} is larger than the padded input "
                                         rf"\({size} \+ 2\*{p} = {size + 2 * p}\)"):
        Fc.conv2d(x, W, None, 1, padding, dilation)


def test_conv2d_rejects_bad_hyperparameters(backend):
    x = B.asarray(np.zeros((1, 1, 5, 5)))
    W = B.asarray(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"need kernel >= 1, stride >= 1, dilation >= 1, padding >= 0 along "
                                         r"height; got kernel=3, stride=0, dilation=1, padding=0"):
        Fc.conv2d(x, W, None, 0)
    with pytest.raises(ValueError, match=r"along width; got kernel=3, stride=1, dilation=1, padding=-1"):
        Fc.conv2d(x, W, None, 1, (0, -1))
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got 1\.5"):
        Fc.conv2d(x, W, None, 1.5)
    with pytest.raises(TypeError, match=r"dilation must be an int or a pair of ints, got \(1, 2, 3\)"):
        Fc.conv2d(x, W, None, 1, 0, (1, 2, 3))


def test_conv2d_rejects_dtype_mismatch(backend):
    x32 = B.asarray(np.zeros((1, 2, 5, 5)), dtype="float32")
    W64 = B.asarray(np.zeros((1, 2, 3, 3)), dtype="float64")
    with pytest.raises(TypeError, match=r"dtype mismatch: x is \S*float32 but W is \S*float64"):
        Fc.conv2d(x32, W64)
    W32 = B.asarray(np.zeros((1, 2, 3, 3)), dtype="float32")
    b64 = B.asarray(np.zeros(1), dtype="float64")
    with pytest.raises(TypeError, match=r"dtype mismatch: x is \S*float32 but b is \S*float64"):
        Fc.conv2d(x32, W32, b64)
    y, cache = Fc.conv2d_forward(x32, W32)
    with pytest.raises(TypeError, match=r"dtype mismatch: W is \S*float32 but dout is \S*float64"):
        Fc.conv2d_backward(B.asarray(np.zeros((1, 1, 3, 3)), dtype="float64"), cache)


def test_conv2d_rejects_integer_input(backend):
    x = B.asarray(np.zeros((1, 2, 5, 5), dtype=np.int64))
    W = B.asarray(np.zeros((1, 2, 3, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"x must be a real floating array \(float32 or float64\), got dtype \S*int64"):
        Fc.conv2d(x, W)


def test_conv2d_rejects_mixed_backends_numpy_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 2, 5, 5))
    W = torch.zeros((1, 2, 3, 3), dtype=torch.float64)
    with pytest.raises(TypeError, match=r"different backends cannot be mixed: got numpy\.ndarray, torch\.Tensor"):
        Fc.conv2d(x, W)
    with pytest.raises(TypeError, match=r"different backends cannot be mixed: got numpy\.ndarray, torch\.Tensor"):
        Fc.conv2d(torch.zeros((1, 2, 5, 5), dtype=torch.float64), W, np.zeros(1))


def test_conv2d_rejects_mixed_backends_numpy_strict():
    pytest.importorskip("array_api_strict")
    x = B.asarray(np.zeros((1, 2, 5, 5)), backend="array_api_strict")
    W = np.zeros((1, 2, 3, 3))
    with pytest.raises(TypeError, match=r"different backends cannot be mixed: got array_api_strict\S*Array, "
                                        r"numpy\.ndarray"):
        Fc.conv2d(x, W)


# ----------------------------------------------------------------------------- groups and depthwise

def grouped_case(N, C, F, groups, kernel, stride, padding, dilation, out):
    """Like :func:`make_case` with ``W: (F, C/groups, KH, KW)``."""
    case = make_case(N, C, F, kernel, stride, padding, dilation, out).values[0]
    F_, _, KH, KW = case["W"]
    case = {**case, "W": (F_, C // groups, KH, KW), "groups": groups}
    kind = "depthwise" if groups == C else f"g{groups}"
    return pytest.param(case, id=f"{kind}-x{'x'.join(map(str, case['x']))}-W{'x'.join(map(str, case['W']))}"
                                 f"-s{stride}-p{padding}-d{dilation}")


GROUPED = [
    grouped_case(2, 4, 6, 2, 3, 1, 1, 1, (4, 5)),               # two groups, 3 filters each
    grouped_case(2, 4, 4, 4, 3, 2, 1, 1, (3, 3)),               # depthwise, stride 2
    grouped_case(1, 3, 6, 3, (3, 2), (1, 2), (2, 0), (2, 1), (3, 2)),  # depthwise x2 multiplier, dilation
    grouped_case(2, 6, 3, 3, (2, 3), 2, (0, 1), (1, 2), (2, 3)),  # groups with one filter, two channels each
    grouped_case(1, 5, 5, 5, 5, 1, 2, 1, (3, 4)),               # depthwise 5x5 "same"
]


def _gargs(case):
    return (*geom(case), case["groups"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GROUPED)
def test_grouped_conv2d_matches_loop_reference(backend, case, dtype, rng):
    """Forward (with and without bias) and backward of grouped/depthwise convolutions vs the loops."""
    x, W, b = host_inputs(case, rng, dtype)
    xs, Ws = B.asarray(x), B.asarray(W)
    for bias in (True, False):
        want = R.conv2d(x, W, b if bias else None, *_gargs(case))
        y, cache = Fc.conv2d_forward(xs, Ws, B.asarray(b) if bias else None, *_gargs(case))
        check_array(backend, y, want, dtype, f"y (bias={bias})")
    dout = rng.standard_normal(want.shape).astype(dtype)
    want_dx, want_dW, want_db = R.conv2d_backward(x, W, dout, *_gargs(case))
    dx, dW, db = Fc.conv2d_backward(B.asarray(dout), cache)
    check_array(backend, dx, want_dx, dtype, "dx")
    check_array(backend, dW, want_dW, dtype, "dW")
    check_array(backend, db, want_db, dtype, "db")
    none, dW2, _ = Fc.conv2d_backward(B.asarray(dout), cache, need_dx=False)
    assert none is None
    check_array(backend, dW2, want_dW, dtype, "dW (need_dx=False)")


def test_grouped_conv2d_is_the_concatenation_of_its_groups(backend, rng):
    """An independent identity: a G-group conv equals G ungrouped convs on the channel slices, concatenated."""
    x = rng.standard_normal((2, 6, 7, 5))
    W = rng.standard_normal((9, 2, 3, 3))
    y = B.to_numpy(Fc.conv2d(B.asarray(x), B.asarray(W), None, 1, 1, 1, 3))
    parts = [B.to_numpy(Fc.conv2d(B.asarray(np.ascontiguousarray(x[:, 2 * g:2 * g + 2])),
                                  B.asarray(np.ascontiguousarray(W[3 * g:3 * g + 3])), None, 1, 1))
             for g in range(3)]
    R.assert_close(y, np.concatenate(parts, axis=1), "float64", what="groups vs slices")


@pytest.mark.parametrize("case", [GROUPED[0], GROUPED[2], GROUPED[3]])
def test_grouped_conv2d_gradcheck(backend, case, rng):
    x, W, b = host_inputs(case, rng)
    x = x[:1]

    def f(xs, Ws, bs):
        y, cache = Fc.conv2d_forward(xs, Ws, bs, *_gargs(case))
        return y, lambda dout: Fc.conv2d_backward(dout, cache)

    result = xpcnn.gradcheck(f, [B.asarray(x), B.asarray(W), B.asarray(b)])
    assert result.ok and set(result.max_abs_error) == {"input 0", "input 1", "input 2"}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", [GROUPED[1], GROUPED[3]])
def test_grouped_conv2d_layer(backend, case, bias, rng):
    """The layer: parameter shapes, no ``b`` without bias, values vs the loops, central differences."""
    F, Cg, KH, KW = case["W"]
    C = case["x"][1]
    layer = Conv2D(C, F, (KH, KW), case["stride"], case["padding"], case["dilation"], case["groups"], bias,
                   dtype="float64", rng=0)
    assert tuple(layer.params["W"].shape) == (F, Cg, KH, KW)
    assert set(layer.params) == ({"W", "b"} if bias else {"W"})
    assert layer.config().get("groups") == case["groups"] and "groups=" in repr(layer)
    if bias:
        layer.params["b"] = B.asarray(rng.standard_normal(F))
    x = rng.standard_normal((1, *case["x"][1:]))
    y = layer.forward(B.asarray(x), train=True)
    want = R.conv2d(x, B.to_numpy(layer.params["W"]), B.to_numpy(layer.params["b"]) if bias else None,
                    *_gargs(case))
    check_array(backend, y, want, "float64", "y")
    assert layer.output_shape((1, *case["x"][1:])) == want.shape
    result = xpcnn.gradcheck(layer, B.asarray(x))
    assert set(result.max_abs_error) == ({"x", "W", "b"} if bias else {"x", "W"})


def test_grouped_conv2d_rejects_bad_groups(backend):
    x = B.asarray(np.zeros((1, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"groups=3 must divide both the input channels \(4\) and the filters \(6\)"):
        Fc.conv2d(x, B.asarray(np.zeros((6, 1, 3, 3))), None, 1, 0, 1, 3)
    with pytest.raises(ValueError, match=r"channel mismatch: W expects 1 input channels per group x 2 groups = 2 "
                                         r".*but x has 4"):
        Fc.conv2d(x, B.asarray(np.zeros((4, 1, 3, 3))), None, 1, 0, 1, 2)
    with pytest.raises(ValueError, match=r"groups must be >= 1, got 0"):
        Fc.conv2d(x, B.asarray(np.zeros((4, 4, 3, 3))), None, 1, 0, 1, 0)
    with pytest.raises(ValueError, match=r"groups=4 must divide both the input channels \(6\) and the filters \(8\)"):
        Conv2D(6, 8, 3, groups=4)
