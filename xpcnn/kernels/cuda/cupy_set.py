"""The CUDA kernel set: fast implementations of the seam's ops for CuPy float32 arrays (UNTESTED ON A GPU).

The registry imports :mod:`xpcnn.kernels.cuda.load` the first time an op sees a ``cupy.ndarray``; it
calls :func:`install` with CuPy.  Tests call :func:`install` with the NumPy-backed stand-in of
:mod:`xpcnn.kernels.cuda.standin`, which runs the same kernels through the CPU shim and counts launches.

Launches per op (LeNet-5 sizes; see the README's launch budget):

* ``conv2d``: im2col gather (channel-major rows) -> one 2-D GEMM ``(F, K) @ (K, N*OH*OW)`` -> the bias
  epilogue in place (skipped without bias).  The output is the GEMM's ``(F, N, OH, OW)`` memory
  returned as an ``(N, F, OH, OW)`` view, so no permute copy is made; backward reads ``dout`` in that
  layout (the ReLU and pooling kernels keep it), so ``dW = dout2 @ col.T`` and ``dcol = W2.T @ dout2``
  are 2-D GEMMs too, and ``dx`` is a deterministic col2im gather.  4-5 launches backward.
* ``relu``: one elementwise kernel each way (any layout shared by its operands).
* ``max_pool2d``: one kernel forward (first-max index), one gather backward.
* ``dense``: one kernel forward (GEMM + bias), one backward (dx, dW, db) for small problems; cuBLAS above
  ``dense_ops.DENSE_KERNEL_LIMIT`` multiply-adds.
* ``softmax_cross_entropy``: one single-block kernel computing the loss, the gradient and the device
  tallies (:func:`read_tallies`); backward launches nothing.
* ``optimizer_update``: one launch for all parameters (see below), plus a copy per gradient that a
  reference op produced; one launch per parameter on the first step.

Flat buffers.  The first fast ``optimizer_update`` of a parameter list copies the parameters and their
state slots into one flat buffer each (a :class:`FlatGroup`), returns the parameters as views of it
(the optimizer assigns them back to the layers) and rebinds the slot dicts to views.  From then on the
conv and dense backward kernels write ``dW``/``db`` straight into the group's flat gradient buffer, at
the parameter's offset, so every later step updates all parameters in ONE launch.  Consequence: a
layer's gradient arrays are views of a buffer reused every step (as PyTorch's ``.grad``).

The fused Conv -> ReLU -> MaxPool pair (:func:`conv_relu_maxpool_forward` / ``_backward``) is here for
a model-level planner; nothing in the seam calls it yet.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .. import ops
from .conv_ops import (
    _conv_backward,
    _conv_eligible,
    _conv_forward,
    _fused_backward,
    _fused_forward,
    _max_pool_backward,
    _max_pool_forward,
    _memory_order,
    _pool_eligible,
    _relu_backward,
    _relu_forward,
)
from .dense_ops import (
    _dense_backward,
    _dense_eligible,
    _dense_forward,
    _tally_buffer,
    _xent_backward,
    _xent_eligible,
    _xent_forward,
    tallies_of,
)
from .launch import KERNEL_SET, Kernels, _is_f32
from .update_ops import _RULE_KERNEL, FlatGroup, _group_of, _optimizer_update, _rule_args, _update_eligible

__all__ = ["FlatGroup", "KERNEL_SET", "Kernels", "conv_relu_maxpool_backward", "conv_relu_maxpool_forward", "install",
           "kernels_for", "read_tallies", "tallies_of"]

# the implementations, by the names tests and the GPU stage call them
_IMPLEMENTATIONS = (_conv_backward, _conv_forward, _fused_backward, _fused_forward, _max_pool_backward,
                    _max_pool_forward, _relu_backward, _relu_forward, _dense_backward, _dense_forward, _tally_buffer,
                    _xent_backward, _xent_forward, _RULE_KERNEL, _group_of, _optimizer_update, _rule_args)


_KERNELS: dict[int, Kernels] = {}


def read_tallies(device: Any = None, reset: bool = True) -> dict[str, float]:
    """The device tallies of the fused softmax cross-entropy since the last reset (ONE device sync).

    ``{"loss_sum", "correct", "seen", "bad_labels"}``: summed row losses, rows whose first arg-max is the
    label, rows seen, labels outside ``[0, C)``.  ``device``: the CuPy device id (None: the only one used).
    """
    k = _KERNELS.get(id(sys.modules.get("cupy")))
    if k is None or not k.tallies:
        return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "bad_labels": 0.0}
    return tallies_of(k, device, reset)


def kernels_for(cp: Any) -> Kernels:
    """The :class:`Kernels` of module ``cp`` (created by :func:`install`)."""
    return _KERNELS[id(cp)]


def install(cp: Any) -> Kernels:
    """Register this set's implementations for arrays of type ``cp.ndarray`` with the seam's ops."""
    existing = _KERNELS.get(id(cp))
    if existing is not None:
        return existing
    k = _KERNELS[id(cp)] = Kernels(cp)
    nd = cp.ndarray

    def bind(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: fn(k, *args, **kwargs)

    ops.conv2d.register(nd, KERNEL_SET, bind(_conv_forward), bind(_conv_backward), _conv_eligible)
    ops.relu.register(nd, KERNEL_SET, bind(_relu_forward), bind(_relu_backward),
                      lambda x: _is_f32(x) and _memory_order(x) is not None)
    ops.max_pool2d.register(nd, KERNEL_SET, bind(_max_pool_forward), bind(_max_pool_backward), _pool_eligible)
    ops.dense.register(nd, KERNEL_SET, bind(_dense_forward), bind(_dense_backward), _dense_eligible)
    ops.softmax_cross_entropy.register(nd, KERNEL_SET, bind(_xent_forward), bind(_xent_backward), _xent_eligible)
    ops.optimizer_update.register(nd, KERNEL_SET, bind(_optimizer_update), None, _update_eligible)
    return k


def conv_relu_maxpool_forward(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any,
                              geometry: Any) -> tuple[Any, Any]:
    """Fused ``max_pool2d(relu(conv2d(x, W, b)))``: im2col, one GEMM, one epilogue (3 launches).

    x: (N, C, H, W), W: (F, C, KH, KW), b: (F,) or None, ``geometry`` a
    :class:`~xpcnn.functional.pool.PoolGeometry` for the conv output -> y: (N, F, PH, PW), cache.
    """
    return _fused_forward(_KERNELS[id(_module_of(x))], x, W, b, stride, padding, dilation, geometry)


def conv_relu_maxpool_backward(dout: Any, cache: Any, need_dx: bool = True) -> tuple[Any, Any, Any]:
    """Backward of :func:`conv_relu_maxpool_forward`: the fused pool + ReLU gather, then the conv backward."""
    return _fused_backward(_KERNELS[id(_module_of(dout))], dout, cache, need_dx)


def _module_of(a: Any) -> Any:
    for k in _KERNELS.values():
        if isinstance(a, k.cp.ndarray):
            return k.cp
    raise TypeError(f"no CUDA kernel set is installed for {type(a).__name__}")
