"""The kernel seam: the ops layers and optimizers call, each with a portable reference and optional fast sets.

See :mod:`xpcnn.kernels.registry` for how an implementation is chosen (``XPCNN_KERNELS`` /
:func:`using_kernels`).
"""

from .registry import ENV_VAR, MODES, KernelError, KernelSet, Op, active_sets, kernel_mode, register_set, using_kernels

__all__ = ["ENV_VAR", "MODES", "KernelError", "KernelSet", "Op", "active_sets", "kernel_mode", "register_set",
           "using_kernels"]
