"""Creating arrays on the backend's device, with that device current while they are made (CuPy).

A library with a *current device* (CuPy; array-api-compat's CuPy creation functions ignore ``device=``)
must have the chosen device current whenever arrays are created or kernels run: :func:`device_scope`
makes it so, and :func:`full` / :func:`zeros_like` create inside it.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .switch import Backend, device_scope, get_backend, resolve
from .switch import dtype as _xp_dtype


def full(shape: tuple[int, ...], value: float, dtype: Any, backend: str | Backend | None = None) -> Any:
    """``shape`` filled with ``value`` in ``dtype``, on the backend's device (made current while creating)."""
    be = get_backend() if backend is None else (backend if isinstance(backend, Backend) else resolve(backend))
    with device_scope(be):
        return be.xp.full(shape, value, dtype=_xp_dtype(dtype, be.xp), device=be.device)


def zeros_like(x: Any) -> Any:
    """Zeros with ``x``'s shape, dtype and device (the device made current while creating: CuPy's
    ``zeros_like`` allocates on the *current* GPU, not on ``x``'s)."""
    xp = array_api_compat.array_namespace(x)
    with device_scope(x):
        return xp.zeros(tuple(x.shape), dtype=x.dtype, device=array_api_compat.device(x))
