"""Fused CUDA kernels for CuPy float32 arrays, behind the kernel seam (UNTESTED ON A GPU so far).

The kernels are CUDA C++ sources shipped in this package (``*.cu``), compiled at run time with
``cupy.RawModule`` the first time an op needs them.  Importing this package imports no CuPy: the
kernel set proper is :mod:`xpcnn.kernels.cuda.cupy_set`, which the registry loads the first time it
sees a ``cupy.ndarray``.

* :mod:`~xpcnn.kernels.cuda.cupy_set`: the kernel set for conv2d, max_pool2d, relu, dense,
  softmax_cross_entropy and optimizer_update, plus the fused conv -> ReLU -> max-pool pair, on CuPy or a
  stand-in module; the ops live in ``conv_ops``, ``dense_ops`` and ``update_ops``, launching in ``launch``.
* :mod:`~xpcnn.kernels.cuda.nvrtc_check`: compile every source with NVRTC (no GPU needed) and read
  ptxas' register and spill report.
* :mod:`~xpcnn.kernels.cuda.shim`: compile the same sources with the host C++ compiler and run them
  on the CPU (for the logic tests).
* :mod:`~xpcnn.kernels.cuda.standin`: a NumPy-backed stand-in for the CuPy namespace that counts
  kernel launches and runs the kernels through the CPU shim.
* :mod:`~xpcnn.kernels.cuda.verify`: the GPU verification stage (each kernel vs the reference on the device).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["NVRTC_OPTIONS", "OPT_IN_VAR", "SOURCES", "SOURCE_DIR", "register", "source"]

SOURCE_DIR = Path(__file__).resolve().parent

#: the CUDA sources, one module each (``cupy.RawModule``)
SOURCES: tuple[str, ...] = ("conv.cu", "pool.cu", "dense.cu", "loss.cu", "optim.cu")

#: NVRTC options used on the GPU and in the CI compile check (no FMA contraction: the explicit
#: ``__f*_rn`` intrinsics and plain arithmetic round like NumPy's float32)
NVRTC_OPTIONS: tuple[str, ...] = ("--fmad=false",)


def source(name: str) -> str:
    """The text of the CUDA source ``name`` (one of :data:`SOURCES`)."""
    if name not in SOURCES:
        raise ValueError(f"unknown CUDA source {name!r}; expected one of {', '.join(SOURCES)}")
    return (SOURCE_DIR / name).read_text(encoding="utf-8")


#: opting in to the CUDA set while it is untested on a GPU: ``XPCNN_CUDA_KERNELS=1``
OPT_IN_VAR = "XPCNN_CUDA_KERNELS"


def register() -> bool:
    """Declare the CUDA set for ``cupy`` arrays with the registry, if ``$XPCNN_CUDA_KERNELS`` is ``1``.

    Until a GPU run has verified the kernels (``xpcnn.kernels.cuda.verify``), CuPy arrays use the
    reference ops unless the user opts in; returns whether the set was declared.
    """
    import os

    from ..registry import register_set

    if os.environ.get(OPT_IN_VAR, "0").strip() != "1":
        return False
    register_set("cuda", "cupy", "xpcnn.kernels.cuda.load")
    return True
