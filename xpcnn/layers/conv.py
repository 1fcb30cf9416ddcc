"""Convolution layer over :mod:`xpcnn.functional.conv`."""

from __future__ import annotations

from typing import Any

from ..functional import conv as Fc
from ..checks import check_rank, pair
from .. import backend as B
from .base import Layer, register


@register
class Conv2D(Layer):
    """2-D convolution. x: (N, C, H, W) -> y: (N, F, OH, OW).

    Parameters: ``W: (F, C, KH, KW)`` (He-normal by default), ``b: (F,)`` (zeros).

    >>> import xpcnn
    >>> conv = xpcnn.layers.Conv2D(1, 4, kernel_size=3, padding=1, rng=0)
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(conv(xp.zeros((2, 1, 8, 8), dtype=xp.float32)).shape)
    (2, 4, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True, init: str = "he",
                 dtype: str = "float32", rng: Any = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
        self.init, self.bias, self._dtype = init, bool(bias), B.dtype_name(dtype)
        self.params["W"] = self._new_param(init, (self.out_channels, self.in_channels, *self.kernel_size), dtype, rng)
        if self.bias:
            self.params["b"] = self._constant(0.0, (self.out_channels,), dtype)
        self._cache: tuple[Any, tuple[int, ...]] | None = None

    def forward(self, x: Any, train: bool = False) -> Any:
        check_rank(x, 4, "Conv2D input", "(N, C, H, W)")
        self._check_input_dtype(x)
        y, col = Fc.conv2d_forward(x, self.params["W"], self.params.get("b"), self.stride, self.padding,
                                   self.dilation)
        self._cache = (col, tuple(x.shape)) if train else None
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        col, x_shape = self._cache
        dx, dW, db = Fc.conv2d_backward(dout, col, x_shape, self.params["W"], self.stride, self.padding,
                                        self.dilation, need_dx=self.need_input_grad)
        self.grads["W"] = dW
        if self.bias:
            self.grads["b"] = db
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_channels:
            raise ValueError(f"Conv2D expects (N, {self.in_channels}, H, W), got {tuple(input_shape)}")
        oh, ow = Fc.conv_geometry(input_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        return (input_shape[0], self.out_channels, oh, ow)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias, "init": self.init, "dtype": self._dtype}
