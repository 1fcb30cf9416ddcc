"""NumPy's own BLAS GEMM, callable from inside Numba kernels (so a thread's whole share is one ``nogil`` call).

The convolution kernels multiply per sample, a few GEMMs each.  Calling ``np.matmul`` per product from
Python means the worker threads take the GIL several times per sample (the Numba calls around it, the
matmul calls), and on small layers those hand-overs cost more than the second thread gains.  With
:func:`gemm` (``C = op(A) @ op(B)``) and :func:`gemm_add` (``C += op(A) @ op(B)``) a kernel lays out the
rows, multiplies and scatters every sample of its share in one compiled call.

:func:`gemm` calls the ``cblas_?gemm`` of the OpenBLAS that NumPy's wheels bundle (``scipy_openblas64_``:
64-bit integers, symbols ``scipy_cblas_sgemm64_`` / ``scipy_cblas_dgemm64_``), the library ``np.matmul``
uses.  The symbol is registered with LLVM under a fixed name, so compiled kernels refer to it by name and
Numba's on-disk cache stays valid across processes; only this one ABI (64-bit integers) is ever compiled,
so no cached kernel can call a BLAS of another integer width.  Where no such library is found (NumPy
built against MKL or Accelerate, or a 32-bit-integer OpenBLAS)
:data:`AVAILABLE` is False and the kernels keep the per-block ``np.matmul`` path.

    >>> import numpy as np
    >>> from xpcnn.kernels.numba_cpu import blas
    >>> A, B = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    >>> C = np.empty((2, 4), np.float32)
    >>> if blas.AVAILABLE:
    ...     blas.matmul_into(A, B, C)
    ... else:
    ...     np.matmul(A, B, out=C)
    >>> float(C[0, 0])
    3.0
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import numpy as np

try:
    from llvmlite import binding as llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except Exception as exc:  # the same announcement as ._jit's: the registry falls back to the reference
    raise ImportError(f"numba is not usable: {type(exc).__name__}: {exc}") from exc

from ._jit import jit

__all__ = ["AVAILABLE", "INT_BITS", "LIBRARY", "gemm", "gemm_add", "matmul_into"]

#: (name of the library file, int width) of the BLAS found, or ("", 0)
LIBRARY, INT_BITS = "", 0
#: whether :func:`gemm` can be used
AVAILABLE = False
#: LLVM symbol names (kept fixed: Numba's on-disk cache refers to them)
_NAMES = {"float32": "xpcnn_numba_cpu_sgemm", "float64": "xpcnn_numba_cpu_dgemm"}
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _find() -> tuple[str, int, dict[str, int]]:
    """The bundled OpenBLAS next to NumPy, its integer width and the addresses of its s/dgemm."""
    if os.environ.get("XPCNN_NUMBA_BLAS", "1").strip() == "0":
        return "", 0, {}
    root = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(root, "..", "numpy.libs", "*openblas*"))
                        + glob.glob(os.path.join(root, ".dylibs", "*openblas*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # 64-bit integers only: the compiled (and cached) kernels are built for that one ABI
        for suffix, bits in (("64_", 64),):
            try:
                found = {dt: ctypes.cast(getattr(lib, f"scipy_cblas_{p}gemm{suffix}"), ctypes.c_void_p).value
                         for dt, p in (("float32", "s"), ("float64", "d"))}
            except AttributeError:
                continue
            return os.path.basename(path), bits, {dt: int(addr) for dt, addr in found.items() if addr}
    return "", 0, {}


def _load() -> None:
    global LIBRARY, INT_BITS, AVAILABLE
    name, bits, addresses = _find()
    if len(addresses) != 2:
        return
    for dt, addr in addresses.items():
        llvm.add_symbol(_NAMES[dt], addr)
    LIBRARY, INT_BITS, AVAILABLE = name, bits, True


_load()


def _gemm_overwrite(typingctx: Any, trans_a: Any, trans_b: Any, m: Any, n: Any, k: Any, a: Any, lda: Any, b: Any,
                    ldb: Any, c: Any, ldc: Any) -> Any:
    return _gemm(0.0, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc)


def _gemm_accumulate(typingctx: Any, trans_a: Any, trans_b: Any, m: Any, n: Any, k: Any, a: Any, lda: Any, b: Any,
                     ldb: Any, c: Any, ldc: Any) -> Any:
    return _gemm(1.0, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc)


def _gemm(beta: float, trans_a: Any, trans_b: Any, m: Any, n: Any, k: Any, a: Any, lda: Any, b: Any, ldb: Any,
          c: Any, ldc: Any) -> Any:
    """``C[:m, :n] = op(A) @ op(B) + beta * C`` (row-major, ``op`` a transpose where ``trans_*`` is true),
    inside Numba.

    ``a``, ``b``, ``c``: C-contiguous arrays of one float dtype whose data start the matrices;
    ``lda``/``ldb``/``ldc`` their row strides in elements.  Only where :data:`AVAILABLE`.
    """
    if not (isinstance(a, types.Array) and isinstance(b, types.Array) and isinstance(c, types.Array)):
        return None
    dtype = a.dtype
    if dtype not in (types.float32, types.float64) or b.dtype != dtype or c.dtype != dtype:
        return None
    i64 = types.int64
    sig = types.void(types.boolean, types.boolean, i64, i64, i64, a, i64, b, i64, c, i64)
    name = _NAMES["float32" if dtype == types.float32 else "float64"]

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ta, tb, mm, nn, kk, av, la, bv, lb, cv, lc = args
        i32, ptr = ir.IntType(32), ir.IntType(8).as_pointer()
        int_t = ir.IntType(64)
        real = ir.FloatType() if dtype == types.float32 else ir.DoubleType()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, int_t, int_t, int_t, real, ptr, int_t, ptr, int_t,
                                               real, ptr, int_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)

        def data(value: Any, aty: Any) -> Any:
            return builder.bitcast(context.make_array(aty)(context, builder, value).data, ptr)

        def flag(v: Any) -> Any:
            return builder.select(v, ir.Constant(i32, TRANS), ir.Constant(i32, NO_TRANS))

        a_ty, b_ty, c_ty = signature.args[5], signature.args[7], signature.args[9]
        builder.call(fn, [ir.Constant(i32, ROW_MAJOR), flag(ta), flag(tb), mm, nn, kk,
                          ir.Constant(real, 1.0), data(av, a_ty), la, data(bv, b_ty), lb,
                          ir.Constant(real, beta), data(cv, c_ty), lc])
        return context.get_dummy_value()

    return sig, codegen


#: the GEMM intrinsics (typed ``Any``: Numba passes the typing context itself): ``gemm`` writes ``C``,
#: ``gemm_add`` adds the product to it
gemm: Any = intrinsic(_gemm_overwrite)
gemm_add: Any = intrinsic(_gemm_accumulate)


@jit
def _matmul_into(a, b, c):  # pragma: no cover - compiled
    gemm(False, False, a.shape[0], b.shape[1], a.shape[1], a, a.shape[1], b, b.shape[1], c, c.shape[1])


def matmul_into(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """``c[...] = a @ b`` through :func:`gemm` (C-contiguous 2-D arrays of one float dtype; a check of the
    binding, not a fast path)."""
    if not AVAILABLE:
        raise RuntimeError("no bundled OpenBLAS was found next to NumPy: blas.gemm is unavailable")
    if not all(arr.flags.c_contiguous and arr.ndim == 2 for arr in (a, b, c)):
        raise ValueError("matmul_into takes C-contiguous 2-D arrays")
    if a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"matmul_into: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
    _matmul_into(a, b, c)
