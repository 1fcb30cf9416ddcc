"""The :class:`Dataset` container, and the user's own arrays: checked in memory or loaded from an ``.npz`` file.

A data set is four arrays, ``x_train, y_train, x_test, y_test``:

- images ``x``: ``(N, C, H, W)`` (NCHW) or ``(N, H, W)`` (one channel, returned
  as ``(N, 1, H, W)``), dtype uint8 (pixels ``0..255``) or floating (any finite
  values; kept as they are).  Train and test images share ``(C, H, W)`` and the
  dtype kind (both uint8 or both floating: the pixel scale must agree).
- labels ``y``: ``(N,)`` integers in ``0..num_classes-1``, returned as int64.

Train on them from a script by passing NumPy arrays to :func:`xpcnn.train.fit`:

>>> import numpy as np
>>> from xpcnn import models, optim, train
>>> from xpcnn.datasets import from_arrays, images_as_float, standardize
>>> rng = np.random.default_rng(0)
>>> ds = from_arrays(rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), rng.integers(0, 10, 16),
...                  rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), rng.integers(0, 10, 8))
>>> ds.x_train.shape, ds.y_train.dtype
((16, 1, 28, 28), dtype('int64'))
>>> x_train, mean, std = standardize(images_as_float(ds.x_train))
>>> x_test, _, _ = standardize(images_as_float(ds.x_test), mean, std)
>>> model = models.lenet5(num_classes=count_classes(ds), rng=0)
>>> history = train.fit(model, optim.Adam(model.parameters()), (x_train, ds.y_train), epochs=1,
...                     batch_size=8, seed=0, progress=False, log=None)
>>> sorted(train.evaluate(model, (x_test, ds.y_test)))
['accuracy', 'loss']

Or save them once with ``np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)``
and load them with :func:`load_arrays` (what ``xpcnn train --dataset npz --data PATH`` uses).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .idx import DatasetError
from .sources import DatasetNotFoundError

__all__ = ["ARRAY_KEYS", "Dataset", "count_classes", "from_arrays", "load_arrays"]

#: The keys an ``.npz`` file for :func:`load_arrays` must hold (and the only ones it may hold).
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Dataset(NamedTuple):
    """A loaded data set: images ``x_*`` with the sample axis first, labels ``y_*`` of shape ``(N,)``.

    MNIST / Fashion-MNIST: ``x`` uint8 ``(N, 28, 28)``, ``y`` uint8; CIFAR-10: ``x`` uint8
    ``(N, 3, 32, 32)``, ``y`` uint8; :func:`from_arrays` / :func:`load_arrays`: ``x`` ``(N, C, H, W)``
    uint8 or floating, ``y`` int64.  Unpacks as ``x_train, y_train, x_test, y_test = load_mnist()``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def count_classes(ds: Dataset) -> int:
    """The number of classes the labels imply: ``max(label) + 1`` over the train and test labels."""
    top = max((int(np.max(y)) for y in (ds.y_train, ds.y_test) if np.size(y)), default=-1)
    return top + 1


def _images(x: Any, key: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DatasetError(f"{key}: expected uint8 or floating images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise DatasetError(f"{key}: expected images of shape (N, C, H, W) or (N, H, W), got shape {x.shape}")
    if 0 in x.shape:
        raise DatasetError(f"{key}: expected at least one image with non-empty (C, H, W), got shape {x.shape}")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DatasetError(
                f"{key}: expected finite values, found {int(bad.sum())} NaN or infinite (the first at index {index})"
            )
    return x


def _labels(y: Any, key: str, n: int, x_key: str, num_classes: int | None) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{key}: expected integer class labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DatasetError(f"{key}: expected labels of shape (N,), got shape {y.shape}")
    if y.shape[0] != n:
        raise DatasetError(f"{x_key} has {n} images but {key} has {y.shape[0]} labels")
    if int(y.min()) < 0:
        bad = int(np.argmax(y < 0))
        raise DatasetError(f"{key}: labels must be >= 0, found {int(y[bad])} at index {bad}")
    if num_classes is not None and int(y.max()) >= num_classes:
        bad = int(np.argmax(y >= num_classes))
        raise DatasetError(f"{key}: labels must be in 0..{num_classes - 1}, found {int(y[bad])} at index {bad}")
    return y.astype(np.int64)


def from_arrays(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, num_classes: int | None = None
) -> Dataset:
    """Check the user's arrays (see the module docstring) and return them as a :class:`Dataset`.

    Args:
        x_train, x_test: images ``(N, C, H, W)`` or ``(N, H, W)``, uint8 or floating (finite).
        y_train, y_test: integer labels ``(N,)``, ``>= 0``.
        num_classes: if given, every label must be below it; otherwise see :func:`count_classes`.

    Returns:
        ``Dataset(x_train, y_train, x_test, y_test)`` with images ``(N, C, H, W)`` in their own
        dtype (no copy where none is needed) and labels int64.

    Raises:
        DatasetError: a wrong dtype, shape, count, a non-finite pixel or a label out of range,
            naming the array, what was expected and what was found.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    xs = {"x_train": _images(x_train, "x_train"), "x_test": _images(x_test, "x_test")}
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise DatasetError(
            f"x_train and x_test must have the same (C, H, W), got {xs['x_train'].shape[1:]} "
            f"and {xs['x_test'].shape[1:]}"
        )
    if (xs["x_train"].dtype == np.uint8) != (xs["x_test"].dtype == np.uint8):
        raise DatasetError(
            f"x_train is {xs['x_train'].dtype} but x_test is {xs['x_test'].dtype}: both must be uint8 (0..255) "
            "or both floating, so that they share one pixel scale"
        )
    y_tr = _labels(y_train, "y_train", xs["x_train"].shape[0], "x_train", num_classes)
    y_te = _labels(y_test, "y_test", xs["x_test"].shape[0], "x_test", num_classes)
    return Dataset(xs["x_train"], y_tr, xs["x_test"], y_te)


def load_arrays(path: str | os.PathLike[str], *, num_classes: int | None = None) -> Dataset:
    """Load the user's data set from an ``.npz`` file with exactly the keys :data:`ARRAY_KEYS`.

    Written by ``np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)`` (or
    ``savez_compressed``); read with ``allow_pickle=False``, so object arrays are refused.
    The arrays are checked as by :func:`from_arrays`.

    Raises:
        DatasetNotFoundError: ``path`` is not a file.
        DatasetError: not a readable ``.npz``, missing or unexpected keys, object arrays, or
            arrays that fail :func:`from_arrays`'s checks; the message starts with the path.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file (expected an .npz file with keys {', '.join(ARRAY_KEYS)})")
    arrays: dict[str, np.ndarray] = {}
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: expected an .npz archive with keys {', '.join(ARRAY_KEYS)}, "
                               f"got a single array of shape {np.shape(loaded)}")
        with loaded as npz:
            keys = set(npz.files)
            missing = [k for k in ARRAY_KEYS if k not in keys]
            unexpected = sorted(keys - set(ARRAY_KEYS))
            if missing or unexpected:
                found = [f"missing {', '.join(missing)}"] if missing else []
                found += [f"unexpected {', '.join(unexpected)}"] if unexpected else []
                raise DatasetError(f"{path}: expected exactly the keys {', '.join(ARRAY_KEYS)}; {'; '.join(found)}")
            for key in ARRAY_KEYS:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:  # object arrays: "cannot be loaded when allow_pickle=False"
                    raise DatasetError(
                        f"{path}: {key} cannot be read without pickle ({exc}); only numeric arrays are accepted"
                    ) from None
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    try:
        return from_arrays(*(arrays[k] for k in ARRAY_KEYS), num_classes=num_classes)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
