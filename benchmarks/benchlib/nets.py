"""The benchmarked networks' convolutions, read from :mod:`xpcnn.models` (never copied by hand)."""

from __future__ import annotations

from dataclasses import dataclass

from xpcnn import layers, models

__all__ = ["BENCH_MODELS", "ConvLayer", "conv_layers"]

#: short label -> model name in :data:`xpcnn.models.MODELS` (the two nets the speed benchmarks time)
BENCH_MODELS = {"lenet": "lenet5", "wide": "wide"}


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of a benchmarked net: x (N, C, H, H) * W (F, C, K, K) with ``stride`` and ``pad``."""

    label: str
    C: int
    F: int
    K: int
    pad: int
    H: int
    first: bool  # the network's first layer: its input is the data, so no dx is needed
    stride: int = 1

    @property
    def out(self) -> int:
        return (self.H + 2 * self.pad - self.K) // self.stride + 1

    def flops(self, N: int) -> int:
        """Multiply-adds x 2 of the forward: ``2 * N * F * OH * OW * C * KH * KW``."""
        return 2 * N * self.F * self.out * self.out * self.C * self.K * self.K

    def describe(self) -> str:
        stride = f" stride {self.stride}" if self.stride != 1 else ""
        return (f"x(N,{self.C},{self.H},{self.H}) W({self.F},{self.C},{self.K},{self.K}) pad {self.pad}{stride}"
                + (" [no dx]" if self.first else ""))


def conv_layers(labels: dict[str, str] = BENCH_MODELS, input_shape: tuple[int, ...] = (1, 1, 28, 28)
                ) -> tuple[ConvLayer, ...]:
    """Every Conv2D of each model, with the input size it sees: ``lenet.conv1``, ``lenet.conv2``, ``wide.conv1``, ...

    Square kernels, strides and paddings without dilation only (what the nets use); anything else is an error.
    """
    found = []
    for label, name in labels.items():
        shape = tuple(input_shape)
        count = 0
        for i, layer in enumerate(models.build(name, rng=0).layers):
            if isinstance(layer, layers.Conv2D):
                geometry = (layer.kernel_size, layer.stride, layer.padding)
                if any(g[0] != g[1] for g in geometry) or layer.dilation != (1, 1) or shape[2] != shape[3]:
                    raise ValueError(f"{name} layer {i}: only square, undilated convolutions are benchmarked, "
                                     f"got {layer.config()} on input {shape}")
                count += 1
                found.append(ConvLayer(f"{label}.conv{count}", layer.in_channels, layer.out_channels,
                                       layer.kernel_size[0], layer.padding[0], shape[2], first=i == 0,
                                       stride=layer.stride[0]))
            shape = layer.output_shape(shape)
    return tuple(found)
