"""Inverted dropout layer."""

from __future__ import annotations

from typing import Any

from .. import backend as B
from .. import kernels
from ..checks import check_floating
from .base import Layer, register


@register
class Dropout(Layer):
    """Train: zero each unit with probability ``p`` and scale the rest by ``1/(1-p)``; eval: identity.

    The mask comes from a host generator, in this order: the layer's own (``rng``: a
    ``numpy.random.Generator`` or a seed), the one its model shares with it
    (:meth:`xpcnn.Sequential.set_rng`, which ``fit(seed=...)`` uses), else the default of
    :func:`xpcnn.backend.host_rng`.  Only the layer's own generator is part of its ``rng_state()``;
    the model saves the shared one.
    """

    def __init__(self, p: float = 0.5, rng: Any = None) -> None:
        super().__init__()
        try:
            self.p = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"Dropout probability p must be a number in [0, 1), got {p!r}") from None
        if isinstance(p, bool) or not 0.0 <= self.p < 1.0:  # also rejects nan
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.rng = None if rng is None else B.host_rng(rng)
        self.shared_rng: Any = None
        self._cache: Any = None

    def forward(self, x: Any, train: bool = False) -> Any:
        if not train:
            self._cache = None
            return x
        check_floating(x, "Dropout input")
        rng = self.rng or self.shared_rng or B.host_rng()
        y, self._cache = kernels.dropout.forward(x, self.p, rng)
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        return kernels.dropout.backward(dout, self._cache)

    def rng_state(self) -> dict[str, Any] | None:
        return None if self.rng is None else dict(self.rng.bit_generator.state)

    def load_rng_state(self, state: dict[str, Any]) -> None:
        if self.rng is None:
            self.rng = B.host_rng(0)
        self.rng.bit_generator.state = state

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
