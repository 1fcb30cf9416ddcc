"""Batch normalisation, functional and layers: train/eval forward, running statistics, gradients.

Oracles: the formulas written out in NumPy (biased batch variance for the
normalisation, unbiased for the running value), ``torch.nn.functional.batch_norm``
where installed, and central differences (:func:`xpcnn.gradcheck`, float64).
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck
from xpcnn.layers import BatchNorm1D, BatchNorm2D

EPS = 1e-5
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-11, atol=1e-12)}
SHAPES = [(8, 5), (4, 3, 3, 2)]


def _axes(shape):
    return (0,) if len(shape) == 2 else (0, 2, 3)


def _bshape(shape):
    return (1, shape[1]) if len(shape) == 2 else (1, shape[1], 1, 1)


def _np_train(x, gamma, beta, rm, rv, momentum, eps=EPS):
    """Per-feature loop: no broadcasting tricks shared with the implementation."""
    c = x.shape[1]
    y = np.empty_like(x)
    new_rm, new_rv = np.empty(c), np.empty(c)
    for k in range(c):
        v = x[:, k, ...]
        mu = v.mean()
        var_biased = ((v - mu) ** 2).mean()
        var_unbiased = v.var(ddof=1)
        y[:, k, ...] = gamma[k] * (v - mu) / np.sqrt(var_biased + eps) + beta[k]
        new_rm[k] = (1 - momentum) * rm[k] + momentum * mu
        new_rv[k] = (1 - momentum) * rv[k] + momentum * var_unbiased
    return y, new_rm, new_rv


def _np_eval(x, gamma, beta, rm, rv, eps=EPS):
    c = x.shape[1]
    y = np.empty_like(x)
    for k in range(c):
        y[:, k, ...] = gamma[k] * (x[:, k, ...] - rm[k]) / np.sqrt(rv[k] + eps) + beta[k]
    return y


def _random_state(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 0.5
    return (x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c) * 0.3,
            rng.uniform(0.5, 2.0, c))


def _put(dtype, *hosts):
    return [B.asarray(h, dtype=dtype) for h in hosts]


# ---------------------------------------------------------------------------------------- functional

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_and_running_update(backend, rng, dtype, shape):
    hosts = _random_state(rng, shape)
    hosts = [h.astype(dtype).astype(np.float64) for h in hosts]
    x, g, b, rm, rv = _put(dtype, *hosts)
    momentum = 0.3
    (y, cache), new_rm, new_rv = F.batch_norm_forward(x, g, b, rm, rv, True, momentum, EPS), rm, rv
    ey, erm, erv = _np_train(*hosts, momentum)
    for arr, exp in ((y, ey), (new_rm, erm), (new_rv, erv)):
        assert tuple(arr.shape) == exp.shape and arr.dtype == getattr(backend.xp, dtype)
        np.testing.assert_allclose(B.to_numpy(arr), exp, **TOL[dtype])
    assert cache.train is True
    # the other inputs are untouched; the running statistics are updated in place (as torch's batch_norm does)
    for arr, host in ((x, hosts[0]), (g, hosts[1]), (b, hosts[2])):
        np.testing.assert_array_equal(B.to_numpy(arr), host)
    assert not np.allclose(B.to_numpy(rm), hosts[3]) and not np.allclose(B.to_numpy(rv), hosts[4])


@pytest.mark.parametrize("shape", SHAPES)
def test_train_output_statistics(backend, rng, shape):
    """With gamma=1, beta=0 each feature of y has mean 0 and biased variance var/(var+eps)."""
    x_host = rng.standard_normal(shape) * 3.0
    c = shape[1]
    x, g, b, rm, rv = _put("float64", x_host, np.ones(c), np.zeros(c), np.zeros(c), np.ones(c))
    y = B.to_numpy(F.batch_norm_forward(x, g, b, rm, rv, True)[0])
    axes = _axes(shape)
    var = x_host.var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), var / (var + EPS), rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_uses_running_statistics(backend, rng, dtype, shape):
    hosts = [h.astype(dtype).astype(np.float64) for h in _random_state(rng, shape)]
    x, g, b, rm, rv = _put(dtype, *hosts)
    (y, cache), new_rm, new_rv = F.batch_norm_forward(x, g, b, rm, rv, False), rm, rv
    assert tuple(y.shape) == shape and y.dtype == getattr(backend.xp, dtype)
    np.testing.assert_allclose(B.to_numpy(y), _np_eval(*hosts), **TOL[dtype])
    np.testing.assert_array_equal(B.to_numpy(new_rm), hosts[3])
    np.testing.assert_array_equal(B.to_numpy(new_rv), hosts[4])
    assert cache.train is False


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES)
def test_functional_gradcheck(backend, rng, shape, train):
    x, g, b, rm, rv = _put("float64", *_random_state(rng, shape))

    def f(x, g, b):
        (y, cache), _, _ = F.batch_norm_forward(x, g, b, rm, rv, train), rm, rv
        return y, lambda dout: F.batch_norm_backward(dout, cache)

    result = gradcheck(f, [x, g, b])
    assert result.ok and len(result.max_abs_error) == 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_shapes_dtypes_and_dout_untouched(backend, rng, dtype, shape):
    x, g, b, rm, rv = _put(dtype, *_random_state(rng, shape))
    _, cache = F.batch_norm_forward(x, g, b, rm, rv, True)
    dout = B.asarray(rng.standard_normal(shape), dtype=dtype)
    before = B.to_numpy(dout).copy()
    dx, dg, db = F.batch_norm_backward(dout, cache)
    c = shape[1]
    for arr, shp in ((dx, shape), (dg, (c,)), (db, (c,))):
        assert tuple(arr.shape) == shp and arr.dtype == getattr(backend.xp, dtype)
    np.testing.assert_array_equal(B.to_numpy(dout), before)
    # train-mode dx is orthogonal to constants per feature: sum over the statistics axes is 0
    np.testing.assert_allclose(B.to_numpy(dx).sum(axis=_axes(shape)), 0.0,
                               atol=1e-4 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(B.to_numpy(db), before.sum(axis=_axes(shape)), **TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_against_torch_batch_norm(rng, shape):
    torch = pytest.importorskip("torch")
    x_h, g_h, b_h, rm_h, rv_h = _random_state(rng, shape)
    dout_h = rng.standard_normal(shape)
    with B.using("numpy"):
        x, g, b, rm, rv = _put("float64", x_h, g_h, b_h, rm_h, rv_h)
        (y, cache), nrm, nrv = F.batch_norm_forward(x, g, b, rm, rv, True, 0.1, EPS), rm, rv
        dx, dg, db = F.batch_norm_backward(B.asarray(dout_h, dtype="float64"), cache)
    xt = torch.tensor(x_h, requires_grad=True)
    gt, bt = torch.tensor(g_h, requires_grad=True), torch.tensor(b_h, requires_grad=True)
    rmt, rvt = torch.tensor(rm_h), torch.tensor(rv_h)
    yt = torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=EPS)
    yt.backward(torch.tensor(dout_h))
    np.testing.assert_allclose(B.to_numpy(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B.to_numpy(nrm), rmt.numpy(), rtol=1e-12)
    np.testing.assert_allclose(B.to_numpy(nrv), rvt.numpy(), rtol=1e-12)
    np.testing.assert_allclose(B.to_numpy(dx), xt.grad.numpy(), rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(B.to_numpy(dg), gt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B.to_numpy(db), bt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_functional_argument_errors(backend, rng):
    x, g, b, rm, rv = _put("float64", *_random_state(rng, (6, 4)))
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        F.batch_norm_forward(x, B.asarray(np.ones(3), dtype="float64"), b, rm, rv, True)
    with pytest.raises(ValueError, match="more than one value per feature"):
        F.batch_norm_forward(B.asarray(np.ones((1, 4)), dtype="float64"), g, b, rm, rv, True)
    with pytest.raises(ValueError, match=r"\(N, D\) or \(N, C, H, W\)"):
        F.batch_norm_forward(B.asarray(np.ones((2, 4, 3)), dtype="float64"), g, b, rm, rv, True)
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.batch_norm_forward(x, B.asarray(np.ones(4), dtype="float32"), b, rm, rv, True)
    # a single sample is fine in eval mode
    y1 = F.batch_norm_forward(B.asarray(np.ones((1, 4)), dtype="float64"), g, b, rm, rv, False)[0]
    assert tuple(y1.shape) == (1, 4)


# -------------------------------------------------------------------------------------------- layers

LAYERS = [(BatchNorm1D, (10, 4)), (BatchNorm2D, (3, 4, 3, 3))]


@pytest.mark.parametrize("cls,shape", LAYERS, ids=["1d", "2d"])
def test_layer_defaults(backend, cls, shape):
    layer = cls(shape[1])
    c = shape[1]
    assert set(layer.params) == {"gamma", "beta"} and set(layer.buffers) == {"running_mean", "running_var"}
    for store in (layer.params, layer.buffers):
        for value in store.values():
            assert tuple(value.shape) == (c,) and value.dtype == backend.xp.float32
    np.testing.assert_array_equal(B.to_numpy(layer.params["gamma"]), np.ones(c))
    np.testing.assert_array_equal(B.to_numpy(layer.params["beta"]), np.zeros(c))
    np.testing.assert_array_equal(B.to_numpy(layer.buffers["running_mean"]), np.zeros(c))
    np.testing.assert_array_equal(B.to_numpy(layer.buffers["running_var"]), np.ones(c))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,shape", LAYERS, ids=["1d", "2d"])
def test_layer_train_steps_then_eval(backend, rng, cls, shape, dtype):
    momentum = 0.2
    c = shape[1]
    layer = cls(c, momentum=momentum, dtype=dtype)
    g_h, b_h = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    layer.params["gamma"], layer.params["beta"] = _put(dtype, g_h, b_h)
    g_h, b_h = g_h.astype(dtype).astype(np.float64), b_h.astype(dtype).astype(np.float64)
    rm_h, rv_h = np.zeros(c), np.ones(c)
    for step in range(3):
        x_h = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype).astype(np.float64)
        y = layer.forward(B.asarray(x_h, dtype=dtype), train=True)
        ey, rm_h, rv_h = _np_train(x_h, g_h, b_h, rm_h, rv_h, momentum)
        assert tuple(y.shape) == shape and y.dtype == getattr(backend.xp, dtype)
        np.testing.assert_allclose(B.to_numpy(y), ey, **TOL[dtype])
        for key, exp in (("running_mean", rm_h), ("running_var", rv_h)):
            got = layer.buffers[key]
            assert got.dtype == getattr(backend.xp, dtype)
            np.testing.assert_allclose(B.to_numpy(got), exp, **TOL[dtype])
    x_h = (rng.standard_normal(shape)).astype(dtype).astype(np.float64)
    y = layer.forward(B.asarray(x_h, dtype=dtype), train=False)
    np.testing.assert_allclose(B.to_numpy(y), _np_eval(x_h, g_h, b_h, rm_h, rv_h), **TOL[dtype])
    # eval does not move the running statistics
    np.testing.assert_allclose(B.to_numpy(layer.buffers["running_mean"]), rm_h, **TOL[dtype])
    # eval-mode forward keeps no cache: backward must refuse
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(B.asarray(np.ones(shape), dtype=dtype))


@pytest.mark.parametrize("cls,shape", LAYERS, ids=["1d", "2d"])
def test_layer_gradcheck_train(backend, rng, cls, shape):
    layer = cls(shape[1], dtype="float64")
    x_h, g_h, b_h, _, _ = _random_state(rng, shape)
    layer.params["gamma"], layer.params["beta"] = _put("float64", g_h, b_h)
    result = gradcheck(layer, B.asarray(x_h, dtype="float64"))
    assert result.ok and set(result.max_abs_error) == {"x", "gamma", "beta"}


@pytest.mark.parametrize("cls,shape", LAYERS, ids=["1d", "2d"])
def test_layer_backward_matches_eval_formula(backend, rng, cls, shape):
    """Eval-mode gradient of a layer with trained statistics, via the functional op it wraps."""
    c = shape[1]
    layer = cls(c, dtype="float64")
    layer.forward(B.asarray(rng.standard_normal(shape) * 2 + 1, dtype="float64"), train=True)
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    g, b = layer.params["gamma"], layer.params["beta"]
    x = B.asarray(rng.standard_normal(shape), dtype="float64")
    dout_h = rng.standard_normal(shape)
    (_, cache), _, _ = F.batch_norm_forward(x, g, b, rm, rv, False, layer.momentum, layer.eps), rm, rv
    dx, dg, db = F.batch_norm_backward(B.asarray(dout_h, dtype="float64"), cache)
    scale = B.to_numpy(g) / np.sqrt(B.to_numpy(rv) + EPS)
    np.testing.assert_allclose(B.to_numpy(dx), dout_h * scale.reshape(_bshape(shape)), rtol=1e-12)
    xhat = (B.to_numpy(x) - B.to_numpy(rm).reshape(_bshape(shape))) / np.sqrt(B.to_numpy(rv) + EPS).reshape(
        _bshape(shape))
    np.testing.assert_allclose(B.to_numpy(dg), (dout_h * xhat).sum(axis=_axes(shape)), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(B.to_numpy(db), dout_h.sum(axis=_axes(shape)), rtol=1e-12, atol=1e-13)


def test_layer_input_errors(backend, rng):
    layer = BatchNorm2D(3)
    with pytest.raises(ValueError, match="got 4 channels"):
        layer.forward(B.asarray(rng.standard_normal((2, 4, 2, 2)), dtype="float32"), train=True)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        layer.forward(B.asarray(rng.standard_normal((2, 3)), dtype="float32"), train=True)
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(B.asarray(rng.standard_normal((2, 3, 2, 2)), dtype="float64"), train=True)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        BatchNorm1D(3).forward(B.asarray(rng.standard_normal((2, 3, 2, 2)), dtype="float32"), train=True)
