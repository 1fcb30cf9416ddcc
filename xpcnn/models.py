"""Ready-made networks for 28x28 single-channel images (MNIST, Fashion-MNIST).

Every builder takes ``num_classes``, ``dtype`` and ``rng`` (a host seed or
``numpy.random.Generator`` for the initial weights) and returns a
:class:`~xpcnn.model.Sequential` on the current backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import backend as B
from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from .model import Sequential

__all__ = ["MODELS", "bn_cnn", "build", "lenet5", "simple_convnet", "wide_cnn"]


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


MODELS: dict[str, Callable[..., Sequential]] = {
    "lenet5": lenet5,
    "simple": simple_convnet,
    "wide": wide_cnn,
    "bn": bn_cnn,
}


def build(name: str, **kwargs: Any) -> Sequential:
    """Build a model by its short name: ``lenet5``, ``simple``, ``wide`` or ``bn``."""
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}") from None
