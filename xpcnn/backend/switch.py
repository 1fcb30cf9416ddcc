"""Which array library (and device) new arrays are created on: backend specs, resolution, the switch.

See :mod:`xpcnn.backend` for the resolution order and the spec syntax.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

ENV_VAR = "XPCNN_BACKEND"
DEFAULT_SPEC = "numpy"
KNOWN_BACKENDS = ("numpy", "cupy", "torch", "array_api_strict")
#: The Array API version array_api_strict is pinned to (scalar arguments to
#: ``maximum``/``where`` need 2024.12).
STRICT_API_VERSION = "2024.12"
#: array-api-strict's devices other than the CPU: arrays there refuse ``numpy.asarray`` and
#: cannot be mixed with CPU arrays, so they stand in for a GPU in tests.
STRICT_DEVICES = ("CPU_DEVICE", "device1", "device2")

_INSTALL_HINTS = {
    "cupy": "install CuPy for your CUDA version: pip install 'xpcnn[cuda12]' or 'xpcnn[cuda13]'",
    "torch": "install PyTorch: pip install torch",
    "array_api_strict": "install it: pip install array-api-strict (or pip install 'xpcnn[test]')",
    "numpy": "install NumPy: pip install numpy",
}


class BackendError(RuntimeError):
    """A backend was named that does not exist or cannot be used here."""


@dataclass(frozen=True, eq=False)
class Backend:
    """A resolved backend: its name, its Array API namespace and its device.

    ``xp`` is the array-api-compat namespace (``array_api_compat.numpy`` for
    NumPy), so ``xp.asarray(..., device=backend.device)`` works everywhere (but see
    :meth:`scope` for CuPy).  Equality and hashing go by ``(name, spec)``: a
    ``cupy.cuda.Device`` is not hashable, a Backend is (a dict key, a cache key).
    """

    name: str
    xp: Any
    device: Any
    spec: str

    def __str__(self) -> str:
        return self.spec

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (self.name, self.spec) == (other.name, other.spec)

    def __hash__(self) -> int:
        return hash((self.name, self.spec))

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which this backend's device is current (see :func:`device_scope`)."""
        return device_scope(self)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"cupy:1"`` into ``("cupy", "1")`` and ``"numpy"`` into ``("numpy", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise BackendError(f"backend spec must be a non-empty string like 'numpy' or 'cupy:0', got {spec!r}")
    name, _, device_text = spec.strip().partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in KNOWN_BACKENDS:
        raise BackendError(f"unknown backend {name!r} (from {spec!r}); expected one of {', '.join(KNOWN_BACKENDS)}")
    device = device_text.strip() or None
    if name == "numpy" and device not in (None, "cpu"):
        raise BackendError(f"backend {name!r} only has a CPU device, got device {device!r}")
    if name == "array_api_strict" and device not in (None, "cpu", *STRICT_DEVICES):
        raise BackendError(f"backend {name!r} only has a CPU device and the simulated devices "
                           f"{', '.join(STRICT_DEVICES)}, got device {device!r}")
    if name == "cupy" and device is not None and not (device.isdigit() or device == "cuda"):
        raise BackendError(f"backend 'cupy' takes an integer device index like 'cupy:1', got device {device!r}")
    return name, device


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendError(f"backend {name!r} is not available: {exc}. To fix: {_INSTALL_HINTS[name]}") from exc


@functools.cache
def resolve(spec: str) -> Backend:
    """The :class:`Backend` for a spec such as ``"numpy"`` or ``"cupy:1"`` (cached); BackendError if unusable."""
    name, device = parse_spec(spec)
    if name == "numpy":
        return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu", "numpy")
    if name == "array_api_strict":
        strict = _import("array_api_strict")
        strict.set_array_api_strict_flags(api_version=STRICT_API_VERSION)
        if device in (None, "cpu", "CPU_DEVICE"):
            return Backend(name, strict, strict.asarray(0).device, name)
        return Backend(name, strict, strict.Device(device), f"{name}:{device}")
    if name == "torch":
        torch = _import("torch")
        try:
            dev = torch.device(device or "cpu")
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise BackendError(f"torch device {device!r} is not usable here: {exc}") from exc
        return Backend(name, array_api_compat.array_namespace(torch.empty(0)), dev, f"torch:{dev}")
    # cupy
    cupy = _import("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when the driver is missing
        raise BackendError(f"backend 'cupy' needs a CUDA GPU, but CUDA reports: {exc}. "
                           f"{_INSTALL_HINTS['cupy']}") from exc
    index = int(device) if device not in (None, "cuda") else 0
    if not 0 <= index < count:
        raise BackendError(f"CUDA device {index} requested, but {count} device(s) are visible")
    dev = cupy.cuda.Device(index)
    with dev:
        xp = array_api_compat.array_namespace(cupy.empty(0))
        if tf32_requested():
            set_cupy_tf32(True)
    return Backend("cupy", xp, dev, f"cupy:{index}")


_explicit: contextvars.ContextVar[str | Backend | None] = contextvars.ContextVar("xpcnn_backend", default=None)


@functools.lru_cache(maxsize=1)
def _env_spec() -> str:
    return os.environ.get(ENV_VAR, "").strip() or DEFAULT_SPEC


def get_backend() -> Backend:
    """The backend new arrays go to: explicit setting > ``$XPCNN_BACKEND`` > ``numpy``."""
    spec = _explicit.get()
    if isinstance(spec, Backend):
        return spec  # a Backend object given to set_backend/using (already resolved)
    if spec is None:
        spec = _env_spec()
    try:
        return resolve(spec)
    except BackendError as exc:
        source = "set_backend/using" if _explicit.get() is not None else f"${ENV_VAR}"
        raise BackendError(f"{exc} (backend chosen by {source})") from exc


def set_backend(spec: str | Backend | None) -> Backend:
    """Choose the backend for this thread/context; ``None`` returns to ``$XPCNN_BACKEND``.

    A :class:`Backend` object is kept as given (so one built by hand, with its own device
    object, stays in use).  Prefer :func:`using`, which also makes the device current.
    """
    if spec is None:
        _explicit.set(None)
        return get_backend()
    backend = spec if isinstance(spec, Backend) else resolve(spec)  # validate before switching
    _explicit.set(spec)
    return backend


@contextlib.contextmanager
def using(spec: str | Backend) -> Iterator[Backend]:
    """Temporarily switch the backend: ``with xpcnn.backend.using("torch"): ...``.

    Inside, the backend's device is current (:func:`device_scope`), so ``using("cupy:1")``
    runs CuPy's creation functions and kernels on GPU 1.
    """
    backend = spec if isinstance(spec, Backend) else resolve(spec)
    token = _explicit.set(spec)
    try:
        with device_scope(backend):
            yield backend
    finally:
        _explicit.reset(token)


def available_backends() -> list[str]:
    """Names of the backends that can be loaded on this machine (CuPy only with a GPU)."""
    names = []
    for name in KNOWN_BACKENDS:
        try:
            resolve(name)
        except BackendError:
            continue
        names.append(name)
    return names


def dtype(name: Any, xp: Any) -> Any:
    """The ``xp`` dtype for ``name``: a string (``"float32"``), a NumPy dtype, or already an ``xp`` dtype."""
    if not isinstance(name, str):
        try:
            name = np.dtype(name).name
        except TypeError:
            return name  # already a backend dtype (torch.float32, ...)
    try:
        return getattr(xp, name)
    except AttributeError:
        raise TypeError(f"dtype {name!r} does not exist in namespace {getattr(xp, '__name__', xp)}") from None


def dtype_name(dtype: Any) -> str:
    """The portable name (``"float32"``) of a dtype from any backend, a NumPy dtype or a name."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]  # torch.float32 -> float32; strict dtypes print as their name


def backend_name(x: Any) -> str:
    """A short name for the library an array belongs to (for error messages)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    module = type(x).__module__.split(".")[0]
    return module


# ----------------------------------------------------------------------------- TF32 on CuPy

#: cuBLAS math modes (cublasMath_t): the default (float32 compute) and TF32 tensor cores.
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3


def tf32_requested() -> bool:
    """``CUPY_TF32`` is set to a positive integer (CuPy's own switch, read here the same way)."""
    try:
        return int(os.environ.get("CUPY_TF32", "0") or 0) > 0
    except ValueError:
        return False


def set_cupy_tf32(enabled: bool, cublas: Any = None, handle: int | None = None) -> int:
    """Put the current GPU's cuBLAS handle (this thread's) in TF32 math mode, or back to the default.

    ``CUPY_TF32=1`` alone makes CuPy pass the TF32 compute type only to its 2-D GEMMs
    (``cupy.dot``/2-D ``matmul``: the dense layers).  Batched ``matmul`` -- the convolutions'
    ``(F, K) @ (N, K, L)`` -- calls ``sgemmBatched``/``gemmStridedBatchedEx`` with a plain float32
    compute type, which follows the handle's math mode instead; :func:`resolve` calls this for
    ``cupy`` specs when ``CUPY_TF32`` is set, so every GEMM uses TF32.  Returns the mode set.
    ``cublas``/``handle`` default to CuPy's (injectable for tests).
    """
    if cublas is None:
        cublas = importlib.import_module("cupy_backends.cuda.libs.cublas")
    if handle is None:
        import cupy

        handle = cupy.cuda.device.get_cublas_handle()
    mode = getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", CUBLAS_TF32_TENSOR_OP_MATH) if enabled else \
        getattr(cublas, "CUBLAS_DEFAULT_MATH", CUBLAS_DEFAULT_MATH)
    cublas.setMathMode(handle, mode)
    return int(mode)


def _is_torch_device(device: Any) -> bool:
    return type(device).__module__.split(".")[0] == "torch"


def device_scope(target: Any = None) -> contextlib.AbstractContextManager[Any]:
    """A context in which ``target``'s device is the current one.

    ``target``: a :class:`Backend`, an array, a device object, or ``None`` (the current
    backend).  For a library with a current device (CuPy: ``cupy.cuda.Device`` is itself
    a context manager that makes its GPU current) the device is entered; elsewhere
    (NumPy, array-api-strict, PyTorch, whose creation functions honour ``device=``)
    this is a no-op context.  Re-entrant; cheap enough to enter once per batch.
    """
    if target is None:
        target = get_backend()
    if isinstance(target, Backend):
        device = target.device
    elif _is_device_array(target) or isinstance(target, np.ndarray):
        device = array_api_compat.device(target)
    else:
        device = target
    if hasattr(device, "__enter__") and hasattr(device, "__exit__") and not _is_torch_device(device):
        return device
    return contextlib.nullcontext()


def _is_device_array(x: Any) -> bool:
    """An array of a non-NumPy backend (CuPy, PyTorch, array-api-strict...), on any device."""
    return not isinstance(x, (np.ndarray, np.generic)) and array_api_compat.is_array_api_obj(x)
