"""The kernel seam: the ops layers and optimizers call, each with a portable reference and optional fast sets.

See :mod:`xpcnn.kernels.registry` for how an implementation is chosen (``XPCNN_KERNELS`` /
:func:`using_kernels`).
"""

from ..functional import updates as _updates
from .registry import ENV_VAR, MODES, KernelError, KernelSet, Op, active_sets, kernel_mode, register_set, using_kernels

__all__ = ["ENV_VAR", "MODES", "KernelError", "KernelSet", "Op", "active_sets", "kernel_mode", "optimizer_update",
           "register_set", "using_kernels"]

#: the multi-tensor optimizer update: ``(params, grads, slots, steps, rule, hyper) -> new params``
optimizer_update = Op("optimizer_update", _updates.optimizer_update)
