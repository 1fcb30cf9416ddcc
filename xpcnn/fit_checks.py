"""Checks of what ``fit`` and ``evaluate`` are given, made on the host before any work starts.

Labels must be integers in ``0..K-1`` of shape ``(N,)``; ``epochs``, ``batch_size``, ``val_split``, ``seed``
and the callbacks are checked too.  Each bad value raises ``ValueError`` or ``TypeError`` naming what was
expected and what was received (the first bad label and its index).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend as B
from . import functional as F
from .datasets.loader import BatchIterator
from .model import Sequential

__all__ = ["check_data"]


def _as_xy(data: Any, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(B.to_numpy(data[0])), np.asarray(B.to_numpy(data[1]))
    raise TypeError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")


def _num_classes(model: Sequential, x: np.ndarray) -> int | None:
    """K, the model's number of outputs for samples shaped like ``x[0]`` (None when the model cannot say)."""
    shapes = getattr(model, "output_shapes", None)
    if shapes is None:
        return None
    try:
        out = shapes((1, *x.shape[1:]))[-1]
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"the model cannot take samples of shape {tuple(x.shape[1:])}: {exc}") from None
    return int(out[-1]) if len(out) == 2 else None


def check_data(model: Sequential, x: np.ndarray, y: np.ndarray, name: str = "train") -> None:
    """Check ``x: (N, ...)`` floating or integer images and ``y: (N,)`` integer labels in ``0..K-1``.

    K is the model's number of outputs.  Raises ValueError / TypeError naming ``name``, what was
    expected and what was received (the first offending label and its index).
    """
    if x.ndim < 2:
        raise ValueError(f"{name} x must have a sample axis and at least one feature axis, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} x must be a numeric array, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty (x has shape {x.shape})")
    if y.ndim != 1:
        hint = "; pass y.ravel()" if y.ndim == 2 and y.shape[1] == 1 else ""
        raise ValueError(f"{name} y must be class labels of shape (N,), got shape {y.shape}{hint}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} x and y have different numbers of samples: {x.shape[0]} and {y.shape[0]}")
    if y.dtype.kind not in "iu":
        bad = ""
        if y.dtype.kind == "f":
            frac = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
            if frac.size:
                bad = f" ({float(y[frac[0]])!r} at index {int(frac[0])})"
        raise TypeError(f"{name} y must be integer class labels, got dtype {y.dtype}{bad}")
    k = _num_classes(model, x)
    low, high = int(y.min()), int(y.max())
    if low < 0 or (k is not None and high >= k):
        index = int(np.argmin(y)) if low < 0 else int(np.argmax(y))
        limit = f"0..{k - 1} (the model has {k} outputs)" if k is not None else ">= 0"
        raise ValueError(f"{name} y must hold labels in {limit}, got {int(y[index])} at index {index}")


def _check_label_range(loader: BatchIterator, logits: Any) -> None:
    """The loader's labels (range read on the host) against the model's classes (a shape: no device read)."""
    if loader.label_range is not None and getattr(logits, "ndim", 0) == 2:
        F.check_label_range(*loader.label_range, int(logits.shape[1]))


def _model_dtype(model: Sequential) -> str:
    ref = next((p.value for p in model.parameters()), None)
    return "float32" if ref is None else B.dtype_name(ref.dtype)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_fit_args(epochs: Any, batch_size: Any, val_split: Any, seed: Any, callbacks: Any) -> None:
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    if val_split is not None:
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float, np.floating, np.integer)) \
                or not 0.0 < float(val_split) < 1.0:
            raise ValueError(f"val_split must be a fraction in (0, 1) (or None for no split), got {val_split!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise TypeError(f"every callback needs an on_epoch_end(trainer, logs) method; got {type(cb).__name__}")
