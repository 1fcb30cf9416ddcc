"""Fully-connected (dense) layer math: ``y = x @ W + b``.

x: (N, in_features), W: (in_features, out_features), b: (out_features,).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..checks import check_floating, check_rank, check_same_dtype, namespace

__all__ = ["check_dense_args", "dense", "dense_backward", "dense_forward"]


def check_dense_args(x: Any, W: Any, b: Any | None) -> Any:
    """Validate a dense layer's arrays (namespace, ranks, dtypes, feature count); returns ``xp``."""
    xp = namespace(x, W, b)
    check_rank(x, 2, "x", "(N, in_features)")
    check_rank(W, 2, "W", "(in_features, out_features)")
    check_floating(x, "x")
    check_same_dtype(x, "x", W=W, b=b)
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"feature mismatch: W expects {W.shape[0]} input features (W shape {tuple(W.shape)}), "
                         f"but x has {x.shape[1]} (x shape {tuple(x.shape)})")
    return xp


def _dense_forward(x: Any, W: Any, b: Any | None) -> tuple[Any, tuple[Any, Any]]:
    y = array_api_compat.array_namespace(x).matmul(x, W)
    if b is not None:
        y += b
    return y, (x, W)


def dense_forward(x: Any, W: Any, b: Any | None = None) -> tuple[Any, tuple[Any, Any]]:
    """``y = x @ W + b``: (N, in) -> (N, out); returns ``(y, cache)`` with ``cache = (x, W)``."""
    check_dense_args(x, W, b)
    return _dense_forward(x, W, b)


def dense(x: Any, W: Any, b: Any | None = None) -> Any:
    """``y = x @ W + b``: (N, in) -> (N, out)."""
    return dense_forward(x, W, b)[0]


def _dense_backward(dout: Any, cache: tuple[Any, Any], need_dx: bool = True) -> tuple[Any | None, Any, Any]:
    xp = array_api_compat.array_namespace(dout)
    x, W = cache
    dW = xp.matmul(xp.matrix_transpose(x), dout)
    db = xp.sum(dout, axis=0)
    dx = xp.matmul(dout, xp.matrix_transpose(W)) if need_dx else None
    return dx, dW, db


def dense_backward(dout: Any, cache: tuple[Any, Any], need_dx: bool = True) -> tuple[Any | None, Any, Any]:
    """Returns ``(dx, dW, db)``: ``dx = dout @ W^T``, ``dW = x^T @ dout``, ``db = sum_n dout``."""
    x, W = cache
    namespace(dout, x, W)
    if tuple(dout.shape) != (x.shape[0], W.shape[1]):
        raise ValueError(f"dout must have shape {(x.shape[0], W.shape[1])}, got {tuple(dout.shape)}")
    return _dense_backward(dout, cache, need_dx)
