"""Inputs for the benchmarks: seeded random arrays and the MNIST training set."""

from __future__ import annotations

import numpy as np

__all__ = ["load_mnist_train", "randn"]


def randn(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Host float32 normal numbers times ``scale``."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def load_mnist_train() -> tuple[np.ndarray, np.ndarray]:
    """MNIST training set: x float32 (60000, 1, 28, 28) standardised, y int64 (60000,)."""
    from xpcnn.datasets import load_mnist, standardize, to_float

    ds = load_mnist(download=False, progress=False)
    x, _, _ = standardize(to_float(ds.x_train))
    return x, ds.y_train.astype(np.int64)
