"""Inverted dropout: at train time keep each unit with probability ``1 - p`` and scale it by ``1/(1 - p)``.

The mask is drawn on the host RNG and moved to the input's backend, so the
same seed drops the same units on every backend; eval mode is the identity.
"""

from __future__ import annotations

from typing import Any

from ..backend import dtype_name, to_device_like
from ..checks import check_floating, namespace

__all__ = ["dropout_backward", "dropout_forward", "dropout_mask"]


def dropout_mask(shape: tuple[int, ...], p: float, rng: Any, like: Any) -> Any:
    """A mask of ``0`` and ``1/(1 - p)`` with ``shape``, on ``like``'s backend, device and dtype.

    ``rng`` is a host ``numpy.random.Generator`` (see :func:`xpcnn.backend.host_rng`).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")

    keep = rng.random(shape) >= p  # host bool array
    return to_device_like((keep * (1.0 / (1.0 - p))).astype(dtype_name(like.dtype)), like)


def _dropout_forward(x: Any, p: float, rng: Any) -> tuple[Any, Any]:
    mask = dropout_mask(tuple(x.shape), p, rng, x)
    return x * mask, mask


def dropout_forward(x: Any, p: float, rng: Any) -> tuple[Any, Any]:
    """``y = x * mask`` with a fresh mask from :func:`dropout_mask`: returns ``(y, mask)``. x: any shape."""
    namespace(x)
    check_floating(x, "x")
    return _dropout_forward(x, p, rng)


def _dropout_backward(dout: Any, mask: Any) -> Any:
    return dout * mask


def dropout_backward(dout: Any, mask: Any) -> Any:
    """``dx = dout * mask``."""
    namespace(dout, mask)
    if tuple(mask.shape) != tuple(dout.shape):
        raise ValueError(f"dropout mask shape {tuple(mask.shape)} does not match dout shape {tuple(dout.shape)}")
    return _dropout_backward(dout, mask)
