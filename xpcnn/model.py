"""Sequential: a stack of layers run forward in order and backward in reverse; itself a layer, so models nest."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import array_api_compat

from . import backend as B
from . import flat
from .kernels import fusion
from .layers.base import Layer, build_layer, register
from .layers.composite import Composite, summary_rows

__all__ = ["Sequential"]


class Sequential(Composite):
    """``Sequential(Conv2D(...), ReLU(), ...)``: a layer that runs its layers in order (so models nest).

    * ``forward(x, train=False)`` / ``backward(dout)``: the layers in order / in reverse;
    * ``parameters()``: a :class:`~xpcnn.parameter.ParamRef` per trainable array, named ``"<index>.<key>"``,
      with nested names for composite layers (``"3.body.0.W"``);
    * ``state_dict()`` / ``load_state_dict()``: parameters and buffers by the same names;
    * ``config()`` / ``from_config()``: the architecture as JSON-able data (checkpoints rebuild from it);
    * ``to(backend)``, ``predict(x)``, ``summary(input_shape)``.

    The outermost model's first layer does not compute ``dx`` (nobody needs the gradient of the data;
    set ``model.need_input_grad = True`` to get it).  A Sequential nested in another layer returns ``dx``.
    """

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes xpcnn layers; item {i} is {type(layer).__name__}")
        self._adopt([(str(i), layer) for i, layer in enumerate(layers)])
        self.layers: list[Layer] = list(layers)
        self._shared_rng: Any = None
        self.need_input_grad = False  # the outermost model's default; a container that holds it sets True
        # The flat parameter/gradient store (xpcnn.flat), made now so that an optimizer built right
        # after construction lays its state out flat too; a composite that adopts this model drops it.
        flat.attach(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Sequential:
        """A deep copy with its own flat store (copied arrays are no views of the original's buffers)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        flat.sync(new)
        return new

    def children(self) -> list[tuple[str, Layer]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def _hand_down_input_grad(self, need: bool) -> None:
        for i, layer in enumerate(self.layers):
            layer.need_input_grad = need if i == 0 else True

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    # -- computation ----------------------------------------------------------------------------
    def forward(self, x: Any, train: bool = False) -> Any:
        """x: the first layer's input (e.g. (N, C, H, W)) -> the last layer's output (e.g. logits (N, K))."""
        flat.sync(self)  # a flat parameter store (if attached) gets back any array that was replaced
        for unit in fusion.forward_units(self):  # the layers, with Conv->ReLU->MaxPool fused where possible
            x = unit.forward(x, train=train)
        return x

    __call__ = forward

    def backward(self, dout: Any) -> Any:
        """Backpropagate ``dL/d(output)``; fills every layer's ``grads``.

        Returns ``dL/dx`` for the input, or None when the first layer skips it (Conv2D/Dense do
        when this is the outermost model).  Each layer's saved activations are freed as soon as its
        backward has run (so the peak memory of a step falls as the backward proceeds); a second
        ``backward`` needs a new ``forward(x, train=True)``, as in PyTorch.
        """
        for unit in reversed(fusion.backward_units(self)):
            dout = unit.backward(dout)
            if hasattr(unit, "_cache"):  # its activations are spent: free them now, as PyTorch's autograd does
                unit._cache = None
        flat.collect_grads(self)
        return dout

    def predict(self, x: Any, batch_size: int = 512) -> Any:
        """Eval-mode outputs for ``x`` in batches of ``batch_size``.

        ``x`` from another backend (a host NumPy array, say) or of another dtype is copied to
        the model's backend, device and dtype first.
        """
        ref = next((p.value for p in self.parameters()), None)
        if ref is not None and (not _same_backend(x, ref) or x.dtype != ref.dtype):
            x = B.to_device_like(x, ref)  # device to device where it can (no host detour)
        xp = array_api_compat.array_namespace(x)
        n = x.shape[0]
        with B.device_scope(x):  # cupy:N: the model's GPU current while its ops create arrays
            outs = [self.forward(x[i:min(i + batch_size, n), ...], train=False) for i in range(0, n, batch_size)]
            return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)

    # -- parameters and state -------------------------------------------------------------------
    # parameters(), state_dict(), load_state_dict() and num_params() come from Layer / Composite:
    # one walk over the leaf layers (Layer.named_leaves) names everything.

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """:meth:`Layer.load_state_dict`, then a flat parameter store (if attached) takes the loaded values."""
        super().load_state_dict(state)
        flat.sync(self)

    # -- random number generators --------------------------------------------------------------
    def set_rng(self, rng: Any) -> None:
        """Share one host generator (or seed) with every random layer (Dropout) that has none of its own.

        The layers (nested ones included) draw from it in forward order, so a seeded generator makes
        training reproducible; ``fit(seed=...)`` passes its ``"dropout"`` stream here.
        """
        self._shared_rng = None if rng is None else B.host_rng(rng)
        for _, layer in self.named_leaves():
            if hasattr(layer, "shared_rng"):
                layer.shared_rng = self._shared_rng

    def rng_state(self) -> dict[str, Any]:
        """The host generators' states, JSON-able: ``{"shared": ..., "layers": {"<dotted name>": ...}}``."""
        shared = getattr(self, "_shared_rng", None)
        layers = {name: s for name, layer in self.named_leaves() if (s := layer.rng_state()) is not None}
        return {"shared": None if shared is None else dict(shared.bit_generator.state), "layers": layers}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned (a shared generator is created if the model has none)."""
        if state.get("shared") is not None:
            if getattr(self, "_shared_rng", None) is None:
                self.set_rng(0)
            self._shared_rng.bit_generator.state = state["shared"]
        leaves = dict(self.named_leaves())
        for name, layer_state in state.get("layers", {}).items():
            if name not in leaves:
                raise ValueError(f"generator state for layer {name!r}, which this model does not have")
            leaves[name].load_rng_state(layer_state)

    def to(self, spec: str | B.Backend) -> Sequential:
        """Move every parameter and buffer to another backend/device (in place); returns ``self``.

        Build the optimizer after moving: its state lives where the parameters were when it was made.
        """
        super().to(spec)
        flat.sync(self)
        return self

    # -- architecture ---------------------------------------------------------------------------
    def config(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The architecture as JSON-able data: ``[{"type": "Conv2D", "args": {...}}, ...]`` (composites nest)."""
        return [layer.spec() for layer in self.layers]

    def spec(self) -> dict[str, Any]:
        return {"type": "Sequential", "args": {"layers": self.config()}}

    @classmethod
    def from_config(cls, config: Any) -> Sequential:
        """Rebuild from :meth:`config` output (or a nested ``{"layers": [...]}``); only registered types are built."""
        if isinstance(config, dict):
            if set(config) != {"layers"}:
                raise TypeError(f"Sequential takes 'layers', got {sorted(config)}")
            config = config["layers"]
        if not isinstance(config, (list, tuple)):
            raise ValueError(f"a model config must be a list of layer specs, got {type(config).__name__}")
        return cls(*[build_layer(entry, f"index {i}") for i, entry in enumerate(config)])

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shapes(input_shape)[-1] if self.layers else tuple(input_shape)

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The output shape after each top-level layer."""
        shapes, shape = [], tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """A table of layers, output shapes (batch axis shown as N) and parameter counts.

        Composite layers (Residual, nested Sequential) get a row with their total, then their
        children's rows indented.
        """
        rows = [("layer", "output shape", "params"), *summary_rows(self, (1, *input_shape[1:]))]
        rows.append(("total", "", f"{self.num_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        out = []
        for i, row in enumerate(rows):
            if i in (1, len(rows) - 1):
                out.append(line)
            out.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
        return "\n".join(out)



register(Sequential)


def _same_backend(a: Any, b: Any) -> bool:
    return B.backend_name(a) == B.backend_name(b) and array_api_compat.device(a) == array_api_compat.device(b)

