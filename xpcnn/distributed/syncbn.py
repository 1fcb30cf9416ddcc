"""Synchronised batch norm: train-mode statistics over the global batch, reduced across ranks.

A rank holds ``x: (n_r, C, H, W)`` (or ``(n_r, D)``), its shard of the global batch of
``N = sum n_r`` samples; with ``M`` the global number of values per feature, ``S`` sums over the
local statistics axes and ``allreduce`` sums over ranks:

    mu  = allreduce(S x) / M,          var = allreduce(S (x - mu)^2) / M      (two passes, as one process)
    xhat = (x - mu) / sqrt(var + eps), y = gamma * xhat + beta
    running statistics: as one process with mu, var and M (identical on every rank)

Backward, with the loss gradient already scaled to the global mean (each rank's ``dout`` is its
rows of the one-process ``dout``):

    dbeta_r = S dout,  dgamma_r = S dout * xhat                (this rank's part of the parameter gradients)
    dx = gamma / sqrt(var + eps) * (dout - allreduce(dbeta_r) / M - xhat * allreduce(dgamma_r) / M)

The layer's ``grads`` get the *local* ``dgamma_r, dbeta_r``: the gradient Allreduce sums them once.
(Storing the reduced sums there, or reducing them in place, would count them ``size`` times.)
The object plugs into a batch-norm layer's ``sync`` attribute with the signature of the
``batch_norm`` op (:mod:`xpcnn.kernels.ops`); eval mode never calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat

from ..functional.norm import BatchNormCache, _axes_and_shape
from .comm import Communicator

__all__ = ["SyncBatchNorm", "SyncBatchNormCache"]


@dataclass
class SyncBatchNormCache(BatchNormCache):
    """:class:`~xpcnn.functional.norm.BatchNormCache` plus ``count``, the global values per feature ``M``."""

    count: int = 0


class SyncBatchNorm:
    """``forward(x, gamma, beta, running_mean, running_var, train, momentum, eps) -> (y, cache)`` and
    ``backward(dout, cache) -> (dx, dgamma_local, dbeta_local)`` with statistics over all ranks of ``comm``."""

    def __init__(self, comm: Communicator, global_rows: Callable[[int], int] | None = None) -> None:
        """global_rows: maps the local batch size to the global one (default: a sum over ranks)."""
        self.comm = comm
        self.global_rows = global_rows or (lambda n: int(comm.allreduce_floats([float(n)])[0]))

    def forward(self, x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, train: bool,
                momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, SyncBatchNormCache]:
        if not train:
            raise ValueError("SyncBatchNorm is for train mode; eval mode uses the running statistics locally")
        xp = array_api_compat.array_namespace(x)
        axes, bshape = _axes_and_shape(x)
        per_row = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]
        count = self.global_rows(int(x.shape[0])) * per_row
        if count < 2:
            raise ValueError(f"batch norm in train mode needs more than one value per feature over the global "
                             f"batch, got {count} (local x of shape {tuple(x.shape)})")
        mu = self.comm.allreduce(xp.sum(x, axis=axes)) / float(count)
        xc = x - xp.reshape(mu, bshape)
        var = self.comm.allreduce(xp.sum(xc * xc, axis=axes)) / float(count)
        inv_std = 1.0 / xp.sqrt(xp.reshape(var, bshape) + float(eps))
        xhat = xc * inv_std
        m = float(momentum)
        running_mean[...] = (1.0 - m) * running_mean + m * mu
        running_var[...] = (1.0 - m) * running_var + m * var * (count / (count - 1.0))
        g = xp.reshape(gamma, bshape)
        y = g * xhat + xp.reshape(beta, bshape)
        return y, SyncBatchNormCache(xhat, inv_std, g, True, count)

    def backward(self, dout: Any, cache: SyncBatchNormCache) -> tuple[Any, Any, Any]:
        xp = array_api_compat.array_namespace(dout)
        axes, bshape = _axes_and_shape(dout)
        dbeta = xp.sum(dout, axis=axes)
        dgamma = xp.sum(dout * cache.xhat, axis=axes)
        features = dbeta.shape[0]
        both = self.comm.allreduce(xp.concat([dbeta, dgamma]))  # a new array: dbeta, dgamma stay local
        count = float(cache.count)
        mean_dout = xp.reshape(both[:features], bshape) / count
        mean_dout_xhat = xp.reshape(both[features:], bshape) / count
        dx = cache.gamma * cache.inv_std * (dout - mean_dout - cache.xhat * mean_dout_xhat)
        return dx, dgamma, dbeta
