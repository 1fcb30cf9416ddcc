"""Dense math: ``y = x @ W + b`` with ``W: (in, out)``; backward vs formulas, gradcheck and torch."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck
from xpcnn.layers import Dense

TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def _np_matmul(a, b):
    """Triple loop: an oracle that does not share the implementation's matmul."""
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


def _q(h, dtype):
    return h.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward(backend, rng, dtype, bias):
    n, d_in, d_out = 5, 7, 3
    x_h, W_h, b_h = rng.standard_normal((n, d_in)), rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)
    x, W = B.asarray(x_h, dtype=dtype), B.asarray(W_h, dtype=dtype)
    b = B.asarray(b_h, dtype=dtype) if bias else None
    b_before = None if b is None else B.to_numpy(b).copy()
    y = F.dense(x, W, b)
    assert tuple(y.shape) == (n, d_out) and y.dtype == getattr(backend.xp, dtype)
    expected = _np_matmul(_q(x_h, dtype), _q(W_h, dtype)) + (_q(b_h, dtype) if bias else 0.0)
    np.testing.assert_allclose(B.to_numpy(y), expected, **TOL[dtype])
    if bias:  # the bias add must not write into b
        np.testing.assert_array_equal(B.to_numpy(b), b_before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("need_dx", [True, False])
def test_backward_formulas(backend, rng, dtype, need_dx):
    n, d_in, d_out = 4, 6, 3
    x_h, W_h, d_h = rng.standard_normal((n, d_in)), rng.standard_normal((d_in, d_out)), rng.standard_normal((n, d_out))
    x, W, dout = (B.asarray(h, dtype=dtype) for h in (x_h, W_h, d_h))
    before = B.to_numpy(dout).copy()
    dx, dW, db = F.dense_backward(dout, (x, W), need_dx=need_dx)
    xq, Wq, dq = _q(x_h, dtype), _q(W_h, dtype), _q(d_h, dtype)
    assert tuple(dW.shape) == (d_in, d_out) and dW.dtype == getattr(backend.xp, dtype)
    assert tuple(db.shape) == (d_out,) and db.dtype == getattr(backend.xp, dtype)
    np.testing.assert_allclose(B.to_numpy(dW), _np_matmul(xq.T, dq), **TOL[dtype])
    np.testing.assert_allclose(B.to_numpy(db), dq.sum(axis=0), **TOL[dtype])
    if need_dx:
        assert tuple(dx.shape) == (n, d_in) and dx.dtype == getattr(backend.xp, dtype)
        np.testing.assert_allclose(B.to_numpy(dx), _np_matmul(dq, Wq.T), **TOL[dtype])
    else:
        assert dx is None
    np.testing.assert_array_equal(B.to_numpy(dout), before)


def test_gradcheck(backend, rng):
    x, W, b = (B.asarray(rng.standard_normal(s), dtype="float64") for s in ((3, 4), (4, 5), (5,)))

    def f(x, W, b):
        return F.dense(x, W, b), lambda dout: F.dense_backward(dout, (x, W))

    result = gradcheck(f, [x, W, b])
    assert result.ok and len(result.max_abs_error) == 3


def test_against_torch_linear(rng):
    torch = pytest.importorskip("torch")
    x_h, W_h, b_h = rng.standard_normal((6, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    with B.using("numpy"):
        y = B.to_numpy(F.dense(*(B.asarray(h, dtype="float64") for h in (x_h, W_h, b_h))))
    # torch's Linear stores weight as (out, in): ours is its transpose
    ref = torch.nn.functional.linear(torch.from_numpy(x_h), torch.from_numpy(W_h.T.copy()), torch.from_numpy(b_h))
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-12, atol=1e-13)


def test_layer_weight_is_in_by_out(backend, rng):
    layer = Dense(7, 3, rng=0)
    assert tuple(layer.params["W"].shape) == (7, 3) and tuple(layer.params["b"].shape) == (3,)
    assert layer.params["W"].dtype == backend.xp.float32
    x_h = rng.standard_normal((2, 7))
    y = layer.forward(B.asarray(x_h, dtype="float32"))
    W_h = B.to_numpy(layer.params["W"]).astype(np.float64)
    np.testing.assert_allclose(B.to_numpy(y), _q(x_h, "float32") @ W_h, rtol=1e-5, atol=1e-6)
    assert Dense(7, 3, bias=False).params.keys() == {"W"}


def test_layer_need_input_grad_false(backend, rng):
    layer = Dense(4, 2, dtype="float64", rng=1)
    layer.need_input_grad = False
    layer.forward(B.asarray(rng.standard_normal((3, 4)), dtype="float64"), train=True)
    d_h = rng.standard_normal((3, 2))
    assert layer.backward(B.asarray(d_h, dtype="float64")) is None
    np.testing.assert_allclose(B.to_numpy(layer.grads["b"]), d_h.sum(axis=0), rtol=1e-12)
    assert tuple(layer.grads["W"].shape) == (4, 2)


def test_errors(backend, rng):
    x = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    with pytest.raises(ValueError, match="feature mismatch") as info:
        F.dense(x, B.asarray(rng.standard_normal((5, 2)), dtype="float64"))
    assert "(5, 2)" in str(info.value) and "(3, 4)" in str(info.value)
    with pytest.raises(ValueError, match=r"x must be \(N, in_features\)"):
        F.dense(B.asarray(rng.standard_normal((3, 4, 1)), dtype="float64"),
                B.asarray(rng.standard_normal((4, 2)), dtype="float64"))
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.dense(x, B.asarray(rng.standard_normal((4, 2)), dtype="float32"))
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.dense(x, B.asarray(rng.standard_normal((4, 2)), dtype="float64"),
                B.asarray(np.zeros(2), dtype="float32"))
    with pytest.raises(ValueError, match=r"dout must have shape \(3, 2\)"):
        W = B.asarray(rng.standard_normal((4, 2)), dtype="float64")
        F.dense_backward(B.asarray(np.ones((3, 3)), dtype="float64"), (x, W))
    with pytest.raises(ValueError, match="Flatten"):
        Dense(4, 2, dtype="float64").forward(B.asarray(np.ones((2, 2, 2)), dtype="float64"))
