"""Every op the layers, losses and optimizers call, bound to its reference in :mod:`xpcnn.functional`.

Signatures (arguments already validated by the caller; geometry already normalised to pairs):

==========================  ==============================================  ===================================
op                          forward(...) -> (y, cache)                       backward(dout, cache, ...) ->
==========================  ==============================================  ===================================
``conv2d``                  ``x, W, b, stride, padding, dilation[,           ``need_dx`` -> ``(dx, dW, db)``
                            groups=G]`` (keyword, only when ``G > 1``)
``max_pool2d``              ``x, geometry`` (:class:`PoolGeometry`)          ``dx``
``avg_pool2d``              ``x, geometry``                                  ``dx``
``global_avg_pool2d``       ``x`` (N, C, H, W) -> (N, C)                     ``dx``
``dense``                   ``x, W, b``                                      ``need_dx`` -> ``(dx, dW, db)``
``relu/sigmoid/tanh``       ``x``                                            ``dx``
``leaky_relu``              ``x, alpha``                                     ``dx``
``batch_norm``              ``x, gamma, beta, mean, var, train, m, eps``     ``(dx, dgamma, dbeta)``
``dropout``                 ``x, p, rng`` (host generator)                   ``dx``
``softmax_cross_entropy``   ``logits, labels`` -> ``(loss, cache)``          ``dlogits`` (``dout`` None means 1)
``optimizer_update``        ``params, grads, slots, steps, rule, hyper``     (no backward) -> new params
==========================  ==============================================  ===================================

``optimizer_update`` is multi-tensor: lists of parameters, gradients and slot dicts (one per parameter),
the per-parameter step counts, the rule name (``"adam"``) and its hyper-parameters; it returns the new
parameter values (a fast set may update in place and return the same arrays).

A fast kernel set registers against these ops (``ops.conv2d.register(numpy.ndarray, "cpu", fwd, bwd,
eligible)``); its forward returns its own cache, which only its own backward reads.
"""

from __future__ import annotations

from typing import Any

from ..functional import updates as _updates
from ..functional.activation import (
    _leaky_relu,
    _leaky_relu_backward,
    _relu,
    _relu_backward,
    _sigmoid,
    _sigmoid_backward,
    _tanh,
    _tanh_backward,
)
from ..functional.conv import _conv2d_backward, _conv2d_forward
from ..functional.dense import _dense_backward, _dense_forward
from ..functional.dropout import _dropout_backward, _dropout_forward
from ..functional.loss import _softmax_cross_entropy_backward, _softmax_cross_entropy_forward
from ..functional.norm import _batch_norm_backward, _batch_norm_forward
from ..functional.pool import (
    _avg_pool2d_backward,
    _avg_pool2d_forward,
    _global_avg_pool2d_backward,
    _global_avg_pool2d_forward,
    _max_pool2d_backward,
    _max_pool2d_forward,
)
from .registry import Op

__all__ = ["avg_pool2d", "batch_norm", "conv2d", "dense", "dropout", "global_avg_pool2d", "leaky_relu", "max_pool2d",
           "optimizer_update", "relu", "sigmoid", "softmax_cross_entropy", "tanh"]


def _output_is_cache(fn: Any) -> Any:
    """For activations whose derivative needs only the output: ``x -> (y, y)``."""
    def forward(x: Any) -> tuple[Any, Any]:
        y = fn(x)
        return y, y
    return forward


def _leaky_forward(x: Any, alpha: float) -> tuple[Any, tuple[Any, float]]:
    return _leaky_relu(x, alpha), (x, alpha)


def _leaky_backward(dout: Any, cache: tuple[Any, float]) -> Any:
    return _leaky_relu_backward(dout, *cache)


conv2d = Op("conv2d", _conv2d_forward, _conv2d_backward)
max_pool2d = Op("max_pool2d", _max_pool2d_forward, _max_pool2d_backward)
avg_pool2d = Op("avg_pool2d", _avg_pool2d_forward, _avg_pool2d_backward)
global_avg_pool2d = Op("global_avg_pool2d", _global_avg_pool2d_forward, _global_avg_pool2d_backward)
dense = Op("dense", _dense_forward, _dense_backward)
relu = Op("relu", _output_is_cache(_relu), _relu_backward)
sigmoid = Op("sigmoid", _output_is_cache(_sigmoid), _sigmoid_backward)
tanh = Op("tanh", _output_is_cache(_tanh), _tanh_backward)
leaky_relu = Op("leaky_relu", _leaky_forward, _leaky_backward)
batch_norm = Op("batch_norm", _batch_norm_forward, _batch_norm_backward)
dropout = Op("dropout", _dropout_forward, _dropout_backward)
softmax_cross_entropy = Op("softmax_cross_entropy", _softmax_cross_entropy_forward, _softmax_cross_entropy_backward)
optimizer_update = Op("optimizer_update", _updates.optimizer_update)
