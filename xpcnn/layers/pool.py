"""Pooling layers over :mod:`xpcnn.functional.pool`."""

from __future__ import annotations

from typing import Any

from ..functional import pool as Fp
from ..checks import check_rank, pair
from .base import Layer, register


class _Pool2D(Layer):
    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self._cache: Any = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} expects (N, C, H, W), got {tuple(input_shape)}")
        *_, (oh, ow) = Fp.pool_geometry(input_shape, self.kernel_size, self.stride, self.padding)
        return (input_shape[0], input_shape[1], oh, ow)

    def config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}


@register
class MaxPool2D(_Pool2D):
    """Max pooling. x: (N, C, H, W) -> y: (N, C, OH, OW); the gradient goes to each window's first maximum."""

    def forward(self, x: Any, train: bool = False) -> Any:
        check_rank(x, 4, "MaxPool2D input", "(N, C, H, W)")
        y, argmax = Fp.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._cache = (argmax, tuple(x.shape)) if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        argmax, x_shape = self._cache
        return Fp.max_pool2d_backward(dout, argmax, x_shape, self.kernel_size, self.stride, self.padding)


@register
class AvgPool2D(_Pool2D):
    """Average pooling. x: (N, C, H, W) -> y: (N, C, OH, OW); padded zeros count in the mean."""

    def forward(self, x: Any, train: bool = False) -> Any:
        check_rank(x, 4, "AvgPool2D input", "(N, C, H, W)")
        y = Fp.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
        self._cache = tuple(x.shape) if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        return Fp.avg_pool2d_backward(dout, self._cache, self.kernel_size, self.stride, self.padding)
