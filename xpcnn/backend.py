"""The backend switch: which array library (and device) new arrays are created on.

Resolution order, highest first:

1. an explicit call: :func:`set_backend` or the :func:`using` context manager;
2. the environment variable ``XPCNN_BACKEND`` (read once, on first use);
3. the default, ``numpy``.

A backend spec is ``NAME`` or ``NAME:DEVICE``: ``numpy``, ``cupy``, ``cupy:1``,
``torch``, ``torch:cuda:0``, ``array_api_strict``, ``array_api_strict:device1`` (array-api-strict's
simulated non-CPU device: a test lane for device placement without a GPU).  Nothing here writes files or
mutates ``os.environ``; a backend that cannot be loaded raises
:class:`BackendError` with the reason and an install hint (never a silent
fallback to NumPy).

Only this module (and the host-side data code) imports NumPy directly.  The
layers and the functional ops take their namespace from their input arrays.

Devices: a library with a *current device* (CuPy; array-api-compat's CuPy creation
functions ignore ``device=``) must have the chosen device current whenever arrays
are created or kernels run.  :func:`device_scope` makes it so; :func:`using`,
the creation helpers (:func:`full`, :func:`zeros_like`), the transfers and the
training loop enter it.  Code that calls layers directly on ``cupy:1`` arrays runs
inside ``with xpcnn.backend.using("cupy:1"):`` (or ``device_scope(x)``).
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

__all__ = [
    "Backend",
    "BackendError",
    "dtype_name",
    "ENV_VAR",
    "asarray",
    "device_scope",
    "full",
    "available_backends",
    "get_backend",
    "host_rng",
    "parse_spec",
    "resolve",
    "seed",
    "seed_stream",
    "set_backend",
    "set_cupy_tf32",
    "tf32_requested",
    "to_numpy",
    "using",
    "zeros_like",
]

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


def dtype_name(dtype: Any) -> str:
    """The portable name (``"float32"``) of a dtype from any backend, a NumPy dtype or a name."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]  # torch.float32 -> float32; strict dtypes print as their name


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


# ----------------------------------------------------------------------------- host RNG

_default_rng = np.random.default_rng()


def seed(value: int | np.random.Generator | None) -> None:
    """Reseed (or replace) the global host generator used when a layer or loader gets no ``rng``."""
    global _default_rng
    _default_rng = value if isinstance(value, np.random.Generator) else np.random.default_rng(value)


def seed_stream(seed: int, purpose: str) -> np.random.Generator:
    """An independent host generator for one ``purpose`` of a run seeded with ``seed``.

    ``seed_stream(0, "shuffle")`` and ``seed_stream(0, "init")`` never share random numbers,
    unlike two ``default_rng(0)``; both are the same on every machine and backend.
    """
    tag = int.from_bytes(purpose.encode("utf-8"), "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), tag]))


def host_rng(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """A host ``numpy.random.Generator``: the one given, a new one from a seed, or the global one.

    Randomness (initialisation, dropout masks, shuffling) is drawn on the host
    and then moved to the backend, so the same seed gives the same numbers on
    every backend.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return _default_rng
    return np.random.default_rng(rng)


# ----------------------------------------------------------------------------- devices

_xp_dtype = dtype  # the module function, for code whose parameter is named ``dtype``


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


def _is_device_array(x: Any) -> bool:
    """An array of a non-NumPy backend (CuPy, PyTorch, array-api-strict...), on any device."""
    return not isinstance(x, (np.ndarray, np.generic)) and array_api_compat.is_array_api_obj(x)


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


