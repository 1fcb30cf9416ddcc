"""Activations: forward vs NumPy formulas, backward vs central differences, stability, dtypes.

Oracles are written directly in NumPy (float64) and share no code with
:mod:`xpcnn.functional.activation`; gradients are checked with
:func:`xpcnn.gradcheck` in float64 on every lane.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck

ALPHA = 0.07


def _np_logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    # logaddexp.reduce: a different route to the same quantity (no max-shift as in the implementation)
    return np.logaddexp.reduce(x, axis=axis, keepdims=True)


ORACLES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, ALPHA * x),
    "sigmoid": lambda x: np.exp(-np.logaddexp(0.0, -x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x - _np_logsumexp(x, -1)),
    "log_softmax": lambda x: x - _np_logsumexp(x, -1),
}

FORWARD = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, ALPHA),
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax": F.softmax,
    "log_softmax": F.log_softmax,
}

# derivative oracles in NumPy (in terms of the input x)
DERIVATIVES = {
    "relu": lambda x: (x > 0).astype(np.float64),
    "leaky_relu": lambda x: np.where(x > 0, 1.0, ALPHA),
    "sigmoid": lambda x: np.exp(-np.logaddexp(0.0, -x)) * np.exp(-np.logaddexp(0.0, x)),
    "tanh": lambda x: 1.0 / np.cosh(x) ** 2,
}


def _backward(name, dout, x, y):
    if name == "relu":
        return F.relu_backward(dout, y)
    if name == "leaky_relu":
        return F.leaky_relu_backward(dout, x, ALPHA)
    if name == "sigmoid":
        return F.sigmoid_backward(dout, y)
    return F.tanh_backward(dout, y)


def _away_from_zero(rng, shape, margin=0.05):
    """Standard-normal values pushed at least ``margin`` away from the ReLU kink."""
    x = rng.standard_normal(shape)
    return x + margin * np.sign(x) + (x == 0) * margin


TOL = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(FORWARD))
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5)])
def test_forward_matches_numpy(backend, rng, name, dtype, shape):
    host = _away_from_zero(rng, shape) * 3.0
    x = B.asarray(host, dtype=dtype)
    y = FORWARD[name](x)
    assert tuple(y.shape) == shape
    assert y.dtype == getattr(backend.xp, dtype)
    expected = ORACLES[name](host.astype(dtype).astype(np.float64))
    np.testing.assert_allclose(B.to_numpy(y), expected, **TOL[dtype])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_axis_argument(backend, rng, name):
    host = rng.standard_normal((3, 4, 5))
    x = B.asarray(host, dtype="float64")
    for axis in (0, 1, 2, -2):
        y = getattr(F, name)(x, axis=axis)
        assert tuple(y.shape) == (3, 4, 5) and y.dtype == backend.xp.float64
        lse = _np_logsumexp(host, axis)
        expected = host - lse if name == "log_softmax" else np.exp(host - lse)
        np.testing.assert_allclose(B.to_numpy(y), expected, rtol=1e-12, atol=1e-14)
    probs = B.to_numpy(F.softmax(x, axis=1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_backward_gradcheck(backend, rng, name):
    host = _away_from_zero(rng, (3, 5))
    x = B.asarray(host, dtype="float64")

    def f(x):
        y = FORWARD[name](x)
        return y, lambda dout: _backward(name, dout, x, y)

    result = gradcheck(f, x)
    assert result.ok and set(result.max_abs_error) == {"input 0"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_backward_matches_derivative_formula(backend, rng, name, dtype):
    host = _away_from_zero(rng, (4, 6))
    dout_host = rng.standard_normal((4, 6))
    x = B.asarray(host, dtype=dtype)
    dout = B.asarray(dout_host, dtype=dtype)
    dout_copy = B.to_numpy(dout).copy()
    y = FORWARD[name](x)
    dx = _backward(name, dout, x, y)
    assert tuple(dx.shape) == (4, 6)
    assert dx.dtype == getattr(backend.xp, dtype)
    xh = host.astype(dtype).astype(np.float64)
    expected = dout_host.astype(dtype) * DERIVATIVES[name](xh)
    np.testing.assert_allclose(B.to_numpy(dx), expected, **TOL[dtype])
    # backward never modifies the upstream gradient
    np.testing.assert_array_equal(B.to_numpy(dout), dout_copy)


def test_relu_subgradient_at_zero_is_zero(backend):
    x = B.asarray(np.array([-1.0, 0.0, 2.0]), dtype="float64")
    dx = F.relu_backward(B.asarray(np.ones(3), dtype="float64"), F.relu(x))
    np.testing.assert_array_equal(B.to_numpy(dx), [0.0, 0.0, 1.0])


@pytest.mark.filterwarnings("error")  # an overflow warning on the NumPy lane is a failure
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_extremes_do_not_overflow(backend, dtype):
    host = np.array([-800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0])
    y = F.sigmoid(B.asarray(host, dtype=dtype))
    assert y.dtype == getattr(backend.xp, dtype)
    got = B.to_numpy(y).astype(np.float64)
    assert np.all(np.isfinite(got))
    expected = np.exp(-np.logaddexp(0.0, -host.astype(dtype).astype(np.float64)))
    # absolute tolerance: values near 0 underflow legitimately in float32
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-14, atol=1e-30)
    assert got[-1] == 1.0 and got[0] < 1e-30 and got[3] == 0.5
    dx = F.sigmoid_backward(B.asarray(np.ones(7), dtype=dtype), y)
    assert np.all(np.isfinite(B.to_numpy(dx)))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_and_log_softmax_large_logits(backend, dtype):
    host = np.array([[1000.0, -1000.0, 0.0],
                     [-1000.0, -1000.0, -1000.0],
                     [1000.0, 1000.0, 999.0],
                     [-1000.0, 0.0, 1000.0]])
    x = B.asarray(host, dtype=dtype)
    p = F.softmax(x)
    lp = F.log_softmax(x)
    assert p.dtype == getattr(backend.xp, dtype) and lp.dtype == getattr(backend.xp, dtype)
    p_h, lp_h = B.to_numpy(p).astype(np.float64), B.to_numpy(lp).astype(np.float64)
    assert np.all(np.isfinite(p_h)) and np.all(np.isfinite(lp_h))
    lse = _np_logsumexp(host, -1)
    tol = TOL[dtype]
    np.testing.assert_allclose(lp_h, host - lse, rtol=tol["rtol"], atol=1e-4 if dtype == "float32" else 1e-10)
    np.testing.assert_allclose(p_h, np.exp(host - lse), rtol=tol["rtol"], atol=1e-7)
    np.testing.assert_allclose(p_h.sum(axis=1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(FORWARD))
def test_float32_stays_float32_with_python_scalars(backend, rng, name):
    x = B.asarray(rng.standard_normal((2, 3)), dtype="float32")
    assert FORWARD[name](x).dtype == backend.xp.float32


@pytest.mark.parametrize("name", list(FORWARD))
def test_integer_input_rejected(backend, name):
    x = B.asarray(np.arange(6).reshape(2, 3), dtype="int64")
    with pytest.raises(TypeError, match="real floating"):
        FORWARD[name](x)


@pytest.mark.parametrize("name", ["leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax"])
def test_against_torch_functional(rng, name):
    torch = pytest.importorskip("torch")
    tf = {
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, ALPHA),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda t: torch.softmax(t, dim=-1),
        "log_softmax": lambda t: torch.log_softmax(t, dim=-1),
    }[name]
    host = rng.standard_normal((5, 6)) * 4.0
    with B.using("numpy"):
        got = B.to_numpy(FORWARD[name](B.asarray(host, dtype="float64")))
    np.testing.assert_allclose(got, tf(torch.from_numpy(host)).numpy(), rtol=1e-12, atol=1e-14)
