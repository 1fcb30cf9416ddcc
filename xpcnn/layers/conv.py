"""Convolution layer over the ``conv2d`` op (:mod:`xpcnn.kernels`; reference: :mod:`xpcnn.functional.conv`)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..checks import integer, pair
from ..functional.conv import check_groups, conv_geometry
from .base import Layer, register


@register
class Conv2D(Layer):
    """2-D convolution. x: (N, C, H, W) -> y: (N, F, OH, OW), ``OH = floor((H + 2P - D(K-1) - 1) / S) + 1``.

    Parameters: ``W: (F, C/groups, KH, KW)`` (He-normal by default, fan-in ``C/groups*KH*KW``), ``b: (F,)``
    (zeros); ``bias=False`` means no ``b`` at all.  ``groups`` splits the channels and filters into equal
    groups (PyTorch's rule); ``groups=C`` is a depthwise convolution.

    >>> import xpcnn
    >>> conv = xpcnn.layers.Conv2D(1, 4, kernel_size=3, stride=2, padding=1, rng=0)
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(conv(xp.zeros((2, 1, 32, 32), dtype=xp.float32)).shape)
    (2, 4, 16, 16)
    >>> depthwise = xpcnn.layers.Conv2D(8, 8, 3, padding=1, groups=8, bias=False, rng=0)
    >>> tuple(depthwise.params["W"].shape), sorted(depthwise.params)
    ((8, 1, 3, 3), ['W'])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *, init: str = "he",
                 dtype: str = "float32", rng: Any = None) -> None:
        super().__init__()
        self.in_channels = integer("in_channels", in_channels, minimum=1)
        self.out_channels = integer("out_channels", out_channels, minimum=1)
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        self.groups = check_groups(self.in_channels, self.out_channels, groups)
        self.init, self.bias, self._dtype = self._check_init(init), bool(bias), self._float_dtype(dtype)
        self.params["W"] = self._new_param(init, (self.out_channels, self.in_channels // self.groups,
                                                        *self.kernel_size), dtype, rng)
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
                                          self.dilation, **self._groups_kw)
        self._cache = cache if train else None
        return y

    @property
    def _groups_kw(self) -> dict[str, int]:
        # passed only when grouped, so fast kernel sets written for ungrouped convolutions see the same call
        return {"groups": self.groups} if self.groups != 1 else {}

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
        config: dict[str, Any] = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
            "dilation": list(self.dilation), "bias": self.bias, "init": self.init, "dtype": self._dtype}
        if self.groups != 1:  # written only when set, so checkpoints from before groups read the same
            config["groups"] = self.groups
        return config
