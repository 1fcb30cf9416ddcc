"""The kernel seam: the ops layers and optimizers call, each with a portable reference and optional fast sets.

``xpcnn.functional`` is the reference on every backend.  A fast kernel set (CPU or CUDA) registers
implementations of the same ops for one array type, with an eligibility test; an ineligible call
falls back to the reference.  ``XPCNN_KERNELS=auto|reference|fast`` (or :func:`using_kernels`)
chooses; see :mod:`xpcnn.kernels.registry` and the op table in :mod:`xpcnn.kernels.ops`.

>>> import numpy as np
>>> from xpcnn import kernels
>>> y, cache = kernels.relu.forward(np.array([-1.0, 2.0]))
>>> kernels.relu.backward(np.ones(2), cache).tolist()
[0.0, 1.0]
"""

from .ops import (
                  avg_pool2d,
                  batch_norm,
                  conv2d,
                  dense,
                  dropout,
                  global_avg_pool2d,
                  leaky_relu,
                  max_pool2d,
                  optimizer_update,
                  relu,
                  sigmoid,
                  softmax_cross_entropy,
                  tanh,
)
from .registry import ENV_VAR, MODES, KernelError, KernelSet, Op, active_sets, kernel_mode, register_set, using_kernels

#: Numba kernels for NumPy arrays (imported on first use; without Numba the reference runs, announced once)
register_set("numba_cpu", "numpy", "xpcnn.kernels.numba_cpu")

__all__ = ["ENV_VAR", "MODES", "KernelError", "KernelSet", "Op", "active_sets", "avg_pool2d", "batch_norm", "conv2d",
           "dense", "dropout", "global_avg_pool2d", "kernel_mode", "leaky_relu", "max_pool2d", "optimizer_update",
           "register_set", "relu", "sigmoid", "softmax_cross_entropy", "tanh", "using_kernels"]

from .cuda import register as _register_cuda  # noqa: E402 (after the ops exist)

_register_cuda()
