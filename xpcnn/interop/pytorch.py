"""PyTorch models in and out of xpcnn: :func:`from_torch` and :func:`to_torch`, through the twins table.

``from_torch`` converts a ``torch.nn.Sequential`` tree of supported modules (see
:mod:`xpcnn.interop.twins`) into an xpcnn model with the same weights and buffers; anything else is an
:class:`~xpcnn.interop.twins.UnsupportedModuleError` naming the module and its position.  ``to_torch``
builds the ``torch.nn`` twin of an xpcnn model with the same weights, in eval mode (xpcnn's
``forward(x)`` is an inference call too).  Both also take a PyTorch ``state_dict`` (a mapping, or a
``.safetensors`` file) for the architecture of an xpcnn model.

Arrays cross between NumPy and torch without copies through DLPack (:func:`xpcnn.backend.asarray`
with ``copy=None``, :func:`xpcnn.backend.to_numpy`):

>>> import numpy as np
>>> import torch
>>> from xpcnn import backend as B
>>> host = np.arange(4, dtype=np.float32)
>>> t = B.asarray(host, backend="torch", copy=None)     # a torch tensor over the NumPy buffer
>>> t[0] = 7.0
>>> float(host[0]), np.shares_memory(B.to_numpy(t), host)
(7.0, True)

A PyTorch model in and out:

>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> model = from_torch(net)
>>> model.layers
[Dense(4, 3), ReLU(), Dense(3, 2)]
>>> x = np.ones((5, 4), dtype=np.float32)
>>> ref = net(torch.from_numpy(x)).detach().numpy()
>>> bool(np.abs(B.to_numpy(model(x)) - ref).max() <= 1e-6 * np.abs(ref).max())
True
>>> twin = to_torch(model)
>>> bool(torch.equal(twin[0].weight, net[0].weight))
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .. import backend as B
from ..layers.base import Layer
from ..model import Sequential
from .twins import (
    InteropError,
    Twin,
    UnsupportedModuleError,
    load_torch_state_dict,
    module_key,
    twin_of_layer,
    twin_of_module,
)

__all__ = ["GlobalAvgPool2d", "Residual", "from_torch", "to_torch"]

_FLOAT_DTYPES = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64"}


class Residual(torch.nn.Module):
    """The torch twin of xpcnn's ``Residual(body, shortcut)``: ``y = body(x) + shortcut(x)`` (identity if None)."""

    def __init__(self, body: torch.nn.Module, shortcut: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class GlobalAvgPool2d(torch.nn.Module):
    """The torch twin of xpcnn's ``GlobalAvgPool2D``: (N, C, H, W) -> (N, C), the mean of each feature map.

    ``from_torch`` also takes ``torch.nn.AdaptiveAvgPool2d(1)`` followed by ``torch.nn.Flatten()``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _model_dtype(module: torch.nn.Module, dtype: Any) -> str:
    if dtype is not None:
        return B.dtype_name(dtype)
    found = {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}
    if not found:
        return "float32"
    names = sorted(_FLOAT_DTYPES.get(d, str(d)) for d in found)
    if len(found) > 1 or names[0] not in _FLOAT_DTYPES.values():
        raise InteropError(f"from_torch: the module's floating dtypes are {names}; xpcnn needs one of float16, "
                           "float32, float64 throughout (pass dtype=... to choose)")
    return names[0]


def _host(t: torch.Tensor, transpose: bool) -> np.ndarray:
    host = t.detach().cpu().numpy()
    return np.ascontiguousarray(host.T if transpose else host)


def _copy_into_layer(layer: Layer, module: torch.nn.Module, twin: Twin) -> None:
    for w in twin.weights:
        store = layer.params if w.xpcnn in layer.params else layer.buffers
        source = getattr(module, w.torch, None)
        if w.xpcnn not in store or source is None:  # BatchNorm(affine=False): xpcnn keeps gamma 1, beta 0
            continue
        store[w.xpcnn] = B.to_device_like(_host(source, w.transpose), store[w.xpcnn])


def _copy_into_module(module: torch.nn.Module, layer: Layer, twin: Twin) -> None:
    with torch.no_grad():
        for w in twin.weights:
            value = layer.params.get(w.xpcnn, layer.buffers.get(w.xpcnn))
            if value is None:
                continue
            host = B.to_numpy(value)
            target = getattr(module, w.torch)
            target.copy_(torch.from_numpy(np.ascontiguousarray(host.T if w.transpose else host)))


def from_torch(source: Any, model: Sequential | None = None, *, dtype: Any = None) -> Sequential:
    """An xpcnn model from a ``torch.nn`` module, or ``model`` loaded from a PyTorch state dict.

    ``source``: a ``torch.nn.Sequential`` tree (or a single supported module) -> a new
    :class:`~xpcnn.Sequential` on the current backend, in ``dtype`` (default: the module's), with the
    same weights and buffers.  Or a PyTorch ``state_dict`` (mapping of names to tensors or arrays, or
    the path of a ``.safetensors`` file) together with ``model``, whose :func:`to_torch` twin has those
    names: the weights are loaded into ``model`` (cast to its dtype), which is returned.

    Raises :class:`~xpcnn.interop.twins.UnsupportedModuleError` naming the first unsupported module and
    its position (``"features.3"``), :class:`~xpcnn.interop.twins.InteropError` for a state dict that
    does not fit.
    """
    if isinstance(source, torch.nn.Module):
        if model is not None:
            raise InteropError("from_torch: pass a torch module alone, or a state dict together with model=")
        return _from_module(source, dtype)
    if isinstance(source, (str, os.PathLike)):
        from .safetensors_io import read_tensors

        source = read_tensors(source)[0]
    if not isinstance(source, Mapping):
        raise TypeError(f"from_torch expects a torch.nn.Module, a state dict or a .safetensors path, got "
                        f"{type(source).__name__}")
    if model is None:
        raise InteropError("from_torch: a state dict carries no architecture; pass model= (an xpcnn model whose "
                           "PyTorch twin has these names)")
    load_torch_state_dict(model, source)
    return model


def _from_module(module: torch.nn.Module, dtype: Any) -> Sequential:
    dt = _model_dtype(module, dtype)
    pairs: list[tuple[Layer, torch.nn.Module, Twin]] = []

    def to_layers(m: torch.nn.Module, path: str) -> list[Any]:
        if isinstance(m, torch.nn.Sequential) and type(m) is torch.nn.Sequential:
            named = list(m.named_children())
            for i, (name, child) in enumerate(named):  # (N, C, 1, 1) in torch, (N, C) in xpcnn: a Flatten must follow
                if module_key(child) == "torch.nn.AdaptiveAvgPool2d" and (
                        i + 1 == len(named) or module_key(named[i + 1][1]) != "torch.nn.Flatten"):
                    raise UnsupportedModuleError(
                        f"torch module at position {_join(path, name)!r} ({child!r}): AdaptiveAvgPool2d must be "
                        "followed by Flatten (xpcnn's GlobalAvgPool2D returns (N, C), not (N, C, 1, 1))")
            children = [layer for name, child in named for layer in to_layers(child, _join(path, name))]
            return [Sequential(*children)] if path else children  # nested Sequentials stay nested
        twin = twin_of_module(m, path or "<top>")
        layer = twin.to_layer(m, dt, convert, path)
        pairs.append((layer, m, twin))
        return [layer]

    def convert(m: torch.nn.Module, path: str) -> Any:
        found = to_layers(m, path)
        return found[0] if len(found) == 1 else Sequential(*found)

    top = to_layers(module, "")
    for layer, m, twin in pairs:
        _copy_into_layer(layer, m, twin)
    return Sequential(*top)


def to_torch(model: Sequential, weights: Any = None, *, device: Any = None) -> torch.nn.Sequential:
    """The ``torch.nn.Sequential`` twin of an xpcnn model, with the same weights, in eval mode.

    ``weights`` (optional): a PyTorch state dict (mapping, or ``.safetensors`` path) to load into the twin
    instead of the model's own weights (strict: every name must match).  ``device``: where the twin goes
    (default CPU).  Raises :class:`~xpcnn.interop.twins.UnsupportedModuleError` for a layer without a twin.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"to_torch expects an xpcnn Sequential model, got {type(model).__name__}")
    ref = next((p.value for p in model.parameters()), None)
    torch_dtype = getattr(torch, B.dtype_name(ref.dtype)) if ref is not None else torch.float32

    def convert(obj: Any, path: str) -> torch.nn.Module:
        if isinstance(obj, Sequential):
            return torch.nn.Sequential(*[convert(child, _join(path, str(i))) for i, child in enumerate(obj.layers)])
        twin = twin_of_layer(obj, path)
        module = twin.to_module(obj, torch.nn, convert, path).to(dtype=torch_dtype)
        _copy_into_module(module, obj, twin)
        return module

    net = convert(model, "")
    assert isinstance(net, torch.nn.Sequential)  # convert maps a Sequential to a Sequential
    if weights is not None:
        if isinstance(weights, (str, os.PathLike)):
            from .safetensors_io import read_tensors

            weights = read_tensors(weights)[0]
        state = {k: torch.from_numpy(np.array(B.to_numpy(v))) for k, v in weights.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InteropError(f"to_torch: the weights do not fit the model's twin: {exc}") from None
    if device is not None:
        net = net.to(device)
    return net.eval()
