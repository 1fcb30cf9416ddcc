"""Fully-connected (dense) layer math: ``y = x @ W + b``.

x: (N, in_features), W: (in_features, out_features), b: (out_features,).
"""

from __future__ import annotations

from typing import Any

from ..checks import check_floating, check_rank, check_same_dtype, namespace

__all__ = ["dense", "dense_backward"]


def dense(x: Any, W: Any, b: Any | None = None) -> Any:
    """``y = x @ W + b``: (N, in) -> (N, out)."""
    xp = namespace(x, W, b)
    check_rank(x, 2, "x", "(N, in_features)")
    check_rank(W, 2, "W", "(in_features, out_features)")
    check_floating(x, "x")
    check_same_dtype(x, "x", W=W, b=b)
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"feature mismatch: W expects {W.shape[0]} input features (W shape {tuple(W.shape)}), "
                         f"but x has {x.shape[1]} (x shape {tuple(x.shape)})")
    y = xp.matmul(x, W)
    if b is not None:
        y += b
    return y


def dense_backward(dout: Any, x: Any, W: Any, need_dx: bool = True) -> tuple[Any | None, Any, Any]:
    """Returns ``(dx, dW, db)``: ``dx = dout @ W^T``, ``dW = x^T @ dout``, ``db = sum_n dout``."""
    xp = namespace(dout, x, W)
    if tuple(dout.shape) != (x.shape[0], W.shape[1]):
        raise ValueError(f"dout must have shape {(x.shape[0], W.shape[1])}, got {tuple(dout.shape)}")
    dW = xp.matmul(xp.matrix_transpose(x), dout)
    db = xp.sum(dout, axis=0)
    dx = xp.matmul(dout, xp.matrix_transpose(W)) if need_dx else None
    return dx, dW, db
