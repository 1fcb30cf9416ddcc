"""Sequential: a stack of layers run forward in order and backward in reverse."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import array_api_compat

from . import backend as B
from .layers.base import LAYER_TYPES, Layer
from .parameter import ParamRef

__all__ = ["Sequential"]


class Sequential:
    """``Sequential(Conv2D(...), ReLU(), ...)``.

    * ``forward(x, train=False)`` / ``backward(dout)``: the layers in order / in reverse;
    * ``parameters()``: a :class:`~xpcnn.parameter.ParamRef` per trainable array, named ``"<index>.<key>"``;
    * ``state_dict()`` / ``load_state_dict()``: parameters and buffers by name;
    * ``config()`` / ``from_config()``: the architecture as JSON-able data (checkpoints rebuild from it);
    * ``to(backend)``, ``predict(x)``, ``summary(input_shape)``.

    The first layer does not compute ``dx`` (nobody needs the gradient of the data).
    """

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes xpcnn layers; item {i} is {type(layer).__name__}")
        self.layers: list[Layer] = list(layers)
        self._shared_rng: Any = None
        for i, layer in enumerate(self.layers):
            layer.need_input_grad = i > 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    # -- computation ----------------------------------------------------------------------------
    def forward(self, x: Any, train: bool = False) -> Any:
        """x: the first layer's input (e.g. (N, C, H, W)) -> the last layer's output (e.g. logits (N, K))."""
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    __call__ = forward

    def backward(self, dout: Any) -> Any:
        """Backpropagate ``dL/d(output)``; fills every layer's ``grads``.

        Returns ``dL/dx`` for the input, or None when the first layer skips it (Conv2D/Dense do).
        """
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
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
    def parameters(self) -> list[ParamRef]:
        return [ParamRef(f"{i}.{key}", layer, key) for i, layer in enumerate(self.layers) for key in layer.params]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def state_dict(self) -> dict[str, Any]:
        """Parameters and buffers (e.g. batch-norm running statistics) by name ``"<index>.<key>"``."""
        state = {}
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key, value in store.items():
                    state[f"{i}.{key}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays (any backend, or NumPy) into this model's parameters and buffers, on its device.

        Raises ValueError naming the missing/unexpected keys or the shape/dtype that does not match.
        """
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        converted = {}
        for name, current in own.items():
            host = B.to_numpy(state[name])
            if tuple(host.shape) != tuple(current.shape):
                raise ValueError(f"{name}: expected shape {tuple(current.shape)}, got {tuple(host.shape)}")
            if str(host.dtype) != B.dtype_name(current.dtype):
                raise ValueError(f"{name}: expected dtype {B.dtype_name(current.dtype)}, got {host.dtype}")
            converted[name] = B.to_device_like(host, current)
        for name, value in converted.items():
            index, key = name.split(".", 1)
            layer = self.layers[int(index)]
            (layer.params if key in layer.params else layer.buffers)[key] = value

    # -- random number generators --------------------------------------------------------------
    def set_rng(self, rng: Any) -> None:
        """Share one host generator (or seed) with every random layer (Dropout) that has none of its own.

        The layers draw from it in forward order, so a seeded generator makes training reproducible;
        ``fit(seed=...)`` passes its ``"dropout"`` stream here.
        """
        self._shared_rng = None if rng is None else B.host_rng(rng)
        for layer in self.layers:
            if hasattr(layer, "shared_rng"):
                layer.shared_rng = self._shared_rng

    def rng_state(self) -> dict[str, Any]:
        """The host generators' states, JSON-able: ``{"shared": ..., "layers": {"<index>": ...}}``."""
        shared = getattr(self, "_shared_rng", None)
        layers = {str(i): s for i, layer in enumerate(self.layers) if (s := layer.rng_state()) is not None}
        return {"shared": None if shared is None else dict(shared.bit_generator.state), "layers": layers}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned (a shared generator is created if the model has none)."""
        if state.get("shared") is not None:
            if getattr(self, "_shared_rng", None) is None:
                self.set_rng(0)
            self._shared_rng.bit_generator.state = state["shared"]
        for index, layer_state in state.get("layers", {}).items():
            self.layers[int(index)].load_rng_state(layer_state)

    def to(self, spec: str | B.Backend) -> Sequential:
        """Move every parameter and buffer to another backend/device (in place); returns ``self``.

        Build the optimizer after moving: its state lives where the parameters were when it was made.
        """
        for layer in self.layers:
            layer.to(spec)
        return self

    # -- architecture ---------------------------------------------------------------------------
    def config(self) -> list[dict[str, Any]]:
        """The architecture as JSON-able data: ``[{"type": "Conv2D", "args": {...}}, ...]``."""
        return [{"type": type(layer).__name__, "args": layer.config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config: Sequence[dict[str, Any]]) -> Sequential:
        """Rebuild from :meth:`config` output; only registered xpcnn layer types are accepted."""
        layers = []
        for i, entry in enumerate(config):
            try:
                layer_cls = LAYER_TYPES[entry["type"]]
                args = dict(entry.get("args", {}))
            except (KeyError, TypeError):
                raise ValueError(f"bad layer config at index {i}: {entry!r}; expected "
                                 f"{{'type': one of {sorted(LAYER_TYPES)}, 'args': {{...}}}}") from None
            try:
                layers.append(layer_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}))
            except TypeError as exc:
                raise ValueError(f"bad arguments for {entry['type']} at index {i}: {exc}") from None
        return cls(*layers)

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        shapes, shape = [], tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """A table of layers, output shapes (batch axis shown as N) and parameter counts."""
        rows = [("layer", "output shape", "params")]
        for layer, shape in zip(self.layers, self.output_shapes((1, *input_shape[1:]))):
            rows.append((repr(layer), str(("N", *shape[1:])).replace("'", ""), f"{layer.num_params():,}"))
        rows.append(("total", "", f"{self.num_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        out = []
        for i, row in enumerate(rows):
            if i in (1, len(rows) - 1):
                out.append(line)
            out.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
        return "\n".join(out)

    def __repr__(self) -> str:
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


def _same_backend(a: Any, b: Any) -> bool:
    return B.backend_name(a) == B.backend_name(b) and array_api_compat.device(a) == array_api_compat.device(b)

