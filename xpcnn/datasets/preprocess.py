"""Host-side preprocessing of image arrays: scaling to float, standardising, a seeded train/validation split.

Generic: nothing here knows a particular data set.  Inputs are NumPy arrays
with the sample axis first; results are NumPy arrays on the host.

>>> import numpy as np
>>> x = to_float(np.array([[[0, 255]]], dtype=np.uint8))
>>> x.shape, x.dtype, x.ravel().tolist()
((1, 1, 1, 2), dtype('float32'), [0.0, 1.0])
"""

from __future__ import annotations

import numpy as np

from .. import backend as B

__all__ = ["images_as_float", "standardize", "to_float", "train_val_split"]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, H, W)`` or ``(N, C, H, W)`` -> float32 ``(N, 1|C, H, W)`` in ``[0, 1]``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim != 4:
        raise ValueError(f"to_float expects images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def images_as_float(images: np.ndarray) -> np.ndarray:
    """Images of either pixel scale as float32 ``(N, C, H, W)``.

    uint8 images (``0..255``) are scaled to ``[0, 1]`` exactly as :func:`to_float`
    does; floating images (float16/32/64) keep their values, cast to float32.
    ``(N, H, W)`` becomes ``(N, 1, H, W)``.  Any other dtype or rank is an error.

    >>> images_as_float(np.full((2, 3, 3), 0.5)).dtype, images_as_float(np.zeros((2, 3, 3), np.uint8)).shape
    (dtype('float32'), (2, 1, 3, 3))
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return to_float(images)
    if images.dtype.kind != "f":
        raise TypeError(f"images_as_float expects uint8 or floating images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim != 4:
        raise ValueError(f"images_as_float expects images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    return images.astype(np.float32)


def standardize(
    x: np.ndarray, mean: float | None = None, std: float | None = None
) -> tuple[np.ndarray, float, float]:
    """``(x - mean) / std`` as float32, with one scalar mean and std over all of ``x``.

    Compute the statistics on the training set and pass them for the others::

        x_train, mean, std = standardize(to_float(ds.x_train))
        x_test, _, _ = standardize(to_float(ds.x_test), mean, std)

    Returns:
        ``(x_standardized, mean, std)``; ``mean`` and ``std`` are Python floats.
    """
    x = np.asarray(x, dtype=np.float32)
    mean = float(x.mean(dtype=np.float64)) if mean is None else float(mean)
    std = float(x.std(dtype=np.float64)) if std is None else float(std)
    if not std > 0.0:
        raise ValueError(f"standardize needs a positive std, got {std}")
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False), mean, std


def train_val_split(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` at random into ``(x_train, y_train, x_val, y_val)``.

    ``round(N * val_fraction)`` samples go to validation, chosen with the host
    generator ``xpcnn.backend.host_rng(rng)`` (an int seed is reproducible).
    Both parts keep the original order of their samples; not stratified.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got shapes {x.shape} and {y.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = x.shape[0]
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} of {n} samples leaves an empty train or validation set")
    perm = B.host_rng(rng).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
