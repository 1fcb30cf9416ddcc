"""Numba import and the ``jit`` decorator every kernel of this set uses (``nogil``, cached when possible).

Importing this module raises ImportError when Numba is missing or fails to import; the registry then
announces the fallback to the reference kernels.  ``cache=True`` needs a writable cache directory
(the package's ``__pycache__``, else Numba's user-wide cache); where there is none, Numba would raise
at decoration time, so it is probed here once: without a cache the kernels are compiled in every
process (about 2 s each on first use), and a warning says so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

try:
    import numba
except Exception as exc:  # missing, or broken (e.g. built against another NumPy)
    raise ImportError(f"numba is not usable: {type(exc).__name__}: {exc}") from exc

__all__ = ["CACHE", "CACHE_PROBLEM", "jit", "jit_sum", "numba"]

#: opt out of Numba's on-disk cache with XPCNN_NUMBA_CACHE=0 (read at import)
_WANT_CACHE = os.environ.get("XPCNN_NUMBA_CACHE", "1").strip() != "0"


def _probe() -> int:  # pragma: no cover - only decorated, never called
    return 0


def _cache_usable() -> tuple[bool, str]:
    """Whether ``njit(cache=True)`` works for functions in this directory, and why not."""
    if not _WANT_CACHE:
        return False, "XPCNN_NUMBA_CACHE=0"
    try:
        numba.njit(cache=True)(_probe)  # finds a cache locator now: raises if nothing is writable
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


CACHE, CACHE_PROBLEM = _cache_usable()
if not CACHE and _WANT_CACHE:
    warnings.warn(f"xpcnn: Numba has no writable cache directory ({CACHE_PROBLEM}); the CPU kernels are compiled "
                  "in every process (set NUMBA_CACHE_DIR to a writable directory to keep them)", RuntimeWarning,
                  stacklevel=2)


def jit(fn: Callable[..., Any]) -> Any:
    """``numba.njit`` with the GIL released, no bounds checks, IEEE arithmetic and the on-disk cache if usable."""
    return numba.njit(nogil=True, cache=CACHE, fastmath=False, boundscheck=False, error_model="numpy")(fn)


def jit_sum(fn: Callable[..., Any]) -> Any:
    """:func:`jit` allowing LLVM to reassociate additions, so long reductions vectorise (partial sums per lane).

    The summation order then follows the compiled code, not the source: still fixed for a given machine
    and the same whatever thread runs it, so results stay independent of the thread count.
    """
    return numba.njit(nogil=True, cache=CACHE, fastmath={"reassoc"}, boundscheck=False, error_model="numpy")(fn)
