"""Ready-made networks: small CNNs for 28x28 single-channel images (MNIST, Fashion-MNIST), CIFAR-style
residual networks and a depthwise-separable net for 1- or 3-channel images of 28x28 or 32x32.

Every builder takes ``num_classes``, ``dtype`` and ``rng`` (a host seed or
``numpy.random.Generator`` for the initial weights) and returns a
:class:`~xpcnn.model.Sequential` on the current backend; the residual and separable nets also
take ``in_channels`` (1 or 3) and work for any input size (they end in global average pooling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import backend as B
from .layers import (
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ReLU,
    Residual,
)
from .model import Sequential

__all__ = ["MODELS", "basic_block", "bn_cnn", "build", "lenet5", "resnet", "resnet8", "resnet20", "separable_cnn",
           "simple_convnet", "wide_cnn"]


def lenet5(num_classes: int = 10, dtype: str = "float32", rng: Any = None) -> Sequential:
    """LeNet-5, modern variant (ReLU, max pooling), for (N, 1, 28, 28) input.

    conv 6@5x5 pad 2 -> ReLU -> pool 2 -> conv 16@5x5 -> ReLU -> pool 2 ->
    dense 400->120 -> ReLU -> dense 120->84 -> ReLU -> dense 84->classes.
    He initialisation, but Glorot for the output layer (no ReLU follows it).
    """
    r = B.host_rng(rng)
    return Sequential(
        Conv2D(1, 6, 5, padding=2, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
        Conv2D(6, 16, 5, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(16 * 5 * 5, 120, dtype=dtype, rng=r), ReLU(),
        Dense(120, 84, dtype=dtype, rng=r), ReLU(),
        Dense(84, num_classes, init="xavier", dtype=dtype, rng=r),
    )


def simple_convnet(num_classes: int = 10, dtype: str = "float32", rng: Any = None,
                   init: str = "normal") -> Sequential:
    """The "Deep Learning from Scratch" ch. 7 network, for (N, 1, 28, 28) input.

    conv 30@5x5 -> ReLU -> pool 2 -> dense 4320->100 -> ReLU -> dense 100->classes.
    Weights start as N(0, 0.01^2) like the book's ``weight_init_std=0.01`` (``init="he"`` also works).
    """
    r = B.host_rng(rng)
    return Sequential(
        Conv2D(1, 30, 5, init=init, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(30 * 12 * 12, 100, init=init, dtype=dtype, rng=r), ReLU(),
        Dense(100, num_classes, init=init, dtype=dtype, rng=r),
    )


def wide_cnn(num_classes: int = 10, dtype: str = "float32", rng: Any = None) -> Sequential:
    """The benchmark's "wide net": conv 32@3x3 -> pool -> conv 64@3x3 -> pool -> dense 128, ReLU throughout."""
    r = B.host_rng(rng)
    return Sequential(
        Conv2D(1, 32, 3, padding=1, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1, dtype=dtype, rng=r), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(64 * 7 * 7, 128, dtype=dtype, rng=r), ReLU(),
        Dense(128, num_classes, dtype=dtype, rng=r),
    )


def bn_cnn(num_classes: int = 10, dtype: str = "float32", rng: Any = None, dropout: float = 0.3) -> Sequential:
    """A small batch-norm + dropout CNN meant for Fashion-MNIST, for (N, 1, 28, 28) input.

    [conv 32@3x3 -> BN -> ReLU -> pool 2] -> [conv 64@3x3 -> BN -> ReLU -> pool 2] ->
    dropout -> dense 3136->128 -> BN -> ReLU -> dropout -> dense 128->classes.
    """
    r = B.host_rng(rng)
    return Sequential(
        Conv2D(1, 32, 3, padding=1, bias=False, dtype=dtype, rng=r), BatchNorm2D(32, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1, bias=False, dtype=dtype, rng=r), BatchNorm2D(64, dtype=dtype), ReLU(),
        MaxPool2D(2),
        Flatten(), Dropout(dropout),
        Dense(64 * 7 * 7, 128, bias=False, dtype=dtype, rng=r), BatchNorm1D(128, dtype=dtype), ReLU(),
        Dropout(dropout),
        Dense(128, num_classes, dtype=dtype, rng=r),
    )


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, dtype: str, rng: Any, groups: int = 1) -> list[Layer]:
    """conv (no bias: the batch norm's shift replaces it) -> batch norm."""
    return [Conv2D(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False, dtype=dtype, rng=rng),
            BatchNorm2D(cout, dtype=dtype)]


def basic_block(cin: int, cout: int, stride: int = 1, dtype: str = "float32", rng: Any = None) -> Residual:
    """The ResNet basic block (He et al. 2016), without its final ReLU:

    body: conv 3x3 (stride) -> BN -> ReLU -> conv 3x3 -> BN;  shortcut: identity, or conv 1x1 (stride) -> BN
    when the shape changes (the "projection" shortcut, option B).
    """
    r = B.host_rng(rng)
    body = Sequential(*_conv_bn(cin, cout, 3, stride, dtype, r), ReLU(), *_conv_bn(cout, cout, 3, 1, dtype, r))
    shortcut = None if stride == 1 and cin == cout else Sequential(*_conv_bn(cin, cout, 1, stride, dtype, r))
    return Residual(body, shortcut)


def resnet(blocks_per_stage: int, num_classes: int = 10, dtype: str = "float32", rng: Any = None,
           in_channels: int = 1, width: int = 16) -> Sequential:
    """A CIFAR-style ResNet-(6n+2) (He et al. 2016, section 4.2) for (N, in_channels, H, W) input.

    conv 3x3 (width) -> BN -> ReLU -> 3 stages of ``n`` basic blocks (each followed by ReLU) with
    width, 2*width, 4*width channels (the 2nd and 3rd stages start with stride 2) -> global average
    pooling -> dense -> classes.  28x28 input gives 28/14/7 feature maps, 32x32 gives 32/16/8.
    """
    r = B.host_rng(rng)
    layers: list[Layer] = [*_conv_bn(in_channels, width, 3, 1, dtype, r), ReLU()]
    cin = width
    for stage in range(3):
        cout = width * 2 ** stage
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            layers += [basic_block(cin, cout, stride, dtype, r), ReLU()]
            cin = cout
    layers += [GlobalAvgPool2D(), Dense(cin, num_classes, init="xavier", dtype=dtype, rng=r)]
    return Sequential(*layers)


def resnet8(num_classes: int = 10, dtype: str = "float32", rng: Any = None, in_channels: int = 1,
            width: int = 16) -> Sequential:
    """ResNet-8: one basic block per stage (16/32/64 channels, ~78k parameters); see :func:`resnet`.

    >>> import xpcnn
    >>> net = xpcnn.models.resnet8(in_channels=3, rng=0)
    >>> net.num_params(), net.output_shape((2, 3, 32, 32))
    (78042, (2, 10))
    """
    return resnet(1, num_classes, dtype, rng, in_channels, width)


def resnet20(num_classes: int = 10, dtype: str = "float32", rng: Any = None, in_channels: int = 1,
             width: int = 16) -> Sequential:
    """ResNet-20: three basic blocks per stage (16/32/64 channels, ~0.27M parameters); see :func:`resnet`."""
    return resnet(3, num_classes, dtype, rng, in_channels, width)


def separable_cnn(num_classes: int = 10, dtype: str = "float32", rng: Any = None, in_channels: int = 1) -> Sequential:
    """A small depthwise-separable network (MobileNet-style) for (N, in_channels, H, W) input.

    conv 3x3 (32) -> BN -> ReLU, then four separable blocks [depthwise 3x3 (groups = channels) -> BN -> ReLU ->
    pointwise 1x1 -> BN -> ReLU] with 64, 128 (stride 2), 128, 256 (stride 2) output channels ->
    global average pooling -> dropout 0.2 -> dense -> classes.
    """
    r = B.host_rng(rng)
    layers: list[Layer] = [*_conv_bn(in_channels, 32, 3, 1, dtype, r), ReLU()]
    cin = 32
    for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2)):
        layers += [*_conv_bn(cin, cin, 3, stride, dtype, r, groups=cin), ReLU(),
                   *_conv_bn(cin, cout, 1, 1, dtype, r), ReLU()]
        cin = cout
    layers += [GlobalAvgPool2D(), Dropout(0.2), Dense(cin, num_classes, init="xavier", dtype=dtype, rng=r)]
    return Sequential(*layers)


MODELS: dict[str, Callable[..., Sequential]] = {
    "lenet5": lenet5,
    "simple": simple_convnet,
    "wide": wide_cnn,
    "bn": bn_cnn,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "separable": separable_cnn,
}


def build(name: str, **kwargs: Any) -> Sequential:
    """Build a model by its short name (a key of :data:`MODELS`: ``lenet5``, ``resnet8``, ``separable``, ...)."""
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}") from None
