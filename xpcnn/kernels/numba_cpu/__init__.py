"""The ``numba_cpu`` kernel set: Numba kernels for NumPy float32/float64 arrays behind the kernel seam.

Importing this package (the registry does it the first time an op sees a NumPy array, unless
``XPCNN_KERNELS=reference``) compiles nothing yet; it registers, for ``numpy.ndarray``:

================== ==================================================== =====================================
op                 module                                               eligible when
================== ==================================================== =====================================
``conv2d``         :mod:`.conv` (per-sample tap-row GEMMs, one BLAS     float32/float64, ungrouped, any
                   call per kernel row); :mod:`.depthwise` (direct      stride/padding/dilation; or
                   loops)                                               depthwise (groups == C == F)
``dense``          :mod:`.dense` (row blocks on the set's threads,      float32/float64, (N, in) @ (in, out)
                   BLAS at one thread)
``max_pool2d``     :mod:`.pool` (first-max index like the reference)    float32/float64, (N, C, H, W)
``avg_pool2d``     :mod:`.pool`                                         float32/float64, (N, C, H, W)
``batch_norm``     :mod:`.norm`                                         float32/float64, (N, D) or (N, C, H, W)
``optimizer_update`` :mod:`.updates` (in place)                         contiguous writable float arrays
fused Conv->ReLU-> :mod:`.fused` (one pass per sample; planned by        as ``conv2d`` and ``max_pool2d``
MaxPool            :mod:`xpcnn.kernels.fusion`)
fused BatchNorm->  :mod:`.norm` (ReLU applied as the output is stored,      as ``batch_norm``
ReLU               its sign masks ``dout`` in the backward)
================== ==================================================== =====================================

Anything else falls back to the reference (:mod:`xpcnn.functional`).  Numba missing or failing to
import raises ImportError here, which the registry announces once before using the reference.
Threads: :mod:`.threads` (the BLAS thread limit decides; results are bitwise the same for any count).
GEMM: :mod:`.blas` lets the convolution kernels call NumPy's bundled OpenBLAS from inside Numba, so each
thread runs its whole share of samples in one compiled call (``xpcnn info`` shows ``numba_cpu_gemm``);
without a bundled OpenBLAS they drive each sample from Python with ``np.matmul`` (the same products,
equal within rounding).
"""

from __future__ import annotations

import numpy as np

from .. import fusion, ops
from . import blas, conv, dense, fused, norm, pool, threads, updates
from ._jit import CACHE, CACHE_PROBLEM

__all__ = ["CACHE", "CACHE_PROBLEM", "NAME", "blas", "conv", "dense", "fused", "norm", "pool", "threads", "updates"]

#: the kernel set's name on the seam (``xpcnn.kernels.active_sets()``)
NAME = "numba_cpu"


def _register() -> None:
    nd = np.ndarray
    ops.conv2d.register(nd, NAME, conv.conv2d_forward, conv.conv2d_backward, conv.conv_eligible)
    ops.dense.register(nd, NAME, dense.dense_forward, dense.dense_backward, dense.dense_eligible)
    ops.max_pool2d.register(nd, NAME, pool.max_pool2d_forward, pool.max_pool2d_backward, pool.pool_eligible)
    ops.avg_pool2d.register(nd, NAME, pool.avg_pool2d_forward, pool.avg_pool2d_backward, pool.pool_eligible)
    ops.batch_norm.register(nd, NAME, norm.batch_norm_forward, norm.batch_norm_backward, norm.batch_norm_eligible)
    ops.optimizer_update.register(nd, NAME, updates.optimizer_update, None, updates.update_eligible)
    fusion.conv2d_relu_max_pool2d.register(nd, NAME, fused.fused_forward, fused.fused_backward, fused.fused_eligible)
    fusion.batch_norm_relu.register(nd, NAME, norm.batch_norm_relu_forward, norm.batch_norm_relu_backward,
                                    norm.batch_norm_eligible)


_register()
