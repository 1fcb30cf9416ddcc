"""Batch normalisation in Numba for ``(N, D)`` and ``(N, C, H, W)``, forward and backward.

The math is :mod:`xpcnn.functional.norm`'s (biased batch variance, PyTorch's running-statistics update,
``dx = gamma * inv_std * (dout - dbeta/M - xhat * dgamma/M)``).  Every per-feature sum is accumulated in
float64 over sums of rows of ``S`` values taken in the input's dtype (vector lanes); the per-element work
is in the input's dtype too, as in PyTorch's CPU kernel (``y = x * scale + shift``).  The input is viewed
as ``(N, C, S)`` (``S = H*W``, or 1 for ``(N, D)``); the cache keeps ``x`` and the per-feature mean and
``1/sqrt(var + eps)`` instead of ``xhat`` (``xhat`` is recomputed in the backward pass).  Features are
split between the worker threads: each feature's sums run on one thread in a fixed order, so any thread
count gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import threads
from ._jit import jit, jit_sum

__all__ = ["NumbaBatchNormCache", "batch_norm_backward", "batch_norm_eligible", "batch_norm_forward",
           "batch_norm_relu_backward", "batch_norm_relu_forward"]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@jit_sum
def _stats(xf, N, C, S, c0, c1, mean, var):  # pragma: no cover - compiled
    """Per feature c in [c0, c1): mean and biased variance over (n, s), two passes (sums of each row of ``S``
    values in the input's dtype, added up in float64)."""
    M = N * S
    for c in range(c0, c1):
        acc = 0.0
        for n in range(N):
            base = np.uint64((n * C + c) * S)
            row = xf.dtype.type(0)
            for s in range(np.uint64(S)):
                row += xf[base + s]
            acc += row
        mu = acc / M
        m = xf.dtype.type(mu)
        acc2 = 0.0
        for n in range(N):
            base = np.uint64((n * C + c) * S)
            row = xf.dtype.type(0)
            for s in range(np.uint64(S)):
                d = xf[base + s] - m
                row += d * d
            acc2 += row
        mean[c] = mu
        var[c] = acc2 / M


@jit
def _affine(xf, N, C, S, c0, c1, scale, shift, relu, yf):  # pragma: no cover - compiled
    """y = x * scale + shift per feature (``scale = gamma * inv_std``, ``shift = beta - mean * scale``, in the
    input's dtype), then max(y, 0) if ``relu`` (NaN stays NaN, as the ReLU op)."""
    zero = yf.dtype.type(0)
    for c in range(c0, c1):
        a, b = scale[c], shift[c]
        for n in range(N):
            base = np.uint64((n * C + c) * S)
            if relu:
                for s in range(np.uint64(S)):
                    v = xf[base + s] * a + b
                    yf[base + s] = zero if v <= zero else v
            else:
                for s in range(np.uint64(S)):
                    yf[base + s] = xf[base + s] * a + b


@jit_sum
def _backward(doutf, xf, N, C, S, c0, c1, mean, inv_std, gamma, train, relu, yf, dxf, dgamma,
              dbeta):  # pragma: no cover - compiled
    """dgamma = sum dout*xhat, dbeta = sum dout; dx as in the module docstring (eval: dout*gamma*inv_std).

    Row sums in the input's dtype, added up in float64; dx = k1*dout + k2*(x - mean) + k3 per feature.
    With ``relu``, ``dout`` is first masked by ``y > 0`` (``yf``: the fused ReLU's output)."""
    M = N * S
    t = xf.dtype.type
    zero = t(0)
    for c in range(c0, c1):
        mu, inv, g = mean[c], inv_std[c], np.float64(gamma[c])
        m = t(mu)
        sb = 0.0
        sg = 0.0
        for n in range(N):
            base = np.uint64((n * C + c) * S)
            rb = zero
            rg = zero
            for s in range(np.uint64(S)):
                d = doutf[base + s] if not relu or yf[base + s] > zero else zero
                rb += d
                rg += d * (xf[base + s] - m)
            sb += rb
            sg += rg
        sg *= inv
        dbeta[c] = sb
        dgamma[c] = sg
        scale = g * inv
        mb = sb / M
        mg = sg / M
        if not train:  # eval mode: dx = scale * dout
            mb = 0.0
            mg = 0.0
        k1, k2, k3 = t(scale), t(-scale * inv * mg), t(-scale * mb)
        for n in range(N):
            base = np.uint64((n * C + c) * S)
            for s in range(np.uint64(S)):
                d = doutf[base + s] if not relu or yf[base + s] > zero else zero
                dxf[base + s] = k1 * d + k2 * (xf[base + s] - m) + k3


@dataclass(frozen=True)
class NumbaBatchNormCache:
    """x (C-contiguous), per-feature mean and 1/sqrt(var + eps) (float64), gamma, the mode, and the output
    when a ReLU was fused in (its sign masks ``dout``)."""

    x: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    train: bool
    y: np.ndarray | None = None


def batch_norm_eligible(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, *args: Any,
                        **kwargs: Any) -> bool:
    """NumPy float32/float64 ``(N, D)`` or ``(N, C, H, W)``, every array of the same dtype, writable statistics."""
    arrays = (x, gamma, beta, running_mean, running_var)
    if any(type(a) is not np.ndarray for a in arrays) or x.dtype not in FLOATS:
        return False
    if any(a.dtype != x.dtype for a in arrays) or x.ndim not in (2, 4) or x.size == 0:
        return False
    return running_mean.flags.writeable and running_var.flags.writeable


def _split(task: Any, C: int) -> None:
    n_blocks = min(C, 2 * threads.workers())
    step = -(-C // n_blocks)
    threads.run_blocks(lambda k: task(k * step, min(C, (k + 1) * step)), -(-C // step))


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                       running_var: np.ndarray, train: bool, momentum: float = 0.1,
                       eps: float = 1e-5, relu: bool = False) -> tuple[np.ndarray, NumbaBatchNormCache]:
    """y like x (then ReLU if ``relu``); in train mode the running statistics are updated in place
    (reference semantics)."""
    x = np.ascontiguousarray(x)
    N, C = x.shape[0], x.shape[1]
    S = x.size // max(1, N * C)
    xf = x.reshape(-1)
    if train:
        mean, var = np.empty(C), np.empty(C)
        _split(lambda c0, c1: _stats(xf, N, C, S, c0, c1, mean, var), C)
        M = N * S
        m = float(momentum)
        running_mean[...] = (1.0 - m) * running_mean + (m * mean).astype(x.dtype)
        running_var[...] = (1.0 - m) * running_var + (m * var * (M / (M - 1.0))).astype(x.dtype)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + float(eps))
    scale = gamma.astype(np.float64) * inv_std
    shift = (beta.astype(np.float64) - mean * scale).astype(x.dtype)
    scale = scale.astype(x.dtype)
    y = np.empty_like(x)
    yf = y.reshape(-1)
    _split(lambda c0, c1: _affine(xf, N, C, S, c0, c1, scale, shift, relu, yf), C)
    return y, NumbaBatchNormCache(x, mean, inv_std, gamma, bool(train), y if relu else None)


def batch_norm_backward(dout: np.ndarray, cache: NumbaBatchNormCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, dgamma, dbeta)``: dx like x, dgamma and dbeta (C,)."""
    x = cache.x
    d = np.ascontiguousarray(dout, dtype=x.dtype)
    N, C = x.shape[0], x.shape[1]
    S = x.size // max(1, N * C)
    dx = np.empty_like(x)
    dgamma, dbeta = np.empty(C), np.empty(C)
    df, xf, dxf = d.reshape(-1), x.reshape(-1), dx.reshape(-1)
    relu = cache.y is not None
    yf = cache.y.reshape(-1) if cache.y is not None else xf
    _split(lambda c0, c1: _backward(df, xf, N, C, S, c0, c1, cache.mean, cache.inv_std, cache.gamma, cache.train,
                                    relu, yf, dxf, dgamma, dbeta), C)
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def batch_norm_relu_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                            running_var: np.ndarray, train: bool, momentum: float = 0.1,
                            eps: float = 1e-5) -> tuple[np.ndarray, NumbaBatchNormCache]:
    """y = max(batch_norm(x), 0) in one pass; the batch norm's output is never stored on its own."""
    return batch_norm_forward(x, gamma, beta, running_mean, running_var, train, momentum, eps, relu=True)


batch_norm_relu_backward = batch_norm_backward
