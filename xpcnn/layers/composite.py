"""The base of composite layers (:class:`~xpcnn.model.Sequential`, :class:`~xpcnn.layers.Residual`).

A composite holds child layers and no arrays of its own.  Its ``params``, ``grads`` and ``buffers``
are read-only views with dotted names (``"body.0.W"``), built from the children on every access;
write through :meth:`~xpcnn.layers.Layer.parameters` (``ParamRef.assign``) or
:meth:`~xpcnn.layers.Layer.load_state_dict` instead.  Names nest: in a model, the parameter
``W`` of the first layer of the body of the residual block at index 3 is ``"3.body.0.W"``.

Input gradients: ``need_input_grad`` of a composite is handed down to the children that see its
input (a Sequential's first child, a Residual's body and shortcut), so only the outermost model's
first layer skips ``dx``; a composite nested anywhere else returns ``dx``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .. import backend as B
from .. import flat
from .base import Layer

__all__ = ["Composite", "summary_rows"]


class Composite(Layer):
    """Bookkeeping shared by layers made of layers: nested names, views, device moves, input gradients."""

    def __init__(self) -> None:  # no arrays of its own: params/grads/buffers are views of the children's
        self._need_input_grad = True

    @abc.abstractmethod
    def children(self) -> list[tuple[str, Layer]]:
        """The named child layers, in forward order."""

    def named_leaves(self) -> list[tuple[str, Layer]]:
        """The leaf layers below this one, with dotted names (an empty composite has none)."""
        return [(f"{name}.{sub}" if sub else name, leaf)
                for name, child in self.children() for sub, leaf in child.named_leaves()]

    @abc.abstractmethod
    def _hand_down_input_grad(self, need: bool) -> None:
        """Set ``need_input_grad`` on the children that see this layer's input."""

    @property
    def need_input_grad(self) -> bool:
        """Whether :meth:`backward` must return ``dx``; False only for the outermost model's input."""
        return self._need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, need: bool) -> None:
        self._need_input_grad = bool(need)
        self._hand_down_input_grad(self._need_input_grad)

    def _adopt(self, children: list[tuple[str, Layer]]) -> None:
        """Check the children (xpcnn layers, each object used once) before holding them."""
        seen: dict[int, str] = {}
        for name, child in children:
            if not isinstance(child, Layer):
                raise TypeError(f"{type(self).__name__} takes xpcnn layers; {name} is {type(child).__name__}")
            for sub, layer in [("", child), *child.named_leaves()]:
                path = f"{name}.{sub}" if sub else name
                if id(layer) in seen and seen[id(layer)] != path:
                    raise ValueError(f"{type(self).__name__}: the same {type(layer).__name__} object appears at "
                                     f"{seen[id(layer)]!r} and {path!r}; build a separate layer for each position "
                                     "(shared layers would overwrite each other's gradients)")
                seen[id(layer)] = path
        for _, child in children:  # one flat store per model, owned by the outermost (see xpcnn.flat)
            if isinstance(child, Composite):
                flat.disown(child)

    # -- read-only views with dotted names ------------------------------------------------------
    @property
    def params(self) -> Mapping[str, Any]:  # type: ignore[override]
        return MappingProxyType({ref.name: ref.value for ref in self.parameters()})

    @property
    def grads(self) -> Mapping[str, Any]:  # type: ignore[override]
        return MappingProxyType({ref.name: ref.grad for ref in self.parameters() if ref.grad is not None})

    @property
    def buffers(self) -> Mapping[str, Any]:  # type: ignore[override]
        return MappingProxyType({f"{name}.{key}" if name else key: value
                                 for name, leaf in self.named_leaves() for key, value in leaf.buffers.items()})

    def num_params(self) -> int:
        return sum(leaf.num_params() for _, leaf in self.named_leaves())

    def to(self, spec: str | B.Backend) -> Composite:
        """Move every parameter and buffer below this layer to another backend/device (in place)."""
        be = spec if isinstance(spec, B.Backend) else B.resolve(spec)
        for _, child in self.children():
            child.to(be)
        return self

    def rng_state(self) -> dict[str, Any] | None:
        return None  # the leaves' generators are saved by the outermost model, by their dotted names

    def __repr__(self) -> str:
        inner = ",\n".join(f"{name}={child!r}" if not name.isdigit() else repr(child)
                           for name, child in self.children())
        inner = "\n".join(f"  {line}" for line in inner.splitlines())
        return f"{type(self).__name__}(\n{inner}\n)"


def summary_rows(layer: Layer, input_shape: tuple[int, ...], depth: int = 0) -> list[tuple[str, str, str]]:
    """``(label, output shape, params)`` rows for ``layer``'s children, nested children indented.

    A composite child gets a row with its type name, then its own children's rows one level deeper.
    """
    rows: list[tuple[str, str, str]] = []
    shape = tuple(input_shape)
    for name, child in layer.children():
        child_in = input_shape if not name.isdigit() else shape  # Residual's branches all see its input
        out = child.output_shape(child_in)
        label = repr(child) if not child.children() else type(child).__name__
        if not name.isdigit():
            label = f"{name}: {label}"
        rows.append(("  " * depth + label, str(("N", *out[1:])).replace("'", ""), f"{child.num_params():,}"))
        if child.children():
            rows.extend(summary_rows(child, child_in, depth + 1))
        shape = out
    return rows
