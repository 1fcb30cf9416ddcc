"""Process-level speed settings for the command line and the benchmarks (never applied on import).

NumPy's temporaries in a training step are large (megabytes) and short-lived.
glibc serves such blocks with ``mmap`` and returns them on ``free``, so every
step pays page faults to map fresh zeroed pages again.  :func:`tune_malloc`
keeps freed memory in the heap instead, the in-process equivalent of
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_``.
It changes the whole process, so a library user opts in explicitly; ``xpcnn
train`` and the benchmark scripts call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

_applied: dict[str, int] | None = None


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                top_pad: int = 64 << 20) -> dict[str, int] | None:
    """Ask glibc to serve blocks below ``mmap_threshold`` from the heap and keep freed memory.

    Returns the settings applied, or None where this is not glibc (nothing changes there).
    32 MiB is the largest mmap threshold glibc accepts on 64-bit systems.
    """
    global _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold, "top_pad": top_pad}
    for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                         (_M_TOP_PAD, top_pad)):
        if mallopt(param, int(value)) != 1:
            return None
    _applied = settings
    return settings
