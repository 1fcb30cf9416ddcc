"""Batch normalisation for ``(N, D)`` and ``(N, C, H, W)`` inputs, forward and backward.

Train mode normalises with the batch mean and the *biased* batch variance and
returns updated running statistics (PyTorch convention):

    mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta
    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)

with M the number of values per feature (N, or N*H*W); the running statistics are updated in
place (they are the layer's buffers).  Eval mode uses the running statistics instead.
Statistics are per feature: axis 0 for (N, D), axes (0, 2, 3) for (N, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from ..checks import check_floating, check_rank, check_same_dtype, namespace

__all__ = ["BatchNormCache", "batch_norm_backward", "batch_norm_forward", "check_batch_norm_args"]


@dataclass
class BatchNormCache:
    """What the backward pass needs: the normalised input, ``1/sqrt(var + eps)`` and the mode."""

    xhat: Any
    inv_std: Any  # broadcastable to x
    gamma: Any    # broadcastable to x
    train: bool


def _axes_and_shape(x: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    return (0, 2, 3), (1, x.shape[1], 1, 1)


def check_batch_norm_args(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any) -> tuple[Any, int]:
    """Validate batch norm's arrays (namespace, rank, dtypes, per-feature shapes); returns ``(xp, M)``."""
    xp = namespace(x, gamma, beta, running_mean, running_var)
    check_rank(x, (2, 4), "x", "(N, D) or (N, C, H, W)")
    check_floating(x, "x")
    check_same_dtype(x, "x", gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
    features = x.shape[1]
    for name, arr in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if tuple(arr.shape) != (features,):
            raise ValueError(f"{name} must have shape ({features},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(arr.shape)}")
    if x.ndim == 2:
        count = x.shape[0]
    else:
        count = x.shape[0] * x.shape[2] * x.shape[3]
    return xp, count


def _batch_norm_forward(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, train: bool,
                        momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, BatchNormCache]:
    xp = array_api_compat.array_namespace(x)
    axes, bshape = _axes_and_shape(x)
    features = x.shape[1]
    g = xp.reshape(gamma, bshape)
    if train:
        count = 1
        for a in axes:
            count *= x.shape[a]
        mu = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mu
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + float(eps))
        xhat = xc * inv_std
        m = float(momentum)
        running_mean[...] = (1.0 - m) * running_mean + m * xp.reshape(mu, (features,))
        running_var[...] = (1.0 - m) * running_var + m * xp.reshape(var, (features,)) * (count / (count - 1.0))
    else:
        inv_std = xp.reshape(1.0 / xp.sqrt(running_var + float(eps)), bshape)
        xhat = (x - xp.reshape(running_mean, bshape)) * inv_std
    y = g * xhat + xp.reshape(beta, bshape)
    return y, BatchNormCache(xhat, inv_std, g, train)


def batch_norm_forward(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, train: bool,
                       momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, BatchNormCache]:
    """Returns ``(y, cache)``; in train mode ``running_mean`` and ``running_var`` are updated in place.

    x: (N, D) or (N, C, H, W); gamma, beta, running_mean, running_var: (D,) or (C,).
    """
    _, count = check_batch_norm_args(x, gamma, beta, running_mean, running_var)
    if train and count < 2:
        raise ValueError(f"batch norm in train mode needs more than one value per feature, got x of shape "
                         f"{tuple(x.shape)}")
    return _batch_norm_forward(x, gamma, beta, running_mean, running_var, train, momentum, eps)


def batch_norm_backward(dout: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Validating wrapper of :func:`_batch_norm_backward`: ``(dx, dgamma, dbeta)``."""
    namespace(dout, cache.xhat)
    if tuple(dout.shape) != tuple(cache.xhat.shape):
        raise ValueError(f"dout must have the forward output's shape {tuple(cache.xhat.shape)}, "
                         f"got {tuple(dout.shape)}")
    return _batch_norm_backward(dout, cache)


def _batch_norm_backward(dout: Any, cache: BatchNormCache) -> tuple[Any, Any, Any]:
    """Returns ``(dx, dgamma, dbeta)``.

    ``dbeta = sum(dout)`` and ``dgamma = sum(dout * xhat)`` over the statistics axes.  In train
    mode the batch statistics depend on x; since gamma is constant per feature, the textbook
    ``dx = inv_std/M * (M*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))`` with ``dxhat = dout*gamma``
    simplifies to

        dx = gamma * inv_std * (dout - dbeta/M - xhat * dgamma/M)

    which reuses the parameter gradients and saves five passes over the data.  Eval mode:
    ``dx = dout * gamma * inv_std`` (the running statistics are constants).
    """
    xp = array_api_compat.array_namespace(dout)
    axes, bshape = _axes_and_shape(dout)
    dbeta = xp.sum(dout, axis=axes)
    dgamma = xp.sum(dout * cache.xhat, axis=axes)
    scale = cache.gamma * cache.inv_std  # per feature, broadcastable
    if not cache.train:
        return dout * scale, dgamma, dbeta
    count = 1
    for a in axes:
        count *= dout.shape[a]
    mean_dout = xp.reshape(dbeta, bshape) / float(count)
    mean_dout_xhat = xp.reshape(dgamma, bshape) / float(count)
    dx = scale * (dout - mean_dout - cache.xhat * mean_dout_xhat)
    return dx, dgamma, dbeta
