"""The one table of xpcnn layers and their PyTorch twins: module types, constructor arguments, state-dict names.

Each :class:`Twin` says, for one xpcnn layer type, which ``torch.nn`` module types convert to it, how to
build one from the other (architecture only), and how their weights are named and laid out:

===================  ==========================  ==================================================================
xpcnn layer          torch module(s)             weights (xpcnn -> torch)
===================  ==========================  ==================================================================
``Conv2D``           ``Conv2d``                  ``W -> weight`` (same layout), ``b -> bias``
``Dense``            ``Linear``                  ``W (in, out) -> weight (out, in)`` transposed, ``b -> bias``
``BatchNorm1D``      ``BatchNorm1d``             ``gamma -> weight``, ``beta -> bias``, ``running_mean``,
``BatchNorm2D``      ``BatchNorm2d``             ``running_var`` (torch's ``num_batches_tracked`` is ignored)
``MaxPool2D``        ``MaxPool2d``               --
``AvgPool2D``        ``AvgPool2d``               -- (``count_include_pad=True``, as xpcnn)
``ReLU``, ...        ``ReLU``, ``LeakyReLU``,    --
                     ``Sigmoid``, ``Tanh``
``Flatten``          ``Flatten``                 -- (``start_dim=1``)
``Dropout``          ``Dropout``                 --
``GlobalAvgPool2D``  ``AdaptiveAvgPool2d(1)``    -- (it must be followed by ``Flatten``: xpcnn's output is (N, C));
                     ``GlobalAvgPool2d`` *       ``to_torch`` builds ``GlobalAvgPool2d``
``Residual``         ``Residual`` *              ``body.<...>``, ``shortcut.<...>`` (nested names)
``Sequential``       ``Sequential``              ``<index>.<...>`` (nested models stay nested)
===================  ==========================  ==================================================================

(* the twin modules in :mod:`xpcnn.interop.pytorch`.)

A model's state-dict names are the same on both sides apart from the weight names above: xpcnn's
``"3.W"`` is torch's ``"3.weight"`` (the index of the layer in the :class:`~xpcnn.Sequential`, then the
key).  A composite layer is one more entry whose ``children`` name its sub-layers; the names nest the
same way on both sides (``"3.body.0.W"`` <-> ``"3.body.0.weight"``).

Nothing here imports torch: the builders receive ``torch.nn`` from :mod:`xpcnn.interop.pytorch`, and
:func:`state_names` (the name and layout map) works without torch, so safetensors files written by
PyTorch load into xpcnn models with NumPy only.

>>> from xpcnn import models
>>> [(x, t) for x, t, _ in state_names(models.lenet5(rng=0))][:3]
[('0.W', '0.weight'), ('0.b', '0.bias'), ('3.W', '3.weight')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend as B
from .. import layers as XL
from ..model import Sequential

__all__ = ["TWINS", "InteropError", "Twin", "UnsupportedModuleError", "Weight", "load_torch_state_dict", "module_key",
           "state_names", "supported_modules", "torch_only_names", "torch_state_to_xpcnn", "twin_of_layer",
           "twin_of_module", "xpcnn_state_to_torch"]


class InteropError(ValueError):
    """A model, module or state dict that cannot be converted, with the reason."""


class UnsupportedModuleError(InteropError):
    """A torch module (or xpcnn layer) with no twin, or with settings its twin cannot reproduce."""


@dataclass(frozen=True)
class Weight:
    """One array: its xpcnn key, its torch attribute name, and whether the layouts are transposes."""

    xpcnn: str
    torch: str
    transpose: bool = False


Convert = Callable[[Any, str], Any]  # convert a child (layer or module) found at a position (dotted path)


@dataclass(frozen=True)
class Twin:
    """One row of the table (see the module docstring).

    ``to_module(layer, nn, convert, path)`` builds the torch module without copying weights;
    ``to_layer(module, dtype, convert, path)`` builds the xpcnn layer (architecture only) or raises
    :class:`UnsupportedModuleError`; ``children(layer)`` lists a composite's ``(name, sub-layer)``.
    """

    layer: str
    modules: tuple[str, ...]
    to_module: Callable[[Any, Any, Convert, str], Any]
    to_layer: Callable[[Any, str, Convert, str], Any]
    weights: tuple[Weight, ...] = ()
    torch_only: tuple[str, ...] = ()  # torch state entries without an xpcnn counterpart (ignored when read)
    children: Callable[[Any], list[tuple[str, Any]]] | None = None


def module_key(module: Any) -> str:
    """``"torch.nn.Conv2d"`` for torch's own modules (wherever torch defines them), else ``module.qualname``."""
    cls = type(module)
    if cls.__module__.startswith("torch.nn."):
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unsupported(module: Any, path: str, what: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(f"torch module at position {path!r} ({module!r}): {what}")


# -- builders: xpcnn -> torch (architecture only) -------------------------------------------------------------

def _conv_module(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
    return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, groups=layer.groups, bias=layer.bias)


def _conv_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
    if m.padding_mode != "zeros":
        raise _unsupported(m, path, f"padding_mode={m.padding_mode!r} is not supported (xpcnn pads with zeros)")
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same": stride 1 (torch enforces it); symmetric only when the total padding is even
            total = [d * (k - 1) for d, k in zip(_pair(m.dilation), _pair(m.kernel_size), strict=True)]
            if any(t % 2 for t in total):
                raise _unsupported(m, path, "padding='same' with an even effective kernel pads asymmetrically, "
                                            "which xpcnn's Conv2D cannot")
            padding = (total[0] // 2, total[1] // 2)
    return XL.Conv2D(m.in_channels, m.out_channels, _pair(m.kernel_size), _pair(m.stride), _pair(padding),
                     _pair(m.dilation), groups=m.groups, bias=m.bias is not None, dtype=dtype, rng=0)


def _linear_module(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
    return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)


def _linear_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
    return XL.Dense(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype, rng=0)


def _bn_module(kind: str) -> Callable[[Any, Any, Convert, str], Any]:
    def build(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
        return getattr(nn, kind)(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    return build


def _bn_layer(cls: type) -> Callable[[Any, str, Convert, str], Any]:
    def build(m: Any, dtype: str, convert: Convert, path: str) -> Any:
        if not m.track_running_stats or m.running_mean is None:
            raise _unsupported(m, path, "track_running_stats=False (batch statistics at inference) is not "
                                        "supported: xpcnn's batch norm evaluates with running statistics")
        if m.momentum is None:
            raise _unsupported(m, path, "momentum=None (a cumulative moving average) is not supported; "
                                        "xpcnn uses an exponential average with a fixed momentum")
        return cls(m.num_features, momentum=m.momentum, eps=m.eps, dtype=dtype)  # affine=False: gamma 1, beta 0
    return build


def _pool_module(kind: str) -> Callable[[Any, Any, Convert, str], Any]:
    def build(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
        extra = {"count_include_pad": True} if kind == "AvgPool2d" else {}
        return getattr(nn, kind)(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.ceil_mode, **extra)
    return build


def _pool_layer(cls: type) -> Callable[[Any, str, Convert, str], Any]:
    def build(m: Any, dtype: str, convert: Convert, path: str) -> Any:
        if cls is XL.MaxPool2D:
            if _pair(m.dilation) != (1, 1):
                raise _unsupported(m, path, "dilated max pooling is not supported")
            if m.return_indices:
                raise _unsupported(m, path, "return_indices=True is not supported")
        else:
            if not m.count_include_pad:
                raise _unsupported(m, path, "count_include_pad=False is not supported (xpcnn averages over the "
                                            "whole window, padded zeros included)")
            if m.divisor_override is not None:
                raise _unsupported(m, path, "divisor_override is not supported")
        stride = m.kernel_size if m.stride is None else m.stride
        return cls(_pair(m.kernel_size), _pair(stride), _pair(m.padding), ceil_mode=bool(m.ceil_mode))
    return build


def _flatten_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise _unsupported(m, path, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): only start_dim=1, "
                                    "end_dim=-1 (keep the batch axis, flatten the rest) is supported")
    return XL.Flatten()


def _twin_simple(xname: str, tname: str, to_arg: Callable[[Any], Any] | None = None,
                 from_arg: Callable[[Any], Any] | None = None) -> Twin:
    """A row for a layer without weights whose one constructor argument (if any) maps directly."""
    def to_module(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
        return getattr(nn, tname)(*([] if to_arg is None else [to_arg(layer)]))

    def to_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
        cls = getattr(XL, xname)
        return cls() if from_arg is None else cls(from_arg(m))
    return Twin(xname, (f"torch.nn.{tname}",), to_module, to_layer)


_BN_WEIGHTS = (Weight("gamma", "weight"), Weight("beta", "bias"), Weight("running_mean", "running_mean"),
               Weight("running_var", "running_var"))

#: the table; composites from newer xpcnn versions add one entry each
TWINS: list[Twin] = [
    Twin("Conv2D", ("torch.nn.Conv2d",), _conv_module, _conv_layer, (Weight("W", "weight"), Weight("b", "bias"))),
    Twin("Dense", ("torch.nn.Linear",), _linear_module, _linear_layer,
         (Weight("W", "weight", transpose=True), Weight("b", "bias"))),
    Twin("BatchNorm1D", ("torch.nn.BatchNorm1d",), _bn_module("BatchNorm1d"), _bn_layer(XL.BatchNorm1D),
         _BN_WEIGHTS, ("num_batches_tracked",)),
    Twin("BatchNorm2D", ("torch.nn.BatchNorm2d",), _bn_module("BatchNorm2d"), _bn_layer(XL.BatchNorm2D),
         _BN_WEIGHTS, ("num_batches_tracked",)),
    Twin("MaxPool2D", ("torch.nn.MaxPool2d",), _pool_module("MaxPool2d"), _pool_layer(XL.MaxPool2D)),
    Twin("AvgPool2D", ("torch.nn.AvgPool2d",), _pool_module("AvgPool2d"), _pool_layer(XL.AvgPool2D)),
    _twin_simple("ReLU", "ReLU"),
    _twin_simple("LeakyReLU", "LeakyReLU", lambda lay: lay.alpha, lambda m: m.negative_slope),
    _twin_simple("Sigmoid", "Sigmoid"),
    _twin_simple("Tanh", "Tanh"),
    Twin("Flatten", ("torch.nn.Flatten",), lambda lay, nn, convert, path: nn.Flatten(), _flatten_layer),
    _twin_simple("Dropout", "Dropout", lambda lay: lay.p, lambda m: m.p),
]

def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _residual_module(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
    from .pytorch import Residual

    shortcut = None if layer.shortcut is None else convert(layer.shortcut, _join(path, "shortcut"))
    return Residual(convert(layer.body, _join(path, "body")), shortcut)


def _residual_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
    shortcut = None if m.shortcut is None else convert(m.shortcut, _join(path, "shortcut"))
    return XL.Residual(convert(m.body, _join(path, "body")), shortcut)


def _gap_module(layer: Any, nn: Any, convert: Convert, path: str) -> Any:
    from .pytorch import GlobalAvgPool2d

    return GlobalAvgPool2d()


def _gap_layer(m: Any, dtype: str, convert: Convert, path: str) -> Any:
    if module_key(m) == "torch.nn.AdaptiveAvgPool2d" and _pair(m.output_size) != (1, 1):
        raise _unsupported(m, path, f"AdaptiveAvgPool2d(output_size={m.output_size}): only output_size=1 (the "
                                    "global average) is supported")
    return XL.GlobalAvgPool2D()


# the composite and global-pooling layers: one entry each
TWINS += [
    Twin("Residual", ("xpcnn.interop.pytorch.Residual",), _residual_module, _residual_layer,
         children=lambda layer: list(layer.children())),
    Twin("GlobalAvgPool2D", ("xpcnn.interop.pytorch.GlobalAvgPool2d", "torch.nn.AdaptiveAvgPool2d"), _gap_module,
         _gap_layer),
]

_BY_LAYER = {t.layer: t for t in TWINS}
_BY_MODULE = {m: t for t in TWINS for m in t.modules}


def supported_modules() -> list[str]:
    """The torch module types :func:`xpcnn.interop.from_torch` converts (``torch.nn.Sequential`` included)."""
    return sorted(["torch.nn.Sequential", *_BY_MODULE])


def twin_of_layer(layer: Any, path: str) -> Twin:
    """The table row for an xpcnn layer, or :class:`UnsupportedModuleError` naming it and its position."""
    twin = _BY_LAYER.get(type(layer).__name__)
    if twin is None or not isinstance(layer, getattr(XL, twin.layer, type(None))):
        raise UnsupportedModuleError(f"xpcnn layer at position {path!r} ({layer!r}) has no PyTorch twin; "
                                     f"supported layers: {', '.join(sorted(_BY_LAYER))}")
    return twin


def twin_of_module(module: Any, path: str) -> Twin:
    """The table row for a torch module, or :class:`UnsupportedModuleError` naming it and its position."""
    twin = _BY_MODULE.get(module_key(module))
    if twin is None:
        raise UnsupportedModuleError(f"torch module at position {path!r} is {module_key(module)} ({module!r}), "
                                     f"which has no xpcnn twin; supported: {', '.join(supported_modules())}")
    return twin


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, Any, Twin]]:
    """``(dotted path, layer, twin)`` for every leaf and composite layer under ``obj``, depth first."""
    if isinstance(obj, Sequential):
        for i, child in enumerate(obj.layers):
            yield from _walk(child, f"{prefix}{i}.")
        return
    path = prefix[:-1]
    twin = twin_of_layer(obj, path)
    yield path, obj, twin
    if twin.children is not None:
        for name, child in twin.children(obj):
            yield from _walk(child, f"{prefix}{name}.")


def state_names(model: Sequential) -> list[tuple[str, str, bool]]:
    """``(xpcnn name, torch name, transposed)`` for every entry of ``model.state_dict()``, in its order.

    Raises :class:`UnsupportedModuleError` for a layer without a twin, and :class:`InteropError` if the
    table and the model's own state dict disagree (a bug, never silently ignored).
    """
    names = []
    for path, layer, twin in _walk(model, ""):
        for w in twin.weights:
            if w.xpcnn in layer.params or w.xpcnn in layer.buffers:
                names.append((f"{path}.{w.xpcnn}", f"{path}.{w.torch}", w.transpose))
    own = list(model.state_dict())
    if sorted(own) != sorted(n for n, _, _ in names):
        table = sorted(n for n, _, _ in names)
        raise InteropError(f"the twins table does not cover this model's state dict: table {table}, "
                           f"model {sorted(own)}")
    order = {name: i for i, name in enumerate(own)}
    return sorted(names, key=lambda n: order[n[0]])


def torch_only_names(model: Sequential) -> list[str]:
    """Torch state-dict entries of ``model``'s twin that xpcnn does not keep (``3.num_batches_tracked``)."""
    return [f"{path}.{name}" for path, _, twin in _walk(model, "") for name in twin.torch_only]


def torch_state_to_xpcnn(model: Sequential, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` of ``model``'s twin (tensors or arrays) as host arrays under xpcnn's names.

    Linear weights are transposed back, torch-only entries (``num_batches_tracked``) dropped, and every
    array cast to the dtype of the model entry it replaces.  :class:`InteropError` lists missing and
    unexpected names.
    """
    names = state_names(model)
    expected = {t for _, t, _ in names}
    optional = set(torch_only_names(model))
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - optional)
    if missing or unexpected:
        raise InteropError(f"the PyTorch state dict does not fit the model's twin: missing {missing}, "
                           f"unexpected {unexpected}")
    own = model.state_dict()
    out = {}
    for xname, tname, transpose in names:
        host = np.asarray(B.to_numpy(state[tname]))
        host = host.T if transpose else host
        if tuple(host.shape) != tuple(own[xname].shape):
            raise InteropError(f"{tname} -> {xname}: expected shape {tuple(own[xname].shape)}"
                               f"{' (transposed from torch)' if transpose else ''}, got {tuple(host.shape)}")
        out[xname] = np.ascontiguousarray(host.astype(B.dtype_name(own[xname].dtype), copy=False))
    return out


def xpcnn_state_to_torch(model: Sequential) -> dict[str, np.ndarray]:
    """``model``'s weights as host arrays under its PyTorch twin's names and layouts (Linear transposed)."""
    own = model.state_dict()
    out = {}
    for xname, tname, transpose in state_names(model):
        host = B.to_numpy(own[xname])
        out[tname] = np.ascontiguousarray(host.T if transpose else host)
    return out


def load_torch_state_dict(model: Sequential, state: Mapping[str, Any]) -> None:
    """Load a PyTorch ``state_dict`` of ``model``'s twin into ``model`` (see :func:`torch_state_to_xpcnn`)."""
    model.load_state_dict(torch_state_to_xpcnn(model, state))
