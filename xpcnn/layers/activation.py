"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh (ops in :mod:`xpcnn.kernels`)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..checks import check_floating, real
from .base import Layer, register


class _Elementwise(Layer):
    """An activation: one op, any input shape; the op's cache holds what the derivative needs."""

    _op: kernels.Op

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None

    def _args(self) -> tuple[Any, ...]:
        return ()

    def forward(self, x: Any, train: bool = False) -> Any:
        check_floating(x, f"{type(self).__name__} input")
        y, cache = self._op.forward(x, *self._args())
        self._cache = cache if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        return self._op.backward(dout, self._cache)


@register
class ReLU(_Elementwise):
    """``y = max(x, 0)``; any shape."""

    _op = kernels.relu


@register
class LeakyReLU(_Elementwise):
    """``y = x`` for ``x > 0``, else ``alpha * x``; any shape."""

    _op = kernels.leaky_relu

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = real("alpha", alpha)

    def _args(self) -> tuple[Any, ...]:
        return (self.alpha,)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


@register
class Sigmoid(_Elementwise):
    """``y = 1 / (1 + exp(-x))``; any shape."""

    _op = kernels.sigmoid


@register
class Tanh(_Elementwise):
    """``y = tanh(x)``; any shape."""

    _op = kernels.tanh
