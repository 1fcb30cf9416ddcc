"""dense and softmax_cross_entropy for CuPy float32 arrays (``dense.cu``, ``loss.cu``), and the device tallies."""

from __future__ import annotations

from typing import Any

import numpy as np

from .launch import XENT_THREADS, Kernels, _is_f32, i32
from .update_ops import grad_buffer

#: dense layers with at most this many multiply-adds (N*K*M) use the one-launch kernels, larger ones cuBLAS
DENSE_KERNEL_LIMIT = 1 << 26


def _dense_small(x: Any, W: Any) -> bool:
    return x.shape[0] * W.shape[0] * W.shape[1] <= DENSE_KERNEL_LIMIT


def _dense_forward(k: Kernels, x: Any, W: Any, b: Any) -> tuple[Any, Any]:
    if not x.flags.c_contiguous:
        x = k.cp.ascontiguousarray(x)
    N, K = x.shape
    M = W.shape[1]
    if _dense_small(x, W):
        y = k.cp.empty((N, M), dtype=np.float32)
        k.launch("dense.cu", "dense_forward_f32", N * M, (x, W, k.ptr(b), y, i32(N), i32(K), i32(M)))
    else:
        y = k.cp.matmul(x, W)
        if b is not None:
            y += b
    return y, (x, W, b)


def _dense_backward(k: Kernels, dout: Any, cache: tuple[Any, Any, Any], need_dx: bool = True) -> tuple[Any, ...]:
    x, W, b = cache
    if not dout.flags.c_contiguous:
        dout = k.cp.ascontiguousarray(dout)
    N, K = x.shape
    M = W.shape[1]
    dW = grad_buffer(k, W)
    db = grad_buffer(k, b) if b is not None else None
    dx = k.cp.empty((N, K), dtype=np.float32) if need_dx else None
    if _dense_small(x, W):
        k.launch("dense.cu", "dense_backward_f32", (N * K if need_dx else 0) + K * M + (M if b is not None else 0),
                 (x, W, dout, k.ptr(dx), dW, k.ptr(db), i32(N), i32(K), i32(M)))
    else:
        k.cp.matmul(x.T, dout, out=dW)
        if db is not None:
            k.cp.sum(dout, axis=0, out=db)
        if need_dx:
            k.cp.matmul(dout, W.T, out=dx)
    return dx, dW, db


def _dense_eligible(x: Any, W: Any, b: Any) -> bool:
    return _is_f32(x, W, b) and x.ndim == 2 and W.flags.c_contiguous and x.shape[0] > 0


# -- softmax cross-entropy -------------------------------------------------------------------------

_LABEL_KERNELS = {np.dtype(np.int64): "softmax_xent_i64_f32", np.dtype(np.int32): "softmax_xent_i32_f32",
                  np.dtype(np.uint8): "softmax_xent_u8_f32"}


def _device_key(a: Any) -> Any:
    dev = getattr(a, "device", None)
    return getattr(dev, "id", dev)


def _tally_buffer(k: Kernels, like: Any) -> Any:
    key = _device_key(like)
    buf = k.tallies.get(key)
    if buf is None:
        buf = k.tallies[key] = k.cp.zeros(4, dtype=np.float64)
    return buf


def _xent_forward(k: Kernels, logits: Any, labels: Any) -> tuple[Any, Any]:
    if not logits.flags.c_contiguous:
        logits = k.cp.ascontiguousarray(logits)
    N, C = logits.shape
    loss = k.cp.empty((), dtype=np.float32)
    dz = k.cp.empty((N, C), dtype=np.float32)
    k.function("loss.cu", _LABEL_KERNELS[np.dtype(labels.dtype)])(
        (1,), (XENT_THREADS,), (logits, labels, dz, loss, _tally_buffer(k, logits), i32(N), i32(C)))
    return loss, dz


def _xent_backward(k: Kernels, dout: Any, dz: Any) -> Any:
    return dz if dout is None else dz * dout


def _xent_eligible(logits: Any, labels: Any) -> bool:
    return (_is_f32(logits) and logits.ndim == 2 and labels.ndim == 1 and logits.shape[0] > 0
            and np.dtype(labels.dtype) in _LABEL_KERNELS and labels.flags.c_contiguous)


def tallies_of(k: Kernels, device: Any = None, reset: bool = True) -> dict[str, float]:
    """:func:`read_tallies` for the kernels of one CuPy-like module (tests pass the stand-in's)."""
    key = device if device is not None else next(iter(k.tallies))
    buf = k.tallies[key]
    values = [float(v) for v in buf.get()] if hasattr(buf, "get") else [float(v) for v in buf]
    if reset:
        buf[...] = 0.0
    return dict(zip(("loss_sum", "correct", "seen", "bad_labels"), values, strict=True))
