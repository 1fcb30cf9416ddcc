"""Dense (fully-connected) and Flatten layers."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from ..functional.dense import dense, dense_backward
from ..checks import check_rank
from .. import backend as B
from .base import Layer, register


@register
class Dense(Layer):
    """``y = x @ W + b``. x: (N, in_features) -> y: (N, out_features).

    Parameters: ``W: (in_features, out_features)`` (He-normal by default), ``b: (out_features,)`` (zeros).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he",
                 dtype: str = "float32", rng: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bias, self.init, self._dtype = bool(bias), init, B.dtype_name(dtype)
        self.params["W"] = self._new_param(init, (self.in_features, self.out_features), dtype, rng)
        if self.bias:
            self.params["b"] = self._constant(0.0, (self.out_features,), dtype)
        self._x: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        check_rank(x, 2, "Dense input", "(N, in_features); add a Flatten layer before it")
        self._check_input_dtype(x)
        self._x = x if train else None
        return dense(x, self.params["W"], self.params.get("b"))

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._x)
        dx, dW, db = dense_backward(dout, self._x, self.params["W"], need_dx=self.need_input_grad)
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
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Any, train: bool = False) -> Any:
        if x.ndim < 2:
            raise ValueError(f"Flatten expects (N, ...) with at least 2 dims, got shape {tuple(x.shape)}")
        self._shape = tuple(x.shape)
        return array_api_compat.array_namespace(x).reshape(x, (x.shape[0], -1))

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._shape)
        return array_api_compat.array_namespace(dout).reshape(dout, self._shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (input_shape[0], math.prod(input_shape[1:]))
