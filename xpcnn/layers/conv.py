"""Convolution layer over the ``conv2d`` op (:mod:`xpcnn.kernels`; reference: :mod:`xpcnn.functional.conv`)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..checks import integer, pair
from ..functional.conv import conv_geometry
from .base import Layer, register


@register
class Conv2D(Layer):
    """2-D convolution. x: (N, C, H, W) -> y: (N, F, OH, OW), ``OH = floor((H + 2P - D(K-1) - 1) / S) + 1``.

    Parameters: ``W: (F, C, KH, KW)`` (He-normal by default), ``b: (F,)`` (zeros).

    >>> import xpcnn
    >>> conv = xpcnn.layers.Conv2D(1, 4, kernel_size=3, stride=2, padding=1, rng=0)
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(conv(xp.zeros((2, 1, 32, 32), dtype=xp.float32)).shape)
    (2, 4, 16, 16)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True, init: str = "he",
                 dtype: str = "float32", rng: Any = None) -> None:
        super().__init__()
        self.in_channels = integer("in_channels", in_channels, minimum=1)
        self.out_channels = integer("out_channels", out_channels, minimum=1)
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        self.init, self.bias, self._dtype = self._check_init(init), bool(bias), self._float_dtype(dtype)
        self.params["W"] = self._new_param(init, (self.out_channels, self.in_channels, *self.kernel_size), dtype, rng)
        if self.bias:
            self.params["b"] = self._constant(0.0, (self.out_channels,), dtype)
        self._cache: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        self._check_input(x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"channel mismatch: Conv2D expects {self.in_channels} input channels, "
                             f"but x has {x.shape[1]} (x shape {tuple(x.shape)})")
        conv_geometry(x.shape, self.kernel_size, self.stride, self.padding, self.dilation)  # a clear error if empty
        y, cache = kernels.conv2d.forward(x, self.params["W"], self.params.get("b"), self.stride, self.padding,
                                          self.dilation)
        self._cache = cache if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        dx, dW, db = kernels.conv2d.backward(dout, self._cache, self.need_input_grad)
        self.grads["W"] = dW
        if self.bias:
            self.grads["b"] = db
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_channels:
            raise ValueError(f"Conv2D expects (N, {self.in_channels}, H, W), got {tuple(input_shape)}")
        oh, ow = conv_geometry(input_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        return (input_shape[0], self.out_channels, oh, ow)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias, "init": self.init, "dtype": self._dtype}
