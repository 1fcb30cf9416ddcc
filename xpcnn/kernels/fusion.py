"""Fusion planned by the model: ``Conv2D -> ReLU -> MaxPool2D`` and ``BatchNorm -> ReLU`` run as one op
where a kernel set has it.

A :class:`~xpcnn.model.Sequential` asks :func:`forward_units` for the units to run: its own layers,
except that each run of exactly ``Conv2D, ReLU, MaxPool2D`` among its *direct* children becomes one
:class:`FusedConvReluPool` unit, and each ``BatchNorm1D``/``BatchNorm2D, ReLU`` pair one
:class:`FusedBatchNormReLU` unit (the batch norm's output is then never stored on its own: one activation
less per pair, and one pass less; a batch norm synchronised over ranks is run unfused).  A nested
Sequential plans its own children, so a pattern that crosses a composite's boundary is never fused (it
runs layer by layer).  The units call the ops :data:`conv2d_relu_max_pool2d` and :data:`batch_norm_relu`
through the seam: a fast kernel set (``numba_cpu``) computes each in one pass (per block of samples, per
feature); elsewhere their references run the ops one after another (each through the seam), so any
backend works.

A grouped convolution, or a layer whose ``forward`` or ``backward`` was replaced on the instance (a probe,
a hook), is never fused.
Nothing about the model changes: the unit writes the Conv2D's ``grads["W"]``/``grads["b"]`` exactly
where the layer would, parameters stay in the layers, ``config()``/``state_dict()``/checkpoints are
untouched.  Fusion is skipped in kernel mode ``reference`` (the reference runs the model's layers
literally), with ``XPCNN_FUSION=0`` (read once) and inside ``using_fusion(False)``.

Op signature: ``forward(x, W, b, stride, padding, dilation, geometry) -> (y, cache)`` with ``geometry``
the pooling's :class:`~xpcnn.functional.pool.PoolGeometry` for the conv output; ``backward(dout,
cache, need_dx) -> (dx, dW, db)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from typing import Any

from . import ops
from .registry import Op, kernel_mode

__all__ = ["FusedBatchNormReLU", "FusedConvReluPool", "backward_units", "batch_norm_relu", "conv2d_relu_max_pool2d",
           "forward_units", "fusion_enabled", "plan", "using_fusion"]


def _composed_forward(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any,
                      geometry: Any) -> tuple[Any, Any]:
    """The three ops one after another (each dispatched on its own): the fused op's reference."""
    y, conv_cache = ops.conv2d.forward(x, W, b, stride, padding, dilation)
    y, relu_cache = ops.relu.forward(y)
    y, pool_cache = ops.max_pool2d.forward(y, geometry)
    return y, (conv_cache, relu_cache, pool_cache)


def _composed_backward(dout: Any, cache: tuple[Any, Any, Any], need_dx: bool = True) -> Any:
    conv_cache, relu_cache, pool_cache = cache
    d = ops.max_pool2d.backward(dout, pool_cache)
    d = ops.relu.backward(d, relu_cache)
    return ops.conv2d.backward(d, conv_cache, need_dx)


#: the fused op: ``y = max_pool2d(relu(conv2d(x, W, b)))``; ``backward -> (dx, dW, db)``
conv2d_relu_max_pool2d = Op("conv2d_relu_max_pool2d", _composed_forward, _composed_backward)

def _bn_relu_forward(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, train: bool,
                     momentum: float, eps: float) -> tuple[Any, Any]:
    """Batch norm then ReLU (each dispatched on its own): the fused op's reference."""
    y, bn_cache = ops.batch_norm.forward(x, gamma, beta, running_mean, running_var, train, momentum, eps)
    y, relu_cache = ops.relu.forward(y)
    return y, (bn_cache, relu_cache)


def _bn_relu_backward(dout: Any, cache: tuple[Any, Any]) -> Any:
    bn_cache, relu_cache = cache
    return ops.batch_norm.backward(ops.relu.backward(dout, relu_cache), bn_cache)


#: the fused op: ``y = relu(batch_norm(x, ...))`` (``batch_norm``'s arguments); ``backward -> (dx, dgamma, dbeta)``
batch_norm_relu = Op("batch_norm_relu", _bn_relu_forward, _bn_relu_backward)

_ENV_ENABLED: bool | None = None
_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar("xpcnn_fusion", default=None)


def fusion_enabled() -> bool:
    """``using_fusion`` > ``$XPCNN_FUSION`` (``0`` turns it off; read once) > on; always off in mode reference."""
    global _ENV_ENABLED
    if kernel_mode() == "reference":
        return False
    forced = _override.get()
    if forced is not None:
        return forced
    if _ENV_ENABLED is None:
        _ENV_ENABLED = os.environ.get("XPCNN_FUSION", "1").strip() != "0"
    return _ENV_ENABLED


@contextlib.contextmanager
def using_fusion(enabled: bool) -> Iterator[None]:
    """Turn model-planned fusion on or off inside a ``with`` block (tests compare both)."""
    token = _override.set(bool(enabled))
    try:
        yield
    finally:
        _override.reset(token)


class FusedConvReluPool:
    """``Conv2D -> ReLU -> MaxPool2D`` as one unit of a Sequential's plan (same protocol as a layer).

    x: (N, C, H, W) -> y: (N, F, POH, POW).  The three layers keep their parameters and configuration;
    the unit validates the input as the Conv2D would, and its backward fills the Conv2D's ``grads``.
    """

    def __init__(self, conv: Any, relu: Any, pool: Any) -> None:
        self.conv, self.relu, self.pool = conv, relu, pool
        self._cache: Any = None

    @property
    def layers(self) -> tuple[Any, Any, Any]:
        return self.conv, self.relu, self.pool

    def forward(self, x: Any, train: bool = False) -> Any:
        from ..functional.conv import conv_geometry
        from ..functional.pool import pool_geometry

        conv, pool = self.conv, self.pool
        conv._check_input(x, 4, "(N, C, H, W)")
        if x.shape[1] != conv.in_channels:
            raise ValueError(f"channel mismatch: Conv2D expects {conv.in_channels} input channels, "
                             f"but x has {x.shape[1]} (x shape {tuple(x.shape)})")
        oh, ow = conv_geometry(x.shape, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        geometry = pool_geometry((x.shape[0], conv.out_channels, oh, ow), pool.kernel_size, pool.stride,
                                 pool.padding, pool.ceil_mode)
        y, cache = conv2d_relu_max_pool2d.forward(x, conv.params["W"], conv.params.get("b"), conv.stride,
                                                  conv.padding, conv.dilation, geometry)
        self._cache = cache if train else None
        for layer in self.layers:  # a stale layer cache must not pair with this forward
            layer._cache = None
        return y

    def backward(self, dout: Any) -> Any:
        if self._cache is None:
            raise RuntimeError("Conv2D/ReLU/MaxPool2D backward called before forward(x, train=True)")
        conv = self.conv
        dx, dW, db = conv2d_relu_max_pool2d.backward(dout, self._cache, conv.need_input_grad)
        conv.grads["W"] = dW
        if conv.bias:
            conv.grads["b"] = db
        return dx

    def __repr__(self) -> str:
        return f"Fused({self.conv!r}, {self.relu!r}, {self.pool!r})"


class FusedBatchNormReLU:
    """``BatchNorm1D/2D -> ReLU`` as one unit of a Sequential's plan: x -> y of the same shape.

    The batch norm layer keeps its parameters, running statistics and checks; the unit's backward fills
    its ``grads``.  In train mode with a synchronised batch norm (``layer.sync``, data parallelism) the
    two layers run one after the other.
    """

    def __init__(self, norm: Any, relu: Any) -> None:
        self.norm, self.relu = norm, relu
        self._cache: Any = None
        self._unfused = False

    @property
    def layers(self) -> tuple[Any, Any]:
        return self.norm, self.relu

    def forward(self, x: Any, train: bool = False) -> Any:
        norm = self.norm
        self._unfused = train and norm.sync is not None
        if self._unfused:
            return self.relu.forward(norm.forward(x, train=True), train=True)
        norm._check_batch(x, train)
        y, cache = batch_norm_relu.forward(x, norm.params["gamma"], norm.params["beta"], norm.buffers["running_mean"],
                                           norm.buffers["running_var"], train, norm.momentum, norm.eps)
        self._cache = cache if train else None
        for layer in self.layers:  # a stale layer cache must not pair with this forward
            layer._cache = None
        return y

    def backward(self, dout: Any) -> Any:
        if self._unfused:
            return self.norm.backward(self.relu.backward(dout))
        if self._cache is None:
            raise RuntimeError(f"{type(self.norm).__name__}/ReLU backward called before forward(x, train=True)")
        dx, self.norm.grads["gamma"], self.norm.grads["beta"] = batch_norm_relu.backward(dout, self._cache)
        return dx

    def __repr__(self) -> str:
        return f"Fused({self.norm!r}, {self.relu!r})"


def plan(layers: Sequence[Any]) -> list[Any]:
    """The units to run for a list of layers: fused groups where an exact pattern occurs, else the layers."""
    from ..layers import BatchNorm1D, BatchNorm2D, Conv2D, MaxPool2D, ReLU

    units: list[Any] = []
    i = 0
    while i < len(layers):
        a = layers[i:i + 3]
        if (len(a) == 3 and type(a[0]) is Conv2D and type(a[1]) is ReLU and type(a[2]) is MaxPool2D
                and getattr(a[0], "groups", 1) == 1 and not any(map(_patched, a))):
            units.append(FusedConvReluPool(*a))
            i += 3
        elif (len(a) >= 2 and type(a[0]) in (BatchNorm1D, BatchNorm2D) and type(a[1]) is ReLU
              and not any(map(_patched, a[:2]))):
            units.append(FusedBatchNormReLU(a[0], a[1]))
            i += 2
        else:
            units.append(layers[i])
            i += 1
    return units


def _patched(layer: Any) -> bool:
    return "forward" in layer.__dict__ or "backward" in layer.__dict__


def forward_units(model: Any) -> list[Any]:
    """What ``model.forward`` runs, in order (the plan is cached on the model and kept for the backward)."""
    layers = model.layers
    if not fusion_enabled():
        units = list(layers)
    else:
        # a layer whose forward/backward was replaced on the instance (a test's probe, a hook) is not fused
        key = tuple((id(layer), _patched(layer)) for layer in layers)
        cached = model.__dict__.get("_fusion_plan")
        if cached is None or cached[0] != key:
            cached = (key, plan(layers))
            model.__dict__["_fusion_plan"] = cached
        units = cached[1]
    model.__dict__["_fusion_last"] = units
    return units


def backward_units(model: Any) -> list[Any]:
    """The units of the last forward (their caches pair with it), or the layers before any forward."""
    return model.__dict__.get("_fusion_last") or list(model.layers)
