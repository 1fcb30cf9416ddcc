"""``xpcnn info``: versions, the current backend and device, the kernel sets, the available backends and
NumPy's BLAS."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from typing import Any

import numpy as np

from . import __version__, kernels
from . import backend as B

__all__ = ["cmd_info", "info"]


def info() -> dict[str, Any]:
    """Versions, the current backend and device, the kernel mode and sets, the backends and NumPy's BLAS."""
    import array_api_compat

    result: dict[str, Any] = {
        "xpcnn": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "numpy": np.__version__, "array_api_compat": array_api_compat.__version__,
    }
    try:
        be = B.get_backend()
        result.update(backend=be.name, device=str(be.device))
    except B.BackendError as exc:
        result.update(backend=f"error: {exc}")
    try:
        result["kernel_mode"] = kernels.kernel_mode()
        with warnings.catch_warnings():  # one op on the current backend loads the kernel sets for its arrays
            warnings.simplefilter("ignore")
            kernels.relu(B.asarray(np.zeros((1, 1), dtype=np.float32)))
    except Exception as exc:  # a bad $XPCNN_KERNELS, no backend, a set that fails in mode fast: report it
        result.setdefault("kernel_mode", f"error: {exc}")
        result["kernel_error"] = str(exc)
    result["kernel_sets"] = kernels.active_sets()
    blas_binding = sys.modules.get("xpcnn.kernels.numba_cpu.blas")
    if blas_binding is not None:  # how the numba_cpu convolutions multiply
        result["numba_cpu_gemm"] = (f"{blas_binding.LIBRARY} called from Numba ({blas_binding.INT_BITS}-bit ints)"
                                    if blas_binding.AVAILABLE else "np.matmul per block (no bundled OpenBLAS found)")
    result["available_backends"] = B.available_backends()
    for mod in ("cupy", "torch", "array_api_strict"):
        try:
            result[mod] = __import__(mod).__version__
        except ImportError:
            result[mod] = None
    try:
        from threadpoolctl import threadpool_info

        result["blas"] = [{k: v for k, v in lib.items() if k in ("internal_api", "version", "num_threads",
                                                                   "architecture")}
                          for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        show: Any = np.show_config
        config = show(mode="dicts") if "mode" in show.__code__.co_varnames else {}
        result["blas"] = config.get("Build Dependencies", {}).get("blas", {})
    return result


def cmd_info(args: argparse.Namespace) -> int:
    """Print :func:`info` as JSON; returns 0."""
    print(json.dumps(info(), indent=2))
    return 0
