"""PyTorch as an independent oracle: ``torch.nn.functional`` forward values and autograd gradients.

Each xpcnn op runs on every backend lane; the same host inputs go through
``torch.nn.functional`` on the CPU, and ``(y * dout).sum().backward()`` gives the
reference gradients.  Compared: conv2d (stride/padding/dilation, bias),
max_pool2d (first-maximum rule: PyTorch's CPU kernel agrees, ties included),
avg_pool2d (count_include_pad=True), batch_norm (train and eval, running
statistics) and cross-entropy (mean reduction), in float64 and float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import avg_cache

from xpcnn import backend as B
from xpcnn.functional import conv as Fc
from xpcnn.functional import loss as Fl
from xpcnn.functional import norm as Fn
from xpcnn.functional import pool as Fp

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R

torch = pytest.importorskip("torch")
TF = torch.nn.functional

DTYPES = ["float64", "float32"]
TOL = {"float64": 1e-10, "float32": 1e-5}


def tt(host, dtype, grad=True):
    """A CPU torch tensor copy of a host array (a leaf that records gradients)."""
    return torch.tensor(np.asarray(host), dtype=getattr(torch, dtype), requires_grad=grad)


def check(be, got, want, dtype, what, tol=None):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert tuple(got.shape) == want.shape, f"{what}: shape {tuple(got.shape)}, expected {want.shape}"
    assert got.dtype == getattr(be.xp, dtype), f"{what}: dtype {got.dtype}, expected {dtype} on {be.name}"
    R.assert_close(B.to_numpy(got), want, dtype, tol=TOL[dtype] if tol is None else tol, what=what)


# ----------------------------------------------------------------------------- conv2d

CONV_CASES = [  # (x shape, W shape, stride, padding, dilation): all tile exactly
    ((2, 3, 6, 6), (4, 3, 3, 3), 1, 1, 1),
    ((2, 2, 7, 9), (3, 2, 3, 2), (2, 1), (1, 0), (1, 2)),
    ((1, 3, 7, 10), (2, 3, 3, 3), 3, 2, 2),
    ((3, 1, 5, 8), (2, 1, 2, 3), (1, 3), (0, 2), (2, 1)),
    ((2, 4, 4, 4), (5, 4, 1, 1), 1, 0, 1),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV_CASES)
def test_conv2d_vs_torch(backend, xs, ws, stride, padding, dilation, dtype, bias, rng):
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    xt, Wt, bt = tt(x, dtype), tt(W, dtype), tt(b, dtype)
    yt = TF.conv2d(xt, Wt, bt if bias else None, stride=stride, padding=padding, dilation=dilation)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()

    y, cache = Fc.conv2d_forward(B.asarray(x), B.asarray(W), B.asarray(b) if bias else None, stride, padding,
                               dilation)
    check(backend, y, yt, dtype, "y")
    dx, dW, db = Fc.conv2d_backward(B.asarray(dout), cache)
    check(backend, dx, xt.grad, dtype, "dx")
    check(backend, dW, Wt.grad, dtype, "dW")
    if bias:
        check(backend, db, bt.grad, dtype, "db")


# ----------------------------------------------------------------------------- pooling

POOL_CASES = [  # (x shape, kernel, stride, padding)
    ((2, 2, 4, 6), 2, 2, 0),
    ((1, 3, 5, 5), 3, 1, 1),  # overlapping + padding
    ((2, 1, 7, 5), 3, 2, 1),
    ((1, 2, 4, 5), (2, 3), (2, 1), (1, 1)),
    ((2, 2, 6, 6), 4, 2, 2),
]


def pool_input(kind, shape, rng, dtype):
    if kind == "distinct":
        return R.distinct_values(rng, shape).astype(dtype)
    if kind == "ties":
        return rng.integers(-1, 2, size=shape).astype(dtype)
    return np.full(shape, -3.0, dtype=dtype)


@pytest.mark.parametrize("kind", ["distinct", "ties", "const"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, k, s, p", POOL_CASES)
def test_max_pool2d_vs_torch(backend, xs, k, s, p, dtype, kind, rng):
    """Ties included: PyTorch's CPU max_pool2d also routes the gradient to the first maximum
    (row-major in the window); checked on this machine for torch 2.13 CPU, contiguous NCHW."""
    x = pool_input(kind, xs, rng, dtype)
    xt = tt(x, dtype)
    yt = TF.max_pool2d(xt, k, s, p)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()
    y, cache = Fp.max_pool2d_forward(B.asarray(x), k, s, p)
    check(backend, y, yt, dtype, "y", tol=0.0)
    dx = Fp.max_pool2d_backward(B.asarray(dout), cache)
    check(backend, dx, xt.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, k, s, p", POOL_CASES)
def test_avg_pool2d_vs_torch(backend, xs, k, s, p, dtype, rng):
    x = rng.standard_normal(xs).astype(dtype)
    xt = tt(x, dtype)
    yt = TF.avg_pool2d(xt, k, s, p, count_include_pad=True)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()
    check(backend, Fp.avg_pool2d(B.asarray(x), k, s, p), yt, dtype, "y")
    check(backend, Fp.avg_pool2d_backward(B.asarray(dout), avg_cache(xs, k, s, p)), xt.grad, dtype, "dx")


# ----------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("momentum", [0.1, 0.35])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs", [(6, 5), (3, 4, 3, 2)], ids=["2d", "4d"])
def test_batch_norm_vs_torch(backend, xs, dtype, train, momentum, rng):
    C = xs[1]
    x = (2.0 + 3.0 * rng.standard_normal(xs)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    rmean = rng.standard_normal(C).astype(dtype)
    rvar = rng.uniform(0.5, 2.0, C).astype(dtype)
    eps = 1e-5

    xt, gt, bt = tt(x, dtype), tt(gamma, dtype), tt(beta, dtype)
    rmt, rvt = tt(rmean, dtype, grad=False), tt(rvar, dtype, grad=False)  # updated in place by torch
    yt = TF.batch_norm(xt, rmt, rvt, gt, bt, training=train, momentum=momentum, eps=eps)
    dout = rng.standard_normal(xs).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()

    new_mean, new_var = B.asarray(rmean), B.asarray(rvar)  # updated in place in train mode
    y, cache = Fn.batch_norm_forward(B.asarray(x), B.asarray(gamma), B.asarray(beta), new_mean, new_var, train,
                                     momentum=momentum, eps=eps)
    check(backend, y, yt, dtype, "y")
    check(backend, new_mean, rmt, dtype, "running_mean")
    check(backend, new_var, rvt, dtype, "running_var")
    if train:  # the oracle really moved the statistics, so the comparison above is not vacuous
        assert not np.allclose(rmt.numpy(), rmean) and not np.allclose(rvt.numpy(), rvar)
    dx, dgamma, dbeta = Fn.batch_norm_backward(B.asarray(dout), cache)
    # dx in train mode is a difference of O(1) terms: scale the float32 tolerance accordingly
    check(backend, dx, xt.grad, dtype, "dx", tol=TOL[dtype] * (4 if dtype == "float32" else 1))
    check(backend, dgamma, gt.grad, dtype, "dgamma")
    check(backend, dbeta, bt.grad, dtype, "dbeta")


# ----------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c, scale", [(5, 3, 1.0), (8, 10, 4.0), (4, 6, 60.0)])
def test_softmax_cross_entropy_vs_torch(backend, n, c, scale, dtype, rng):
    logits = (scale * rng.standard_normal((n, c))).astype(dtype)
    labels = rng.integers(0, c, size=n).astype(np.int64)
    lt = tt(logits, dtype)
    loss_t = TF.cross_entropy(lt, torch.tensor(labels), reduction="mean")
    loss_t.backward()

    labels_b = B.asarray(labels)
    loss, probs = Fl.softmax_cross_entropy(B.asarray(logits), labels_b)
    assert tuple(loss.shape) == ()
    assert loss.dtype == getattr(backend.xp, dtype)
    R.assert_close(float(loss), float(loss_t.detach()), dtype, what="loss")
    check(backend, probs, torch.softmax(lt, dim=1), dtype, "probs")
    check(backend, Fl.softmax_cross_entropy_backward(probs, labels_b), lt.grad, dtype, "dlogits")


# ----------------------------------------------------------------------------- conv2d: random geometries

def _random_conv_cases(count, seed=2024):
    """Random grouped/depthwise/dilated/strided geometries with odd sizes, drawn once (seeded) at import."""
    r = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        groups = int(r.choice([1, 2, 3, 4]))
        depthwise = len(cases) % 3 == 1
        cg = 1 if depthwise else int(r.integers(1, 3))
        fg = int(r.integers(1, 3))
        C, F = groups * cg, groups * fg
        KH, KW = (int(v) for v in r.integers(1, 4, size=2))
        stride = tuple(int(v) for v in r.integers(1, 3, size=2))
        padding = tuple(int(v) for v in r.integers(0, 3, size=2))
        dilation = tuple(int(v) for v in r.integers(1, 3, size=2))
        H, W = (int(v) for v in r.integers(3, 10, size=2))
        if min(H + 2 * padding[0] - dilation[0] * (KH - 1), W + 2 * padding[1] - dilation[1] * (KW - 1)) < 1:
            continue
        cases.append(((int(r.integers(1, 4)), C, H, W), (F, cg, KH, KW), stride, padding, dilation, groups,
                      bool(r.integers(0, 2))))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups, bias", _random_conv_cases(9))
def test_grouped_conv2d_vs_torch(backend, xs, ws, stride, padding, dilation, groups, bias, dtype, rng):
    """Values and autograd gradients, random geometries including groups, depthwise, dilation, stride 2, no bias."""
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    xt, Wt, bt = tt(x, dtype), tt(W, dtype), tt(b, dtype)
    yt = TF.conv2d(xt, Wt, bt if bias else None, stride=stride, padding=padding, dilation=dilation, groups=groups)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()
    y, cache = Fc.conv2d_forward(B.asarray(x), B.asarray(W), B.asarray(b) if bias else None, stride, padding,
                                 dilation, groups)
    check(backend, y, yt, dtype, "y")
    dx, dW, db = Fc.conv2d_backward(B.asarray(dout), cache)
    check(backend, dx, xt.grad, dtype, "dx")
    check(backend, dW, Wt.grad, dtype, "dW")
    if bias:
        check(backend, db, bt.grad, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs", [(2, 3, 5, 4), (1, 4, 1, 3)])
def test_global_avg_pool2d_vs_torch(backend, xs, dtype, rng):
    x = rng.standard_normal(xs).astype(dtype)
    xt = tt(x, dtype)
    yt = TF.adaptive_avg_pool2d(xt, 1).flatten(1)
    dout = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * tt(dout, dtype, grad=False)).sum().backward()
    y, cache = Fp.global_avg_pool2d_forward(B.asarray(x))
    check(backend, y, yt, dtype, "y")
    check(backend, Fp.global_avg_pool2d_backward(B.asarray(dout), cache), xt.grad, dtype, "dx")
