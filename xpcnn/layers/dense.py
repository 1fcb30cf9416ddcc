"""Dense (fully-connected) and Flatten layers."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .. import kernels
from ..checks import integer
from .base import Layer, register


@register
class Dense(Layer):
    """``y = x @ W + b``. x: (N, in_features) -> y: (N, out_features).

    Parameters: ``W: (in_features, out_features)`` (He-normal by default), ``b: (out_features,)`` (zeros).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he",
                 dtype: str = "float32", rng: Any = None) -> None:
        super().__init__()
        self.in_features = integer("in_features", in_features, minimum=1)
        self.out_features = integer("out_features", out_features, minimum=1)
        self.bias, self.init, self._dtype = bool(bias), self._check_init(init), self._float_dtype(dtype)
        self.params["W"] = self._new_param(init, (self.in_features, self.out_features), dtype, rng)
        if self.bias:
            self.params["b"] = self._constant(0.0, (self.out_features,), dtype)
        self._cache: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        self._check_input(x, 2, "(N, in_features); add a Flatten layer before it")
        if x.shape[1] != self.in_features:
            raise ValueError(f"feature mismatch: Dense expects {self.in_features} input features, "
                             f"got x of shape {tuple(x.shape)}")
        y, cache = kernels.dense.forward(x, self.params["W"], self.params.get("b"))
        self._cache = cache if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        dx, dW, db = kernels.dense.backward(dout, self._cache, self.need_input_grad)
        self.grads["W"] = dW
        if self.bias:
            self.grads["b"] = db
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 2 or input_shape[1] != self.in_features:
            raise ValueError(f"Dense expects (N, {self.in_features}), got {tuple(input_shape)}")
        return (input_shape[0], self.out_features)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias,
                "init": self.init, "dtype": self._dtype}


@register
class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...).  A reshape (no arithmetic), so it needs no kernel op."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Any, train: bool = False) -> Any:
        if x.ndim < 2:
            raise ValueError(f"Flatten expects (N, ...) with at least 2 dims, got shape {tuple(x.shape)}")
        self._shape = tuple(x.shape)
        return array_api_compat.array_namespace(x).reshape(x, (x.shape[0], math.prod(x.shape[1:])))

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._shape)
        return array_api_compat.array_namespace(dout).reshape(dout, self._shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (input_shape[0], math.prod(input_shape[1:]))
