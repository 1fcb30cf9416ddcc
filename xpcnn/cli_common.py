"""Pieces the ``xpcnn`` commands share: loading a data set by name and normalising images with saved stats."""

from __future__ import annotations

from typing import Any

import numpy as np

from .datasets import Dataset, load_fashion_mnist, load_mnist, standardize, to_float

__all__ = ["DATASETS", "load_data", "normalize"]

#: data sets the CLI can load by name
DATASETS = ("mnist", "fashion-mnist")


def load_data(name: str, data_dir: str | None) -> Dataset:
    """The data set ``name`` (one of :data:`DATASETS`) from ``data_dir`` or the loaders' lookup order."""
    return (load_mnist if name == "mnist" else load_fashion_mnist)(data_dir)


def normalize(x_uint8: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28), standardised with the run's ``mean`` and ``std``."""
    return standardize(to_float(x_uint8), stats["mean"], stats["std"])[0]
