"""Batch normalisation layers for (N, D) and (N, C, H, W) inputs (op: ``batch_norm``)."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..checks import integer, positive, real
from .base import Layer, register


class _BatchNorm(Layer):
    _ndim = 0
    _layout = ""
    #: None, or an object with the ``batch_norm`` op's ``forward``/``backward`` that train mode uses instead
    #: (:mod:`xpcnn.distributed` puts a synchronised batch norm here: statistics over the global batch)
    sync: Any = None

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype: str = "float32") -> None:
        super().__init__()
        self.num_features = integer("num_features", num_features, minimum=1)
        self.momentum, self.eps = real("momentum", momentum), positive("eps", eps)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self._dtype = self._float_dtype(dtype)
        shape = (self.num_features,)
        self.params["gamma"] = self._constant(1.0, shape, dtype)
        self.params["beta"] = self._constant(0.0, shape, dtype)
        self.buffers["running_mean"] = self._constant(0.0, shape, dtype)
        self.buffers["running_var"] = self._constant(1.0, shape, dtype)
        self._cache: Any = None
        self._op: Any = kernels.batch_norm

    def _check_batch(self, x: Any, train: bool) -> None:
        """x has this layer's layout and feature count (and, in train mode, more than one value per feature)."""
        self._check_input(x, self._ndim, self._layout)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels/features "
                             f"(input shape {tuple(x.shape)})")
        if train and self.sync is None and x.shape[0] * (x.shape[2] * x.shape[3] if x.ndim == 4 else 1) < 2:
            raise ValueError(f"batch norm in train mode needs more than one value per feature, got x of shape "
                             f"{tuple(x.shape)}")

    def forward(self, x: Any, train: bool = False) -> Any:
        self._check_batch(x, train)
        op = self.sync if train and self.sync is not None else kernels.batch_norm
        y, cache = op.forward(x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                              self.buffers["running_var"], train, self.momentum, self.eps)
        self._cache, self._op = (cache, op) if train else (None, op)
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        dx, self.grads["gamma"], self.grads["beta"] = self._op.backward(dout, self._cache)
        return dx

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps, "dtype": self._dtype}


@register
class BatchNorm1D(_BatchNorm):
    """Batch norm over features: x: (N, D); gamma, beta, running statistics: (D,)."""

    _ndim, _layout = 2, "(N, D)"


@register
class BatchNorm2D(_BatchNorm):
    """Batch norm over channels: x: (N, C, H, W); statistics over (N, H, W) per channel: (C,)."""

    _ndim, _layout = 4, "(N, C, H, W)"
