"""The layer protocol shared by every xpcnn layer.

A layer has ``forward(x, train=False) -> y`` and ``backward(dout) -> dx``;
``params`` and ``grads`` are dicts with the same keys, ``buffers`` holds
non-trainable state (batch-norm running statistics).  A layer caches only what
its backward pass needs (the opaque cache of the kernel that ran), and ``backward``
never modifies ``dout``.  A layer validates its input once per call and then calls
its op through :mod:`xpcnn.kernels`.  Layers that draw random numbers (Dropout) keep
their host generator's state in ``rng_state()`` / ``load_rng_state()``.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any

import array_api_compat

from .. import backend as B
from ..checks import check_floating, check_rank, namespace
from ..initializers import INITIALIZERS, initialize
from ..parameter import ParamRef

__all__ = ["Layer", "LAYER_TYPES", "build_layer", "register"]

#: Layer classes by name, used to rebuild a model from a checkpoint's JSON config (no code is executed).
LAYER_TYPES: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make a layer type known to checkpoints (``Sequential.from_config``) by its name."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register expects a subclass of xpcnn.layers.Layer, got {cls!r}")
    LAYER_TYPES[cls.__name__] = cls
    return cls


def build_layer(spec: Any, where: str = "") -> Layer:
    """A layer from its :meth:`Layer.spec` (``{"type": ..., "args": {...}}``); only registered types are built.

    ``where`` names the position in error messages (``"index 3"``, ``"3.body"``).
    """
    where = where or "the top level"
    try:
        layer_cls = LAYER_TYPES[spec["type"]]
        args = spec.get("args", {})
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"bad layer config at {where}: {spec!r}; expected "
                         f"{{'type': one of {sorted(LAYER_TYPES)}, 'args': {{...}}}}") from None
    try:
        return layer_cls.from_config(args)
    except TypeError as exc:
        raise ValueError(f"bad arguments for {spec['type']} at {where}: {exc}") from None


class Layer(abc.ABC):
    """Base class: parameter bookkeeping, device moves, config and repr."""

    #: Set to False (by :class:`xpcnn.model.Sequential` for its first layer) to skip computing ``dx``.
    need_input_grad: bool = True

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}

    # -- protocol -------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: Any, train: bool = False) -> Any:
        """Compute the output; in train mode also cache what :meth:`backward` needs."""

    @abc.abstractmethod
    def backward(self, dout: Any) -> Any:
        """Given ``dL/dy``, store parameter gradients in ``grads`` and return ``dL/dx``."""

    def __call__(self, x: Any, train: bool = False) -> Any:
        return self.forward(x, train=train)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input shape (batch axis included); shape-preserving by default."""
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        """The JSON-able constructor arguments that rebuild this layer."""
        return {}

    @classmethod
    def from_config(cls, config: Any) -> Layer:
        """Rebuild from :meth:`config` output (JSON lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(config).items()})

    def spec(self) -> dict[str, Any]:
        """``{"type": <registered name>, "args": config()}``: what a model's config stores per layer."""
        return {"type": type(self).__name__, "args": self.config()}

    # -- composites (Sequential, Residual) override these -------------------------------------------
    def children(self) -> list[tuple[str, Layer]]:
        """The named child layers of a composite; a leaf layer has none."""
        return []

    def named_leaves(self) -> list[tuple[str, Layer]]:
        """Every leaf layer at or below this one with its dotted name (``""`` for a leaf itself, ``"3.body.0"``)."""
        return [("", self)]  # composites override this with their children's leaves

    def parameters(self) -> list[ParamRef]:
        """A :class:`~xpcnn.parameter.ParamRef` per trainable array, named ``"<leaf path>.<key>"`` (``"3.body.0.W"``).

        The one place parameters are collected: optimizers, checkpoints and gradient checks all use it.
        """
        return [ParamRef(f"{name}.{key}" if name else key, leaf, key)
                for name, leaf in self.named_leaves() for key in leaf.params]

    def state_dict(self) -> dict[str, Any]:
        """Parameters and buffers (batch-norm running statistics) by dotted name."""
        return {(f"{name}.{key}" if name else key): value
                for name, leaf in self.named_leaves() for store in (leaf.params, leaf.buffers)
                for key, value in store.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays (any backend, or NumPy) into the parameters and buffers, on this layer's device.

        All or nothing: raises ValueError naming the missing/unexpected keys or the shape/dtype that does
        not match before anything is changed.
        """
        slots = {(f"{name}.{key}" if name else key): (store, key)
                 for name, leaf in self.named_leaves() for store in (leaf.params, leaf.buffers) for key in store}
        missing, unexpected = sorted(set(slots) - set(state)), sorted(set(state) - set(slots))
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        converted = {}
        for name, (store, key) in slots.items():
            current, host = store[key], B.to_numpy(state[name])
            if tuple(host.shape) != tuple(current.shape):
                raise ValueError(f"{name}: expected shape {tuple(current.shape)}, got {tuple(host.shape)}")
            if str(host.dtype) != B.dtype_name(current.dtype):
                raise ValueError(f"{name}: expected dtype {B.dtype_name(current.dtype)}, got {host.dtype}")
            converted[name] = B.to_device_like(host, current)
        for name, (store, key) in slots.items():
            store[key] = converted[name]

    # -- helpers --------------------------------------------------------------------------------
    def _require_forward(self, cache: Any) -> None:
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward(x, train=True)")

    def rng_state(self) -> dict[str, Any] | None:
        """The state of this layer's own host generator (JSON-able), or None when it has none."""
        return None

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned (a layer without a generator accepts nothing)."""
        raise ValueError(f"{type(self).__name__} has no random generator, but a generator state was given for it")

    def _check_input(self, x: Any, ndim: int | tuple[int, ...], layout: str) -> None:
        """Validate the input once per call: same backend and device as the parameters, rank, dtype."""
        ref = next(iter(self.params.values()), None)
        name = f"{type(self).__name__} input"
        if ref is not None:
            namespace(x, ref)
        check_rank(x, ndim, name, layout)
        check_floating(x, name)
        self._check_input_dtype(x)

    @staticmethod
    def _float_dtype(dtype: Any) -> str:
        """The name of a floating dtype for parameters (``"float32"``), or ValueError."""
        name = B.dtype_name(dtype)
        if name not in ("float16", "float32", "float64"):
            raise ValueError(f"dtype must be a floating type (float32, float64 or float16), got {dtype!r}")
        return name

    @staticmethod
    def _check_init(init: str) -> str:
        if init not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; expected one of {sorted(INITIALIZERS)}")
        return init

    def _new_param(self, init: str, shape: tuple[int, ...], dtype: str, rng: Any) -> Any:
        return B.asarray(initialize(init, shape, B.host_rng(rng)), dtype=dtype)

    @staticmethod
    def _constant(value: float, shape: tuple[int, ...], dtype: str) -> Any:
        return B.full(shape, value, dtype)  # the device made current: compat's CuPy ignores device=

    def _check_input_dtype(self, x: Any) -> None:
        ref = next(iter(self.params.values()), None)
        if ref is not None and x.dtype != ref.dtype:
            raise TypeError(f"{type(self).__name__}: input dtype {x.dtype} does not match the parameters' "
                            f"dtype {ref.dtype}; cast the input or build the layer with dtype=...")

    def to(self, spec: str | B.Backend) -> Layer:
        """Move parameters and buffers to another backend/device (in place); returns ``self``."""
        be = spec if isinstance(spec, B.Backend) else B.resolve(spec)
        for store in (self.params, self.buffers):
            for key, value in store.items():
                store[key] = B.asarray(B.to_numpy(value), backend=be)
        self.grads = {}
        return self

    @property
    def dtype(self) -> Any:
        ref = next(iter(self.params.values()), None)
        return None if ref is None else ref.dtype

    def num_params(self) -> int:
        return sum(int(array_api_compat.size(p)) for p in self.params.values())

    def __repr__(self) -> str:
        """The constructor call, showing only arguments that differ from their defaults."""
        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()}
        shown = []
        for key, value in self.config().items():
            value = tuple(value) if isinstance(value, list) else value
            default = defaults.get(key, inspect.Parameter.empty)
            if isinstance(default, int) and not isinstance(default, bool):
                default = (default, default) if isinstance(value, tuple) else default
            if value != default:
                shown.append(f"{key}={value!r}" if default is not inspect.Parameter.empty else repr(value))
        return f"{type(self).__name__}({', '.join(shown)})"
