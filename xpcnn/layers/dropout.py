"""Inverted dropout layer."""

from __future__ import annotations

from typing import Any

from .. import backend as B
from ..functional import dropout as Fdrop
from .base import Layer, register


@register
class Dropout(Layer):
    """Train: zero each unit with probability ``p`` and scale the rest by ``1/(1-p)``; eval: identity.

    The mask comes from a host RNG: ``rng`` (a ``numpy.random.Generator`` or a
    seed) or, when None, the global generator of :func:`xpcnn.backend.seed`.
    """

    def __init__(self, p: float = 0.5, rng: Any = None) -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = None if rng is None else B.host_rng(rng)
        self._mask: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        if not train:
            self._mask = None
            return x
        self._mask = Fdrop.dropout_mask(tuple(x.shape), self.p, B.host_rng(self.rng), x)
        return Fdrop.dropout_forward(x, self._mask)

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._mask)
        return Fdrop.dropout_backward(dout, self._mask)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
