"""Device lanes without a GPU: array-api-strict's ``device1``, and a current-device lane like CuPy's.

* ``strict:device1`` -- ``XPCNN_BACKEND=array_api_strict:device1``: arrays on array-api-strict's
  simulated device refuse ``numpy.asarray`` and cannot be combined with CPU arrays, so a
  host array sneaking into a step, or an array created on the CPU, raises.
* ``current-device`` -- the same device, but array-api-strict's creation functions are patched
  to behave like array-api-compat's CuPy ones: they ignore ``device=`` and create on the
  *current* device, which only entering the device (``with device: ...``, like
  ``with cupy.cuda.Device(1):``) changes.  Code that creates an array outside
  :func:`xpcnn.backend.device_scope` gets a CPU array, and the first op mixing it with a
  ``device1`` array raises: the ``cupy:N`` class of bug, caught on the CPU.

:func:`activate` sets the lane with ``set_backend`` only (like ``XPCNN_BACKEND=cupy:1``): it does
*not* enter the device, so the code under test has to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from xpcnn import backend as B

strict = pytest.importorskip("array_api_strict", reason="the device lanes need array-api-strict")
from array_api_strict._array_object import Array as StrictArray  # noqa: E402

LANE_NAMES = ("strict:device1", "current-device")

_CREATORS = ("arange", "empty", "eye", "full", "linspace", "ones", "zeros")
_LIKE = ("empty_like", "full_like", "ones_like", "zeros_like")


class CurrentDevice(strict.Device):
    """An array-api-strict device that is also a context manager making itself current (like ``cupy.cuda.Device``)."""

    __slots__ = ()
    _stack: list[Any] = []

    def __enter__(self) -> CurrentDevice:
        CurrentDevice._stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        CurrentDevice._stack.pop()


def current() -> Any:
    """The current device of the patched namespace: the innermost entered one, else the CPU."""
    return CurrentDevice._stack[-1] if CurrentDevice._stack else strict.Device()


def _ignore_device(fn: Any) -> Any:
    def create(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        return fn(*args, device=current(), **kwargs)  # device= ignored, as array-api-compat's CuPy does
    return create


def _asarray(fn: Any) -> Any:
    def asarray(obj: Any, /, *, device: Any = None, **kwargs: Any) -> Any:
        if device is None and not isinstance(obj, StrictArray):
            device = current()  # compat's CuPy asarray runs under cupy.cuda.Device(None): the current GPU
        return fn(obj, device=device, **kwargs)
    return asarray


def patch_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make array-api-strict's creation functions ignore ``device=`` (until ``monkeypatch`` undoes it)."""
    for name in (*_CREATORS, *_LIKE):
        monkeypatch.setattr(strict, name, _ignore_device(getattr(strict, name)))
    monkeypatch.setattr(strict, "asarray", _asarray(strict.asarray))


def lane_backend(lane: str, monkeypatch: pytest.MonkeyPatch) -> B.Backend:
    """The :class:`~xpcnn.backend.Backend` of ``lane`` (patching the namespace for ``current-device``)."""
    if lane == "strict:device1":
        return B.resolve("array_api_strict:device1")
    if lane == "current-device":
        B.resolve("array_api_strict")  # pins the API version
        patch_current_device(monkeypatch)
        return B.Backend("array_api_strict", strict, CurrentDevice("device1"), "array_api_strict:device1+current")
    raise ValueError(f"unknown device lane {lane!r}; expected one of {LANE_NAMES}")


@contextlib.contextmanager
def activate(be: B.Backend) -> Iterator[B.Backend]:
    """``set_backend(be)`` for the block, without entering the device (as the env var would)."""
    token = B._explicit.set(be)
    try:
        yield be
    finally:
        B._explicit.reset(token)


def on_lane(x: Any, be: B.Backend) -> bool:
    """``x`` is an array of ``be``'s library on ``be``'s device."""
    return isinstance(x, StrictArray) and x.device == be.device
