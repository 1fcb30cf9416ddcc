"""xpcnn.gradcheck itself: passes on correct gradients, fails loudly (naming the worst element) on wrong ones."""

from __future__ import annotations

import re

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import GradcheckError, gradcheck, numerical_grad
from xpcnn.layers import Dense, Layer


class ScaledDense(Layer):
    """``y = x @ W + b`` whose backward is deliberately wrong in a configurable way."""

    def __init__(self, W, b, dx_factor=1.0, dW_factor=1.0, dx_poke=None, dW_poke=None):
        super().__init__()
        self.params = {"W": W, "b": b}
        self.dx_factor, self.dW_factor = dx_factor, dW_factor
        self.dx_poke, self.dW_poke = dx_poke, dW_poke
        self._x = None

    def forward(self, x, train=False):
        self._x = x if train else None
        return F.dense(x, self.params["W"], self.params["b"])

    def backward(self, dout):
        self._require_forward(self._x)
        dx, dW, db = F.dense_backward(dout, (self._x, self.params["W"]))
        dx, dW = dx * self.dx_factor, dW * self.dW_factor
        if self.dx_poke is not None:
            dx = dx + _poke(dx, self.dx_poke)
        if self.dW_poke is not None:
            dW = dW + _poke(dW, self.dW_poke)
        self.grads = {"W": dW, "b": db}
        return dx


def _poke(like, index, amount=0.5):
    host = np.zeros(tuple(like.shape))
    host[index] = amount
    return B.to_device_like(host, like)


def _make(rng, **kwargs):
    W = B.asarray(rng.standard_normal((4, 3)), dtype="float64")
    b = B.asarray(rng.standard_normal(3), dtype="float64")
    x = B.asarray(rng.standard_normal((5, 4)), dtype="float64")
    return ScaledDense(W, b, **kwargs), x


def test_passes_on_correct_layer(backend, rng):
    layer, x = _make(rng)
    result = gradcheck(layer, x)
    assert result.ok and result.failures == []
    assert set(result.max_abs_error) == {"x", "W", "b"}
    assert all(0.0 <= e < 1e-7 for e in result.max_abs_error.values())
    assert gradcheck(Dense(4, 2, dtype="float64", rng=0), x).ok


@pytest.mark.parametrize("factor", [1.01, 2.0, -1.0, 0.0])
def test_fails_on_scaled_dx(backend, rng, factor):
    layer, x = _make(rng, dx_factor=factor)
    with pytest.raises(GradcheckError, match="gradient of x is wrong at index"):
        gradcheck(layer, x)


def test_fails_on_scaled_param_grad_only(backend, rng):
    layer, x = _make(rng, dW_factor=1.001)
    with pytest.raises(GradcheckError) as info:
        gradcheck(layer, x)
    message = str(info.value)
    assert "gradient of W is wrong" in message
    assert "gradient of x" not in message and "gradient of b" not in message


@pytest.mark.parametrize("index", [(0, 0), (3, 2), (4, 1)])
def test_names_the_worst_element_of_dx(backend, rng, index):
    layer, x = _make(rng, dx_poke=index)
    with pytest.raises(GradcheckError) as info:
        gradcheck(layer, x)
    message = str(info.value)
    assert f"gradient of x is wrong at index {index}" in message
    analytic, numerical = map(float, re.search(r"analytic (\S+), numerical (\S+) ", message).groups())
    assert abs(abs(analytic - numerical) - 0.5) < 1e-6


def test_names_the_worst_element_of_a_parameter(backend, rng):
    layer, x = _make(rng, dW_poke=(2, 1))
    result = gradcheck(layer, x, raise_on_failure=False)
    assert not result.ok and len(result.failures) == 1
    assert result.worst_index["W"] == (2, 1)
    assert abs(result.max_abs_error["W"] - 0.5) < 1e-6
    assert "gradient of W is wrong at index (2, 1)" in result.failures[0]


def test_callable_target_with_integer_input(backend, rng):
    z = B.asarray(rng.standard_normal((4, 3)), dtype="float64")
    t = B.asarray(np.array([0, 2, 1, 2]), dtype="int64")

    def good(z, t):
        loss, probs = F.softmax_cross_entropy(z, t)
        return loss, lambda d: (F.softmax_cross_entropy_backward(probs, t) * d, None)

    def bad(z, t):  # forgets the 1/N
        loss, probs = F.softmax_cross_entropy(z, t)
        return loss, lambda d: (F.softmax_cross_entropy_backward(probs, t) * d * 4.0, None)

    assert gradcheck(good, [z, t]).ok
    with pytest.raises(GradcheckError, match="gradient of input 0"):
        gradcheck(bad, [z, t])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_low_precision_inputs_rejected(backend, rng, dtype):
    if dtype == "float16" and not hasattr(backend.xp, "float16"):
        pytest.skip("namespace has no float16")  # array_api_strict has no float16
    x = B.asarray(rng.standard_normal((3, 4)), dtype=dtype)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: (F.tanh(x), lambda d: F.tanh_backward(d, F.tanh(x))), x)


def test_float32_layer_params_rejected(backend, rng):
    layer = Dense(4, 2, rng=0)  # float32 by default
    with pytest.raises(TypeError, match="float64 parameters"):
        gradcheck(layer, B.asarray(rng.standard_normal((3, 4)), dtype="float64"))


def test_argument_errors(backend, rng):
    layer, x = _make(rng)
    with pytest.raises(ValueError, match="exactly one input"):
        gradcheck(layer, [x, x])

    def wrong_count(a, b):
        return a + b, lambda d: d

    with pytest.raises(ValueError, match="1 gradients for 2 inputs"):
        gradcheck(wrong_count, [x, x])

    def wrong_shape(a):
        return F.tanh(a), lambda d: d[:2, ...]

    with pytest.raises(GradcheckError, match="shape"):
        gradcheck(wrong_shape, x)


def test_inputs_and_params_restored(backend, rng):
    layer, x = _make(rng)
    x_before = B.to_numpy(x).copy()
    p_before = {k: B.to_numpy(v).copy() for k, v in layer.params.items()}
    gradcheck(layer, x)
    np.testing.assert_array_equal(B.to_numpy(x), x_before)
    for key, value in layer.params.items():
        np.testing.assert_array_equal(B.to_numpy(value), p_before[key])
        assert B.backend_name(value) == backend.name


def test_explicit_dout_is_used(backend, rng):
    """With dout = e_k, the checked gradient is the k-th output's gradient only."""
    x = B.asarray(rng.standard_normal((2, 3)), dtype="float64")
    seen = []

    def f(x):
        y = F.sigmoid(x)
        def backward(d):
            seen.append(B.to_numpy(d).copy())
            return F.sigmoid_backward(d, y)
        return y, backward

    dout = np.zeros((2, 3))
    dout[1, 2] = 1.0
    assert gradcheck(f, x, dout=B.asarray(dout, dtype="float64")).ok
    np.testing.assert_array_equal(seen[0], dout)


def test_numerical_grad_matches_known_derivative(rng):
    host = rng.standard_normal((3, 4))
    state = {}

    def commit(h):
        state["x"] = h.copy()

    commit(host)
    grad = numerical_grad(lambda: float(np.sum(np.sin(state["x"]) * 3.0)), host, commit, 1e-6)
    np.testing.assert_allclose(grad, 3.0 * np.cos(host), rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(state["x"], host)  # left at the original point


def test_layer_state_restored(backend, rng):
    """gradcheck runs forward(train=True) hundreds of times; batch-norm running statistics must survive."""
    from xpcnn.layers import BatchNorm1D

    layer = BatchNorm1D(3, dtype="float64")
    layer.forward(B.asarray(rng.standard_normal((6, 3)) * 2 + 1, dtype="float64"), train=True)
    before = {k: B.to_numpy(v).copy() for k, v in layer.buffers.items()}
    assert gradcheck(layer, B.asarray(rng.standard_normal((5, 3)), dtype="float64")).ok
    for key, value in layer.buffers.items():
        np.testing.assert_array_equal(B.to_numpy(value), before[key])


def test_state_restored_when_the_check_fails(rng):
    """A failing check still puts back the running statistics and the parameters it perturbed."""
    from xpcnn.layers import BatchNorm2D

    class WrongBatchNorm(BatchNorm2D):
        def backward(self, dout):  # a dx of the wrong shape: the check raises mid-way
            return super().backward(dout)[:, :, :1, :]

    layer = WrongBatchNorm(2, dtype="float64")
    before = {k: B.to_numpy(v).copy() for store in (layer.params, layer.buffers) for k, v in store.items()}
    with pytest.raises(GradcheckError):
        gradcheck(layer, B.asarray(rng.standard_normal((3, 2, 2, 2))))
    after = {k: B.to_numpy(v) for store in (layer.params, layer.buffers) for k, v in store.items()}
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
