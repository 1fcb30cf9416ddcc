"""Residual (skip) connections: ``y = body(x) + shortcut(x)``."""

from __future__ import annotations

from typing import Any

from .base import Layer, build_layer, register
from .composite import Composite


@register
class Residual(Composite):
    """``y = body(x) + shortcut(x)``, with the identity as shortcut when ``shortcut`` is None.

    ``body`` and ``shortcut`` are layers or :class:`~xpcnn.model.Sequential` stacks (attributes
    ``.body`` and ``.shortcut``); both must map the input to the same output shape.  Backward:
    ``dx = body.backward(dout) + shortcut.backward(dout)`` (``+ dout`` for the identity).
    Parameters are named ``body.<...>`` and ``shortcut.<...>``.

    >>> import xpcnn
    >>> from xpcnn.layers import BatchNorm2D, Conv2D, ReLU, Residual
    >>> block = Residual(xpcnn.Sequential(Conv2D(8, 8, 3, padding=1, bias=False, rng=0), BatchNorm2D(8), ReLU()))
    >>> xp = xpcnn.get_backend().xp
    >>> tuple(block(xp.ones((2, 8, 5, 5), dtype=xp.float32)).shape), list(block.params)[:2]
    ((2, 8, 5, 5), ['body.0.W', 'body.1.gamma'])
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None) -> None:
        super().__init__()
        self._adopt([("body", body)] + ([("shortcut", shortcut)] if shortcut is not None else []))
        self.body, self.shortcut = body, shortcut
        self._hand_down_input_grad(True)
        self._shape: tuple[int, ...] | None = None

    def children(self) -> list[tuple[str, Layer]]:
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def _hand_down_input_grad(self, need: bool) -> None:
        for _, child in self.children():
            child.need_input_grad = need

    def forward(self, x: Any, train: bool = False) -> Any:
        """x: the block's input -> ``body(x) + shortcut(x)`` (same shape as ``body(x)``)."""
        y = self.body.forward(x, train=train)
        s = x if self.shortcut is None else self.shortcut.forward(x, train=train)
        if tuple(y.shape) != tuple(s.shape):
            which = "the input (identity shortcut)" if self.shortcut is None else "the shortcut's output"
            raise ValueError(f"Residual: the body's output shape {tuple(y.shape)} differs from {which} "
                             f"{tuple(s.shape)}; give a shortcut that matches (e.g. a strided 1x1 Conv2D)")
        self._shape = tuple(x.shape) if train else None
        return y + s

    def backward(self, dout: Any) -> Any:
        """``dL/dx = body.backward(dout) + shortcut.backward(dout)``, or None when no input gradient is needed."""
        self._require_forward(self._shape)
        d_body = self.body.backward(dout)
        d_short = dout if self.shortcut is None else self.shortcut.backward(dout)
        if not self.need_input_grad:
            return None
        return d_body + d_short

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        out = self.body.output_shape(input_shape)
        short = tuple(input_shape) if self.shortcut is None else self.shortcut.output_shape(input_shape)
        if tuple(out) != tuple(short):
            raise ValueError(f"Residual: the body maps {tuple(input_shape)} to {tuple(out)} but the shortcut to "
                             f"{tuple(short)}")
        return tuple(out)

    def config(self) -> dict[str, Any]:
        return {"body": self.body.spec(), "shortcut": None if self.shortcut is None else self.shortcut.spec()}

    @classmethod
    def from_config(cls, config: Any) -> Residual:
        config = dict(config)
        unknown = sorted(set(config) - {"body", "shortcut"})
        if unknown or "body" not in config:
            raise TypeError(f"Residual takes 'body' and optionally 'shortcut', got {sorted(config)}")
        shortcut = config.get("shortcut")
        return cls(build_layer(config["body"], "body"),
                   None if shortcut is None else build_layer(shortcut, "shortcut"))
