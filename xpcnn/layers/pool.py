"""Pooling layers over the ``max_pool2d`` / ``avg_pool2d`` / ``global_avg_pool2d`` ops.

Reference: :mod:`xpcnn.functional.pool`.
"""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..checks import pair
from ..functional.pool import pool_geometry
from .base import Layer, register


class _Pool2D(Layer):
    _op: kernels.Op

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"pooling padding must be at most half the kernel: kernel {self.kernel_size}, "
                             f"got padding {self.padding}")
        self.ceil_mode = bool(ceil_mode)
        self._cache: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        self._check_input(x, 4, "(N, C, H, W)")
        geometry = pool_geometry(x.shape, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        y, cache = self._op.forward(x, geometry)
        self._cache = cache if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        return self._op.backward(dout, self._cache)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ValueError(f"{type(self).__name__} expects (N, C, H, W), got {tuple(input_shape)}")
        g = pool_geometry(input_shape, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        return (input_shape[0], input_shape[1], *g.out)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                                  "padding": list(self.padding)}
        if self.ceil_mode:  # written only when set, so checkpoints from before ceil_mode read the same
            config["ceil_mode"] = True
        return config


@register
class MaxPool2D(_Pool2D):
    """Max pooling. x: (N, C, H, W) -> y: (N, C, OH, OW); the gradient goes to each window's first maximum.

    ``OH = floor((H + 2P - K) / S) + 1`` (``ceil`` with ``ceil_mode=True``), as in PyTorch:

    >>> import xpcnn
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(xpcnn.layers.MaxPool2D(2)(xp.zeros((1, 3, 7, 7), dtype=xp.float32)).shape)
    (1, 3, 3, 3)
    """

    _op = kernels.max_pool2d


@register
class AvgPool2D(_Pool2D):
    """Average pooling. x: (N, C, H, W) -> y: (N, C, OH, OW); padded zeros count in the mean."""

    _op = kernels.avg_pool2d


@register
class GlobalAvgPool2D(Layer):
    """The mean of each feature map: x: (N, C, H, W) -> y: (N, C) (op ``global_avg_pool2d``).

    >>> import xpcnn
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(xpcnn.layers.GlobalAvgPool2D()(xp.ones((2, 16, 7, 7), dtype=xp.float32)).shape)
    (2, 16)
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        self._check_input(x, 4, "(N, C, H, W)")
        if x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"GlobalAvgPool2D needs non-empty feature maps, got x of shape {tuple(x.shape)}")
        y, cache = kernels.global_avg_pool2d.forward(x)
        self._cache = cache if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        return kernels.global_avg_pool2d.backward(dout, self._cache)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ValueError(f"GlobalAvgPool2D expects (N, C, H, W), got {tuple(input_shape)}")
        return (input_shape[0], input_shape[1])
