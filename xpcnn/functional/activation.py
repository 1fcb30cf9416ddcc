"""Elementwise activations and (log-)softmax, with their backward passes.

Each ``*_backward`` takes the upstream gradient ``dout`` and whatever the
forward pass produced that the derivative needs (input ``x`` or output ``y``);
it never modifies ``dout``.  The public functions validate their arguments; the
underscored ones (dispatched by :mod:`xpcnn.kernels` after a layer validated once) do not.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..checks import check_floating, namespace

__all__ = [
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]


def _relu(x: Any) -> Any:
    return array_api_compat.array_namespace(x).maximum(x, 0.0)


def _relu_backward(dout: Any, y: Any) -> Any:
    xp = array_api_compat.array_namespace(dout)
    return dout * xp.astype(y > 0.0, dout.dtype)


def _leaky_relu(x: Any, alpha: float) -> Any:
    return array_api_compat.array_namespace(x).where(x > 0.0, x, x * float(alpha))


def _leaky_relu_backward(dout: Any, x: Any, alpha: float) -> Any:
    positive = array_api_compat.array_namespace(dout).astype(x > 0.0, dout.dtype)
    return dout * (positive + float(alpha) * (1.0 - positive))


def _sigmoid(x: Any) -> Any:
    xp = array_api_compat.array_namespace(x)
    # exp of a non-positive number never overflows: use exp(-|x|) on both branches.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_backward(dout: Any, y: Any) -> Any:
    return dout * y * (1.0 - y)


def _tanh(x: Any) -> Any:
    return array_api_compat.array_namespace(x).tanh(x)


def _tanh_backward(dout: Any, y: Any) -> Any:
    return dout * (1.0 - y * y)


def relu(x: Any) -> Any:
    """``y = max(x, 0)``, any shape."""
    check_floating(x, "x")
    return _relu(x)


def relu_backward(dout: Any, y: Any) -> Any:
    """``dx = dout * [y > 0]`` (``y`` is the forward output; the subgradient at 0 is 0, as in PyTorch)."""
    namespace(dout, y)
    return _relu_backward(dout, y)


def leaky_relu(x: Any, alpha: float = 0.01) -> Any:
    """``y = x`` for ``x > 0``, ``alpha * x`` otherwise."""
    check_floating(x, "x")
    return _leaky_relu(x, alpha)


def leaky_relu_backward(dout: Any, x: Any, alpha: float = 0.01) -> Any:
    """``dx = dout`` where ``x > 0``, ``alpha * dout`` elsewhere."""
    namespace(dout, x)
    return _leaky_relu_backward(dout, x, alpha)


def sigmoid(x: Any) -> Any:
    """``y = 1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    check_floating(x, "x")
    return _sigmoid(x)


def sigmoid_backward(dout: Any, y: Any) -> Any:
    """``dx = dout * y * (1 - y)`` with ``y`` the forward output."""
    namespace(dout, y)
    return _sigmoid_backward(dout, y)


def tanh(x: Any) -> Any:
    """``y = tanh(x)``."""
    check_floating(x, "x")
    return _tanh(x)


def tanh_backward(dout: Any, y: Any) -> Any:
    """``dx = dout * (1 - y^2)`` with ``y`` the forward output."""
    namespace(dout, y)
    return _tanh_backward(dout, y)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """``log softmax(x) = (x - m) - log(sum(exp(x - m)))`` with ``m = max(x)`` along ``axis`` (stable)."""
    check_floating(x, "x")
    xp = array_api_compat.array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def softmax(x: Any, axis: int = -1) -> Any:
    """``softmax(x)_k = exp(x_k - m) / sum_j exp(x_j - m)`` along ``axis`` (stable)."""
    check_floating(x, "x")
    xp = array_api_compat.array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)
