"""Moving arrays between backends and devices: ``asarray``, ``to_numpy``, ``to_device_like`` (DLPack where possible)."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .switch import Backend, _is_device_array, backend_name, device_scope, dtype_name, get_backend, resolve
from .switch import dtype as _xp_dtype


def asarray(x: Any, dtype: Any = None, backend: str | Backend | None = None, *,
            copy: bool | None = True) -> Any:
    """``x`` (any array, NumPy-convertible data) on the current (or the given) backend and device.

    ``dtype`` may be a name (``"float32"``), a NumPy dtype or a backend dtype; ``None`` keeps ``x``'s dtype.
    ``copy`` follows the Array API:

    * ``True`` (the default): always a fresh array; the result never aliases ``x``;
    * ``None``: share ``x``'s memory when the backend can see it without a copy, through DLPack (NumPy <->
      torch on the CPU, CuPy <-> torch on the same GPU) or because ``x`` already is such an array; copy
      otherwise (another device, another dtype, a read-only NumPy array, a Python list);
    * ``False``: share or fail: ValueError saying why a copy would be needed.

    >>> import numpy as np
    >>> host = np.arange(3.0)
    >>> shared = asarray(host, backend="numpy", copy=None)      # no copy: the same buffer
    >>> np.shares_memory(shared, host), np.shares_memory(asarray(host, backend="numpy"), host)
    (True, False)
    >>> asarray(host, dtype="float32", backend="numpy", copy=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: asarray(copy=False): a numpy float64 array on cpu cannot become float32 ... (the dtype differs)

    Between NumPy and torch the same holds in both directions (the example in :mod:`xpcnn.interop.pytorch`).
    """
    be = get_backend() if backend is None else (backend if isinstance(backend, Backend) else resolve(backend))
    if copy is not True:
        shared, reason = _share(x, dtype, be)
        if shared is not None:
            return shared
        if copy is False:
            target = dtype_name(dtype) if dtype is not None else _dtype_text(x)
            raise ValueError(f"asarray(copy=False): a {backend_name(x)} {_dtype_text(x)} array on {_device_text(x)} "
                             f"cannot become {target} on backend {be.spec} without a copy ({reason})")
    if _is_device_array(x):
        return _transfer(x, dtype, be)
    host = np.asarray(x)
    if dtype is not None:
        host = host.astype(np.dtype(dtype_name(dtype)), copy=False)
    if be.name == "numpy":
        return np.array(host, copy=True)
    if be.name == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(host).copy()).to(be.device)
    if be.name == "cupy":
        import cupy

        with be.device:
            return cupy.asarray(host)
    return be.xp.asarray(host, device=be.device, copy=True)  # never alias the caller's host array


def _dtype_text(x: Any) -> str:
    dt = getattr(x, "dtype", None)
    return "?" if dt is None else dtype_name(dt)


def _device_text(x: Any) -> str:
    try:
        return str(array_api_compat.device(x))
    except (TypeError, AttributeError):
        return "cpu"


def _share(x: Any, dtype: Any, be: Backend) -> tuple[Any, str]:
    """``(x seen by be without a copy, "")`` or ``(None, why a copy is needed)``."""
    if not hasattr(x, "__dlpack__"):
        return None, f"{type(x).__name__} is not an array that supports DLPack"
    if dtype is not None and dtype_name(dtype) != _dtype_text(x):
        return None, "the dtype differs"
    if isinstance(x, np.ndarray) and not x.flags.writeable and be.name != "numpy":
        return None, "a read-only NumPy array cannot be exported through DLPack"
    source = backend_name(x)
    if array_api_compat.is_torch_array(x):
        x = x.detach()  # a tensor that records gradients refuses DLPack export; detach() shares its memory
    try:
        if be.name == source:
            out = x
        elif be.name == "numpy":
            out = np.from_dlpack(x)
        elif be.name == "torch":
            import torch

            out = torch.from_dlpack(x)
        elif be.name == "cupy":
            import cupy

            with be.device:
                out = cupy.from_dlpack(x)
        else:
            out = be.xp.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, ValueError, AttributeError) as exc:
        return None, f"DLPack refused: {exc}"
    if str(array_api_compat.device(out)) != str(be.device) and not (be.name == "numpy" and _device_text(out) == "cpu"):
        return None, f"the array is on {_device_text(x)}, the backend on {be.device}"
    return out, ""


def to_device_like(host: Any, like: Any) -> Any:
    """Copy a host array onto ``like``'s backend and device, in ``like``'s dtype.

    ``host`` may also be an array of any backend and device: it is copied without a
    detour through ``numpy.asarray`` where both are of the same library.
    """
    if _is_device_array(host):
        return _transfer_like(host, like)
    xp = array_api_compat.array_namespace(like)
    if array_api_compat.is_torch_array(like):
        import torch

        return torch.from_numpy(np.ascontiguousarray(host)).to(device=like.device, dtype=like.dtype, copy=True)
    # copy=True: the result must not alias ``host`` (e.g. another model's weights seen through to_numpy)
    return xp.asarray(np.asarray(host), dtype=like.dtype, device=array_api_compat.device(like), copy=True)


def to_numpy(x: Any, *, copy: bool | None = None) -> np.ndarray:
    """``x`` from any backend as a host NumPy array.

    ``copy=None`` (the default) shares memory where the array already lives on the host: a NumPy array
    is returned as it is, a CPU torch tensor (gradient tracking dropped) or any other host array with
    DLPack is viewed without a copy; GPU arrays are copied to the host.  ``copy=True`` always returns a
    fresh array; ``copy=False`` raises ValueError where a copy cannot be avoided (a GPU array).

    >>> import numpy as np
    >>> a = np.ones(2)
    >>> to_numpy(a) is a, np.shares_memory(to_numpy(a, copy=True), a)
    (True, False)
    """
    if isinstance(x, np.ndarray):
        out, shared = x, True
    elif array_api_compat.is_cupy_array(x):
        if copy is False:
            raise ValueError(f"to_numpy(copy=False): a cupy array on {_device_text(x)} cannot be seen from the "
                             "host without a copy")
        return x.get()
    elif array_api_compat.is_torch_array(x):
        t = x.detach()
        if t.device.type != "cpu":
            if copy is False:
                raise ValueError(f"to_numpy(copy=False): a torch tensor on {t.device} cannot be seen from the "
                                 "host without a copy")
            return t.cpu().numpy()
        t = t.resolve_conj().resolve_neg()
        out, shared = t.numpy(), True
    elif np.isscalar(x):
        out, shared = np.asarray(x), False
    else:
        try:
            out, shared = np.from_dlpack(x), True
        except (TypeError, RuntimeError, BufferError, AttributeError, ValueError):
            if copy is False:
                raise ValueError(f"to_numpy(copy=False): a {backend_name(x)} array cannot be seen from the host "
                                 "through DLPack") from None
            out, shared = np.asarray(x), False
    if copy and shared:
        return np.array(out, copy=True)
    return out


def _transfer(x: Any, dtype: Any, be: Backend) -> Any:
    """A copy of the backend array ``x`` on ``be``'s device, in ``dtype`` (None keeps ``x``'s).

    Within one library this is a device-to-device copy (``to_device``), never ``numpy.asarray``
    (which raises on CuPy arrays); across libraries it goes through the host explicitly.
    """
    if array_api_compat.array_namespace(x) is not be.xp:
        host = to_numpy(x)
        return asarray(host, dtype=host.dtype if dtype is None else dtype, backend=be)
    with device_scope(be):
        y = array_api_compat.to_device(x, be.device)
        if dtype is not None:
            y = be.xp.astype(y, _xp_dtype(dtype, be.xp))
        return be.xp.asarray(y, copy=True) if y is x else y  # never alias the caller's array


def _transfer_like(x: Any, like: Any) -> Any:
    """``x`` (a backend array) copied onto ``like``'s library, device and dtype."""
    xp = array_api_compat.array_namespace(like)
    if array_api_compat.array_namespace(x) is not xp:
        return to_device_like(to_numpy(x), like)
    with device_scope(like):
        y = array_api_compat.to_device(x, array_api_compat.device(like))
        y = xp.astype(y, like.dtype)
        return xp.asarray(y, copy=True) if y is x else y
