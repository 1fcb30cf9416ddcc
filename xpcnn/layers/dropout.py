"""Inverted dropout layer."""

from __future__ import annotations

from typing import Any

from .. import backend as B
from .. import kernels
from ..checks import check_floating
from .base import Layer, register
from .mask_bank import MaskBank


@register
class Dropout(Layer):
    """Train: zero each unit with probability ``p`` and scale the rest by ``1/(1-p)``; eval: identity.

    The mask comes from a host generator, in this order: the layer's own (``rng``: a
    ``numpy.random.Generator`` or a seed), the one its model shares with it
    (:meth:`xpcnn.Sequential.set_rng`, which ``fit(seed=...)`` uses), else the default of
    :func:`xpcnn.backend.host_rng`.  Only the layer's own generator is part of its ``rng_state()``;
    the model saves the shared one.  On a device, the training loop has the masks of a whole
    epoch drawn at once and copied in one transfer (:mod:`xpcnn.layers.mask_bank`; same draws).
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
        self.masks = MaskBank()

    def forward(self, x: Any, train: bool = False) -> Any:
        if not train:
            self._cache = None
            return x
        check_floating(x, "Dropout input")
        rng = self.rng or self.shared_rng or B.host_rng()
        mask = self.masks.take(x, self.p, rng)
        if mask is not None:  # this epoch's pre-drawn rows, already on the device
            self._cache = ("bank", mask)
            return x * mask
        y, cache = kernels.dropout.forward(x, self.p, rng)
        self._cache = ("op", cache)
        return y

    def backward(self, dout: Any) -> Any:
        self._require_forward(self._cache)
        kind, cache = self._cache
        return dout * cache if kind == "bank" else kernels.dropout.backward(dout, cache)

    def rng_state(self) -> dict[str, Any] | None:
        return None if self.rng is None else dict(self.rng.bit_generator.state)

    def load_rng_state(self, state: dict[str, Any]) -> None:
        if self.rng is None:
            self.rng = B.host_rng(0)
        self.rng.bit_generator.state = state

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
