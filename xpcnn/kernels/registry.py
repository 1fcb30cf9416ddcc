"""The op registry: one :class:`Op` per operation, a reference implementation and optional fast ones.

An :class:`Op` holds the portable reference (from :mod:`xpcnn.functional`) and any number of
fast implementations, each registered for an array type (``numpy.ndarray``, ``cupy.ndarray``) with
an eligibility test on the call's arguments.  A call picks, in order:

* mode ``reference``: always the reference;
* mode ``auto`` (the default): the first fast implementation registered for the first argument's
  array type whose set loaded and whose ``eligible(*args)`` is true, else the reference;
* mode ``fast``: like ``auto``, but a kernel set that fails to load for that array type is an error.

Forward functions return ``(y, cache)``; :meth:`Op.forward` wraps the cache with the backward that
belongs to the implementation that ran, so a fast forward always pairs with its own backward and the
caller never looks inside the cache.  Ops without a backward (optimizer updates) use :meth:`Op.__call__`.

The mode comes from ``XPCNN_KERNELS`` (read once) or :func:`using_kernels` (a context variable).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENV_VAR", "MODES", "KernelError", "KernelSet", "Op", "active_sets", "kernel_mode", "register_set",
           "using_kernels"]

ENV_VAR = "XPCNN_KERNELS"
MODES = ("auto", "reference", "fast")


class KernelError(RuntimeError):
    """A kernel mode was misnamed, or ``fast`` was forced where no fast kernel set can load."""


def _parse_mode(value: str, source: str) -> str:
    mode = value.strip().lower()
    if mode not in MODES:
        raise KernelError(f"{source} must be one of {', '.join(MODES)}; got {value!r}")
    return mode


_env_mode: str | None = None
_mode_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("xpcnn_kernels", default=None)


def kernel_mode() -> str:
    """The active mode: :func:`using_kernels` > ``$XPCNN_KERNELS`` (read once) > ``auto``."""
    mode = _mode_override.get()
    if mode is not None:
        return mode
    global _env_mode
    if _env_mode is None:
        _env_mode = _parse_mode(os.environ.get(ENV_VAR, "auto") or "auto", f"${ENV_VAR}")
    return _env_mode


@contextlib.contextmanager
def using_kernels(mode: str) -> Iterator[str]:
    """Force a kernel mode inside a ``with`` block (tests and benchmarks compare sets with it).

    >>> from xpcnn import kernels
    >>> with kernels.using_kernels("reference"):
    ...     kernels.kernel_mode()
    'reference'
    """
    token = _mode_override.set(_parse_mode(mode, "kernel mode"))
    try:
        yield kernel_mode()
    finally:
        _mode_override.reset(token)


@dataclass
class KernelSet:
    """A group of fast implementations for one array type, loaded on first use.

    ``module`` is imported (it registers its ops with :meth:`Op.register`) the first time an op sees an
    array whose type's module starts with ``array_module`` (``"numpy"``, ``"cupy"``).  A set whose import
    fails is announced once with a warning (mode ``auto``) and the reference is used instead.
    """

    name: str
    array_module: str
    module: str
    loaded: bool | None = None  # None: not tried yet
    error: str = ""


_SETS: list[KernelSet] = []


def register_set(name: str, array_module: str, module: str) -> KernelSet:
    """Declare a fast kernel set; nothing is imported until an array of that module is seen."""
    kset = KernelSet(name, array_module, module)
    _SETS.append(kset)
    return kset


def _load_sets_for(array_type: type, mode: str) -> None:
    top = array_type.__module__.split(".")[0]
    for kset in _SETS:
        if kset.array_module != top:
            continue
        if kset.loaded is None:
            try:
                importlib.import_module(kset.module)
                kset.loaded = True
            except Exception as exc:  # an optional dependency missing, a compiler failing, no writable cache
                kset.loaded, kset.error = False, f"{type(exc).__name__}: {exc}"
                if mode == "auto":
                    warnings.warn(f"xpcnn: the {kset.name!r} kernel set could not load ({kset.error}); "
                                  "using the reference kernels", RuntimeWarning, stacklevel=4)
        if kset.loaded is False and mode == "fast":
            raise KernelError(f"XPCNN_KERNELS=fast, but the {kset.name!r} kernel set for {top} arrays "
                              f"could not load: {kset.error}")
    if mode == "fast" and not any(k.array_module == top for k in _SETS):
        raise KernelError(f"XPCNN_KERNELS=fast, but no fast kernel set exists for {top} arrays")


def active_sets() -> dict[str, str]:
    """``{set name: "loaded" | "not loaded yet" | "failed: <reason>"}`` for every declared set."""
    return {k.name: ("not loaded yet" if k.loaded is None else "loaded" if k.loaded else f"failed: {k.error}")
            for k in _SETS}


@dataclass
class _Impl:
    kernel_set: str
    forward: Callable[..., Any]
    backward: Callable[..., Any] | None
    eligible: Callable[..., bool]


@dataclass
class Op:
    """One operation: ``reference`` forward (and backward), plus fast implementations by array type.

    >>> import numpy as np
    >>> double = Op("double", lambda x: (2 * x, None), lambda dout, cache: 2 * dout)
    >>> y, cache = double.forward(np.ones(2))
    >>> double.backward(np.ones(2), cache).tolist()
    [2.0, 2.0]
    """

    name: str
    reference: Callable[..., Any]
    reference_backward: Callable[..., Any] | None = None
    _fast: dict[type, list[_Impl]] = field(default_factory=dict)
    _chosen: dict[tuple[str, type], tuple[_Impl, ...]] = field(default_factory=dict)

    def register(self, array_type: type, kernel_set: str, forward: Callable[..., Any],
                 backward: Callable[..., Any] | None = None,
                 eligible: Callable[..., bool] = lambda *args, **kwargs: True) -> None:
        """Add a fast implementation for arrays of ``array_type`` (tried before the reference)."""
        self._fast.setdefault(array_type, []).append(_Impl(kernel_set, forward, backward, eligible))
        self._chosen.clear()

    def _candidates(self, first: Any) -> tuple[_Impl, ...]:
        # multi-tensor ops (optimizer updates) take lists of arrays: dispatch on the first array's type
        array_type = type(first[0]) if isinstance(first, (list, tuple)) and first else type(first)
        mode = kernel_mode()
        key = (mode, array_type)
        found = self._chosen.get(key)
        if found is None:
            if mode == "reference":
                found = ()
            else:
                _load_sets_for(array_type, mode)
                found = tuple(self._fast.get(array_type, ()))
            self._chosen[key] = found
        return found

    def implementation(self, *args: Any, **kwargs: Any) -> str:
        """The kernel set a call with these arguments would use (``"reference"`` or a fast set's name)."""
        for impl in self._candidates(args[0]):
            if impl.eligible(*args, **kwargs):
                return impl.kernel_set
        return "reference"

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Run the chosen forward; returns ``(y, cache)`` where ``cache`` is opaque to the caller."""
        for impl in self._candidates(args[0]):
            if impl.eligible(*args, **kwargs):
                y, inner = impl.forward(*args, **kwargs)
                return y, (impl.backward, inner)
        y, inner = self.reference(*args, **kwargs)
        return y, (self.reference_backward, inner)

    def backward(self, dout: Any, cache: tuple[Callable[..., Any], Any], *args: Any, **kwargs: Any) -> Any:
        """The backward that pairs with the forward that made ``cache``."""
        backward, inner = cache
        return backward(dout, inner, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A call without a backward pass (optimizer updates, inference-only ops)."""
        for impl in self._candidates(args[0]):
            if impl.eligible(*args, **kwargs):
                return impl.forward(*args, **kwargs)
        return self.reference(*args, **kwargs)
