"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh."""

from __future__ import annotations

from typing import Any

from ..functional import activation as Fa
from .base import Layer, register


class _Elementwise(Layer):
    """An activation whose backward needs only the cached forward output (or input)."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: Any = None

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._saved)
        return self._backward(dout, self._saved)


@register
class ReLU(_Elementwise):
    """``y = max(x, 0)``; any shape."""

    def forward(self, x: Any, train: bool = False) -> Any:
        y = Fa.relu(x)
        self._saved = y if train else None
        return y

    _backward = staticmethod(Fa.relu_backward)


@register
class LeakyReLU(_Elementwise):
    """``y = x`` for ``x > 0``, else ``alpha * x``; any shape."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Any, train: bool = False) -> Any:
        self._saved = x if train else None
        return Fa.leaky_relu(x, self.alpha)

    def _backward(self, dout: Any, x: Any) -> Any:
        return Fa.leaky_relu_backward(dout, x, self.alpha)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


@register
class Sigmoid(_Elementwise):
    """``y = 1 / (1 + exp(-x))``; any shape."""

    def forward(self, x: Any, train: bool = False) -> Any:
        y = Fa.sigmoid(x)
        self._saved = y if train else None
        return y

    _backward = staticmethod(Fa.sigmoid_backward)


@register
class Tanh(_Elementwise):
    """``y = tanh(x)``; any shape."""

    def forward(self, x: Any, train: bool = False) -> Any:
        y = Fa.tanh(x)
        self._saved = y if train else None
        return y

    _backward = staticmethod(Fa.tanh_backward)
