"""Tests for :mod:`xpcnn.functional.pool` and the MaxPool2D / AvgPool2D layers, on every backend lane.

Oracles: the nested-loop references in ``tests/reference.py`` (max pooling with
the first-maximum gradient rule, average pooling with padded zeros counted) and
central differences in float64 (:func:`xpcnn.gradcheck`; max pooling only on
inputs without ties, where it is differentiable).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import avg_cache

import xpcnn
from xpcnn import backend as B
from xpcnn.functional import pool as Fp
from xpcnn.layers import AvgPool2D, GlobalAvgPool2D, MaxPool2D

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R

DTYPES = ["float64", "float32"]


def make_case(N, C, kernel, stride, padding, out):
    """A pooling geometry whose output is exactly ``out`` (the input size is solved from the formula)."""
    k = R._pair(kernel)
    s = k if stride is None else R._pair(stride)
    p = R._pair(padding)
    H, W = R.in_len(out[0], k[0], s[0], p[0]), R.in_len(out[1], k[1], s[1], p[1])
    assert H >= 1 and W >= 1 and (R.out_len(H, k[0], s[0], p[0]), R.out_len(W, k[1], s[1], p[1])) == tuple(out)
    case = {"x": (N, C, H, W), "kernel": kernel, "stride": stride, "padding": padding}
    return pytest.param(case, id=f"x{N}x{C}x{H}x{W}-k{kernel}-s{stride}-p{padding}")


CASES = [
    make_case(2, 2, 2, None, 0, (2, 3)),              # the classic 2x2/2, stride defaulting to the kernel
    make_case(1, 2, 3, 1, 0, (3, 3)),                 # overlapping windows (stride < kernel)
    make_case(2, 1, 3, 2, 1, (4, 3)),                 # overlapping + padding
    make_case(1, 2, (2, 3), (2, 1), (1, 1), (3, 5)),  # non-square kernel, stride and padding
    make_case(2, 2, (3, 2), (1, 2), (0, 1), (3, 4)),  # non-square, overlapping along height only
    make_case(1, 3, 3, 3, 1, (3, 2)),                 # padding with stride == kernel
    make_case(1, 1, (1, 3), 1, (0, 1), (4, 5)),       # a 1-row kernel ("same" along width)
    make_case(2, 1, 4, 2, 2, (3, 3)),                 # the largest allowed padding (kernel // 2)
]


def geom(case):
    return case["kernel"], case["stride"], case["padding"]


def values(kind, shape, rng, dtype):
    """Host inputs: random normal, integer-valued with many ties, a negative constant, or all distinct."""
    if kind == "normal":
        v = rng.standard_normal(shape)
    elif kind == "ties":
        v = rng.integers(-1, 2, size=shape).astype(np.float64)  # only -1, 0, 1: ties in nearly every window
    elif kind == "const":
        v = np.full(shape, -2.5)  # negative, so a zero-padded max would show up as 0
    else:
        v = R.distinct_values(rng, shape)
    return v.astype(dtype)


def check_array(be, got, want, dtype, what, tol=None):
    assert tuple(got.shape) == want.shape, f"{what}: shape {tuple(got.shape)}, expected {want.shape}"
    assert got.dtype == getattr(be.xp, dtype), f"{what}: dtype {got.dtype}, expected {dtype} on {be.name}"
    R.assert_close(B.to_numpy(got), want, dtype, tol=tol, what=what)


# ----------------------------------------------------------------------------- max pooling

@pytest.mark.parametrize("kind", ["normal", "ties", "const"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_max_pool_matches_loop_reference(backend, case, dtype, kind, rng):
    x = values(kind, case["x"], rng, dtype)
    want_y, _ = R.max_pool2d(x, *geom(case))
    y, cache = Fp.max_pool2d_forward(B.asarray(x), *geom(case))
    check_array(backend, y, want_y, dtype, "y", tol=0.0)  # a max is exact
    assert tuple(cache.argmax.shape) == want_y.shape
    assert backend.xp.isdtype(cache.argmax.dtype, "integral")
    check_array(backend, Fp.max_pool2d(B.asarray(x), *geom(case)), want_y, dtype, "max_pool2d", tol=0.0)

    dout = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx = R.max_pool2d_backward(x, dout, *geom(case))
    dx = Fp.max_pool2d_backward(B.asarray(dout), cache)
    check_array(backend, dx, want_dx, dtype, "dx")


def test_max_pool_tie_gradient_goes_to_first_maximum(backend):
    """All four 2x2 windows are constant: each window's gradient lands on its top-left element only."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, :2] = 7.0  # bottom-left window: constant 7; others constant 0
    x[0, 0, :2, 2:] = [[1.0, 3.0], [3.0, 3.0]]  # top-right window: max 3 first at (0, 3)
    dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y, cache = Fp.max_pool2d_forward(B.asarray(x), 2)
    dx = B.to_numpy(Fp.max_pool2d_backward(B.asarray(dout), cache))
    want = np.zeros_like(x)
    want[0, 0, 0, 0] = dout[0, 0, 0, 0]
    want[0, 0, 0, 3] = dout[0, 0, 0, 1]
    want[0, 0, 2, 0] = dout[0, 0, 1, 0]
    want[0, 0, 2, 2] = dout[0, 0, 1, 1]
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(B.to_numpy(y), [[[[0.0, 3.0], [7.0, 0.0]]]])
    np.testing.assert_array_equal(B.to_numpy(cache.argmax), [[[[0, 1], [0, 0]]]])


def test_max_pool_pads_with_minus_infinity(backend):
    """Negative inputs with padding: a border output is the largest *real* value, never a padded zero."""
    x = -1.0 - np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = B.to_numpy(Fp.max_pool2d(B.asarray(x), 3, 1, 1))
    assert y.shape == (1, 1, 4, 4)
    assert np.all(y < 0)
    np.testing.assert_array_equal(y, R.max_pool2d(x, 3, 1, 1)[0])
    # the padded max of a corner window is the real corner-neighbourhood max
    assert y[0, 0, 0, 0] == x[0, 0, :2, :2].max()


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[7]])
def test_max_pool_gradcheck_distinct_values(backend, case, rng):
    x = values("distinct", case["x"], rng, "float64")[:1]

    def f(xs):
        y, cache = Fp.max_pool2d_forward(xs, *geom(case))
        return y, lambda dout: Fp.max_pool2d_backward(dout, cache)

    assert xpcnn.gradcheck(f, [B.asarray(x)]).ok


# ----------------------------------------------------------------------------- average pooling

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_avg_pool_matches_loop_reference(backend, case, dtype, rng):
    x = values("normal", case["x"], rng, dtype)
    want_y = R.avg_pool2d(x, *geom(case))
    y = Fp.avg_pool2d(B.asarray(x), *geom(case))
    check_array(backend, y, want_y, dtype, "y")
    dout = rng.standard_normal(want_y.shape).astype(dtype)
    want_dx = R.avg_pool2d_backward(case["x"], dout, *geom(case))
    dx = Fp.avg_pool2d_backward(B.asarray(dout), avg_cache(case["x"], *geom(case)))
    check_array(backend, dx, want_dx, dtype, "dx")


def test_avg_pool_counts_padded_zeros(backend):
    """A constant input: interior windows give the constant, border windows constant * real/(KH*KW)."""
    c = 1.75
    x = np.full((1, 1, 4, 5), c)
    y = B.to_numpy(Fp.avg_pool2d(B.asarray(x), 3, 1, 1))
    assert y.shape == (1, 1, 4, 5)
    real = np.ones((4, 5))
    counts = np.zeros((4, 5))
    for r in range(4):
        for q in range(5):
            counts[r, q] = real[max(r - 1, 0):r + 2, max(q - 1, 0):q + 2].sum()
    np.testing.assert_allclose(y[0, 0], c * counts / 9.0, rtol=1e-15)
    assert y[0, 0, 0, 0] < c  # count_include_pad=False would give exactly c here
    assert y[0, 0, 1, 1] == pytest.approx(c, rel=1e-15)


@pytest.mark.parametrize("case", [CASES[2], CASES[3]])
def test_avg_pool_gradcheck(backend, case, rng):
    x = values("normal", case["x"], rng, "float64")[:1]

    def f(xs):
        cache = avg_cache(tuple(xs.shape), *geom(case))
        return Fp.avg_pool2d(xs, *geom(case)), lambda dout: Fp.avg_pool2d_backward(dout, cache)

    assert xpcnn.gradcheck(f, [B.asarray(x)]).ok


def test_pool_empty_batch(backend):
    x = B.asarray(np.zeros((0, 2, 5, 5)))
    y, cache = Fp.max_pool2d_forward(x, 3, 1, 1)
    assert tuple(y.shape) == (0, 2, 5, 5) and tuple(cache.argmax.shape) == (0, 2, 5, 5)
    assert tuple(Fp.max_pool2d_backward(y, cache).shape) == (0, 2, 5, 5)
    assert tuple(Fp.avg_pool2d(x, 3, 1, 1).shape) == (0, 2, 5, 5)
    assert tuple(Fp.avg_pool2d_backward(y, avg_cache((0, 2, 5, 5), 3, 1, 1)).shape) == (0, 2, 5, 5)


# ----------------------------------------------------------------------------- layers

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_pool_layers_match_functional(backend, case, dtype, rng):
    k, s, p = geom(case)
    x_host = values("ties", case["x"], rng, dtype)
    x = B.asarray(x_host)
    for layer, fwd in ((MaxPool2D(k, s, p), lambda a: Fp.max_pool2d_forward(a, k, s, p)),
                       (AvgPool2D(k, s, p), lambda a: (Fp.avg_pool2d(a, k, s, p), None))):
        assert layer.params == {} and layer.grads == {}
        y = layer.forward(x, train=True)
        want_y, cache = fwd(x)
        # bitwise the functional reference when the layer ran it; a fast kernel set to the dtype's tolerance
        exact = layer._op.implementation(x, Fp.pool_geometry(x.shape, k, s, p)) == "reference"
        tol = 0.0 if exact else None
        check_array(backend, y, B.to_numpy(want_y), dtype, f"{type(layer).__name__} y", tol=tol)
        assert layer.output_shape(case["x"]) == tuple(y.shape)
        dout_host = rng.standard_normal(tuple(y.shape)).astype(dtype)
        dout = B.asarray(dout_host)
        dx = layer.backward(dout)
        if cache is None:
            want_dx = Fp.avg_pool2d_backward(dout, avg_cache(case["x"], k, s, p))
            ref_dx = R.avg_pool2d_backward(case["x"], dout_host, k, s, p)
        else:
            want_dx = Fp.max_pool2d_backward(dout, cache)
            ref_dx = R.max_pool2d_backward(x_host, dout_host, k, s, p)
        check_array(backend, dx, B.to_numpy(want_dx), dtype, f"{type(layer).__name__} dx", tol=tol)
        R.assert_close(B.to_numpy(dx), ref_dx, dtype, what=f"{type(layer).__name__} dx vs loop")
        np.testing.assert_array_equal(B.to_numpy(dout), dout_host)  # backward never modifies dout


def test_pool_layer_stride_defaults_to_kernel(backend, rng):
    layer = MaxPool2D((2, 3))
    assert layer.stride == (2, 3)
    y = layer.forward(B.asarray(rng.standard_normal((1, 1, 4, 9))))
    assert tuple(y.shape) == (1, 1, 2, 3) == layer.output_shape((1, 1, 4, 9))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_pool_layer_gradcheck(backend, cls, rng):
    layer = cls(3, 2, 1)
    x = B.asarray(R.distinct_values(rng, (1, 2, 5, 7)))
    result = xpcnn.gradcheck(layer, x)
    assert result.ok and set(result.max_abs_error) == {"x"}


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_pool_layer_backward_needs_train_forward(backend, cls):
    layer = cls(2)
    x = B.asarray(np.zeros((1, 1, 4, 4)))
    layer.forward(x)
    with pytest.raises(RuntimeError, match=f"{cls.__name__}.backward called before forward"):
        layer.backward(B.asarray(np.zeros((1, 1, 2, 2))))


# ----------------------------------------------------------------------------- cross-lane identity

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [CASES[2], CASES[4]])
def test_pool_ops_equal_numpy_lane(backend, case, dtype, rng):
    x = values("ties", case["x"], rng, dtype)  # ties: the gradient routing must agree exactly too
    k, s, p = geom(case)

    def run(be):
        xs = B.asarray(x, backend=be)
        y, cache = Fp.max_pool2d_forward(xs, k, s, p)
        dout = B.asarray(np.sin(np.arange(np.prod(y.shape))).reshape(tuple(y.shape)).astype(dtype), backend=be)
        return {"max y": y, "max dx": Fp.max_pool2d_backward(dout, cache),
                "avg y": Fp.avg_pool2d(xs, k, s, p),
                "avg dx": Fp.avg_pool2d_backward(dout, avg_cache(case["x"], k, s, p))}

    ref = {name: B.to_numpy(v) for name, v in run("numpy").items()}
    for name, value in run(backend).items():
        tol = 0.0 if name.startswith("max") else {"float64": 1e-12, "float32": 1e-6}[dtype]
        check_array(backend, value, ref[name], dtype, f"{name} vs numpy lane", tol=tol)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_rejects_bad_input(backend, op):
    pool = Fp.max_pool2d if op == "max" else Fp.avg_pool2d
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) \(4-D\), got shape \(3, 4, 4\) \(3-D\)"):
        pool(B.asarray(np.zeros((3, 4, 4))), 2)
    x = B.asarray(np.zeros((1, 1, 5, 4)))
    with pytest.raises(ValueError, match=r"pooling padding must be at most half the kernel: kernel \(3, 3\), "
                                         r"got padding \(2, 2\)"):
        pool(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"kernel extent 6 along height is larger than the padded input "
                                         r"\(5 \+ 2\*0 = 5\)"):
        pool(x, 6, 1)
    with pytest.raises(TypeError, match=r"x must be a real floating array .*got dtype \S*int64"):
        pool(B.asarray(np.zeros((1, 1, 4, 4), dtype=np.int64)), 2)
    layer = MaxPool2D(2) if op == "max" else AvgPool2D(2)
    with pytest.raises(ValueError, match=r"(Max|Avg)Pool2D input must be \(N, C, H, W\) \(4-D\), got shape "
                                         r"\(4, 4\)"):
        layer.forward(B.asarray(np.zeros((4, 4))))


def test_pool_backward_rejects_wrong_dout_shape(backend):
    x = B.asarray(np.zeros((2, 3, 4, 4)))
    y, cache = Fp.max_pool2d_forward(x, 2)
    bad = B.asarray(np.zeros((2, 3, 2, 3)))
    pattern = r"dout must have the forward output's shape \(2, 3, 2, 2\), got \(2, 3, 2, 3\)"
    with pytest.raises(ValueError, match=pattern):
        Fp.max_pool2d_backward(bad, cache)
    with pytest.raises(ValueError, match=pattern):
        Fp.avg_pool2d_backward(bad, avg_cache((2, 3, 4, 4), 2))


def test_max_pool_backward_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 1, 4, 4))
    _, cache = Fp.max_pool2d_forward(x, 2)
    dout = torch.zeros((1, 1, 2, 2), dtype=torch.float64)
    with pytest.raises(TypeError, match=r"different backends cannot be mixed: got numpy\.ndarray, torch\.Tensor"):
        Fp.max_pool2d_backward(dout, cache)


# ----------------------------------------------------------------------------- PyTorch output sizes

FLOOR_CASES = [  # (x shape, kernel, stride, padding): windows that do not tile the input
    ((2, 2, 7, 7), 2, None, 0),      # MaxPool2D(2) on 7x7 -> 3x3
    ((1, 3, 5, 4), 2, None, 0),
    ((1, 2, 8, 9), 3, 2, 1),
    ((2, 1, 6, 7), (3, 2), (2, 3), (1, 0)),
]


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("x_shape, kernel, stride, padding", FLOOR_CASES)
def test_pool_floor_and_ceil_mode_match_loop_reference(backend, x_shape, kernel, stride, padding, ceil_mode, rng):
    """Output sizes by PyTorch's rules, values and gradients against the loop reference; the rows and columns
    no window reaches get a zero gradient."""
    x = values("ties", x_shape, rng, "float64")
    k = R._pair(kernel)
    s = k if stride is None else R._pair(stride)
    p = R._pair(padding)
    want_out = tuple(R.out_len(x_shape[2 + a], k[a], s[a], p[a], 1, ceil_mode) for a in range(2))
    for name, fwd, bwd, ref, ref_bwd in (
            ("max", Fp.max_pool2d_forward, Fp.max_pool2d_backward, lambda: R.max_pool2d(x, kernel, stride, padding,
                                                                                         ceil_mode)[0],
             lambda d: R.max_pool2d_backward(x, d, kernel, stride, padding, ceil_mode)),
            ("avg", Fp.avg_pool2d_forward, Fp.avg_pool2d_backward, lambda: R.avg_pool2d(x, kernel, stride, padding,
                                                                                         ceil_mode),
             lambda d: R.avg_pool2d_backward(x_shape, d, kernel, stride, padding, ceil_mode))):
        y, cache = fwd(B.asarray(x), kernel, stride, padding, ceil_mode)
        assert tuple(y.shape) == (*x_shape[:2], *want_out), name
        check_array(backend, y, ref(), "float64", f"{name} y")
        dout = rng.standard_normal(tuple(y.shape))
        dx = bwd(B.asarray(dout), cache)
        check_array(backend, dx, ref_bwd(dout), "float64", f"{name} dx")


def test_pool_ceil_mode_layers_and_sizes(backend):
    """ceil_mode keeps the partial last window unless it would start in the right padding (PyTorch's rule)."""
    x = B.asarray(np.zeros((1, 1, 7, 7)), dtype="float32")
    assert tuple(MaxPool2D(2)(x).shape) == (1, 1, 3, 3)
    assert tuple(MaxPool2D(2, ceil_mode=True)(x).shape) == (1, 1, 4, 4)
    assert tuple(AvgPool2D(3, 2, 1, ceil_mode=True)(x).shape) == (1, 1, 4, 4)
    # 5 + 2*1 - 2 = 5, /3 -> ceil 2 (+1 = 3), but the 3rd window would start at 2*3 = 6 = H + P: dropped
    assert tuple(AvgPool2D(2, 3, 1, ceil_mode=True)(B.asarray(np.zeros((1, 1, 5, 5)), dtype="float32")).shape) \
        == (1, 1, 2, 2)
    assert MaxPool2D(2, ceil_mode=True).config()["ceil_mode"] is True
    assert "ceil_mode" not in MaxPool2D(2).config()


# ----------------------------------------------------------------------------- global average pooling

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 7, 1)])
def test_global_avg_pool_matches_loops(backend, shape, dtype, rng):
    """Oracle: explicit sums over each map; the gradient of ``sum(y * dout)`` by the same loops."""
    x = rng.standard_normal(shape).astype(dtype)
    N, C, H, W = shape
    want = np.zeros((N, C))
    for n in range(N):
        for c in range(C):
            want[n, c] = sum(float(x[n, c, h, w]) for h in range(H) for w in range(W)) / (H * W)
    y, cache = Fp.global_avg_pool2d_forward(B.asarray(x))
    assert tuple(y.shape) == (N, C) and y.dtype == getattr(backend.xp, dtype)
    R.assert_close(B.to_numpy(y), want, dtype, what="y")
    dout = rng.standard_normal((N, C)).astype(dtype)
    dx = Fp.global_avg_pool2d_backward(B.asarray(dout), cache)
    assert tuple(dx.shape) == shape and dx.dtype == getattr(backend.xp, dtype)
    want_dx = np.zeros(shape)
    for n, c, h, w in np.ndindex(*shape):
        want_dx[n, c, h, w] = dout[n, c] / (H * W)
    R.assert_close(B.to_numpy(dx), want_dx, dtype, what="dx")
    layer = GlobalAvgPool2D()
    np.testing.assert_array_equal(B.to_numpy(layer.forward(B.asarray(x), train=True)), B.to_numpy(y))
    np.testing.assert_array_equal(B.to_numpy(layer.backward(B.asarray(dout))), B.to_numpy(dx))
    assert xpcnn.gradcheck(layer, B.asarray(rng.standard_normal(shape))).ok


def test_global_avg_pool_rejects_bad_input(backend):
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\) \(4-D\), got shape \(2, 3\)"):
        Fp.global_avg_pool2d(B.asarray(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D input must be \(N, C, H, W\)"):
        GlobalAvgPool2D().forward(B.asarray(np.zeros((2, 3))))
    y, cache = Fp.global_avg_pool2d_forward(B.asarray(np.zeros((2, 3, 2, 2))))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\), got \(3, 2\)"):
        Fp.global_avg_pool2d_backward(B.asarray(np.zeros((3, 2))), cache)
    assert GlobalAvgPool2D().output_shape((5, 4, 3, 3)) == (5, 4)
