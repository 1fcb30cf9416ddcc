"""Dense layers on the kernel set's own threads, with BLAS held at one thread.

``y = x @ W + b`` (``x: (N, in)``, ``W: (in, out)``) and its backward ``dx = dout @ W^T``,
``dW = x^T @ dout``, ``db = sum_n dout`` -- the reference's math, with each product split into row blocks
(of ``y``/``dx``: samples; of ``dW``: input features) that the worker threads of :mod:`.threads` multiply
with single-threaded BLAS.

Why not let BLAS thread the product itself: OpenBLAS's worker threads keep spinning for a while after
each multi-threaded call, and in a training step the next op is a convolution whose own two threads
then share the machine with a spinning one (see :mod:`.threads`).

The blocks depend only on the shapes, never on the thread count, so 1 and 2 threads give the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import threads

__all__ = ["dense_backward", "dense_eligible", "dense_forward", "row_blocks"]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: rows per block at least (fewer rows run as one block)
MIN_ROWS = 64
MAX_BLOCKS = 8


def row_blocks(n: int) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]`` covering ``range(n)``: about equal blocks of at least :data:`MIN_ROWS` rows."""
    k = max(1, min(MAX_BLOCKS, n // MIN_ROWS))
    edges = [n * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def dense_eligible(x: Any, W: Any, b: Any, *args: Any, **kwargs: Any) -> bool:
    """NumPy float32/float64 ``x: (N, in)``, ``W: (in, out)`` (and ``b: (out,)``) of one dtype."""
    if args or kwargs or type(x) is not np.ndarray or type(W) is not np.ndarray:
        return False
    if b is not None and (type(b) is not np.ndarray or b.dtype != x.dtype or b.shape != (W.shape[-1],)):
        return False
    return (x.dtype in FLOATS and W.dtype == x.dtype and x.ndim == 2 and W.ndim == 2 and x.shape[1] == W.shape[0]
            and x.shape[0] > 0)


def _rows_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b``, block of rows by block of rows on the worker threads (BLAS at one thread)."""
    blocks = row_blocks(a.shape[0])

    def task(i: int) -> None:
        r0, r1 = blocks[i]
        np.matmul(a[r0:r1], b, out=out[r0:r1])

    threads.hold_blas()
    threads.run_blocks(task, len(blocks))


def dense_forward(x: np.ndarray, W: np.ndarray,
                  b: np.ndarray | None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """y: (N, out) = x @ W + b; the cache ``(x, W)`` as the reference's."""
    y = np.empty((x.shape[0], W.shape[1]), dtype=x.dtype)
    _rows_matmul(x, W, y)
    if b is not None:
        y += b
    return y, (x, W)


def dense_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray],
                   need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dW, db)``: dx (N, in) or None, dW (in, out), db (out,)."""
    x, W = cache
    dout = np.asarray(dout, dtype=x.dtype)
    dW = np.empty(W.shape, dtype=x.dtype)
    _rows_matmul(x.T, dout, dW)  # rows of dW are input features: x^T's rows
    db = np.sum(dout, axis=0)
    dx = None
    if need_dx:
        dx = np.empty(x.shape, dtype=x.dtype)
        _rows_matmul(dout, W.T, dx)
    return dx, dW, db
