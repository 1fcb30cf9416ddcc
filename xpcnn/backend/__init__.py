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

Only this package (and the host-side data code) imports NumPy directly: :mod:`.switch` (specs,
resolution, the switch, the current device), :mod:`.transfer` (asarray, to_numpy, DLPack) and
:mod:`.creation` (full, zeros_like on the right device); the host RNG lives here.  The
layers and the functional ops take their namespace from their input arrays.

Devices: a library with a *current device* (CuPy; array-api-compat's CuPy creation
functions ignore ``device=``) must have the chosen device current whenever arrays
are created or kernels run.  :func:`device_scope` makes it so; :func:`using`,
the creation helpers (:func:`full`, :func:`zeros_like`), the transfers and the
training loop enter it.  Code that calls layers directly on ``cupy:1`` arrays runs
inside ``with xpcnn.backend.using("cupy:1"):`` (or ``device_scope(x)``).
"""

from __future__ import annotations

import numpy as np

from .creation import full, zeros_like
from .switch import (
    CUBLAS_DEFAULT_MATH,
    CUBLAS_TF32_TENSOR_OP_MATH,
    DEFAULT_SPEC,
    ENV_VAR,
    KNOWN_BACKENDS,
    STRICT_API_VERSION,
    STRICT_DEVICES,
    Backend,
    BackendError,
    _env_spec,
    _explicit,
    available_backends,
    backend_name,
    device_scope,
    dtype,
    dtype_name,
    get_backend,
    parse_spec,
    resolve,
    set_backend,
    set_cupy_tf32,
    tf32_requested,
    using,
)
from .transfer import asarray, to_device_like, to_numpy

__all__ = [
    "Backend",
    "BackendError",
    "CUBLAS_DEFAULT_MATH",
    "CUBLAS_TF32_TENSOR_OP_MATH",
    "DEFAULT_SPEC",
    "ENV_VAR",
    "KNOWN_BACKENDS",
    "STRICT_API_VERSION",
    "STRICT_DEVICES",
    "asarray",
    "available_backends",
    "backend_name",
    "device_scope",
    "dtype",
    "dtype_name",
    "full",
    "get_backend",
    "host_rng",
    "parse_spec",
    "resolve",
    "seed",
    "seed_stream",
    "set_backend",
    "set_cupy_tf32",
    "tf32_requested",
    "to_device_like",
    "to_numpy",
    "using",
    "zeros_like",
]
_PRIVATE_FOR_TESTS = (_env_spec, _explicit)  # the switch's state, reset by the test suite


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
