"""Backend lanes for the whole suite.

Every test that takes the ``backend`` fixture runs once per lane: ``numpy``,
``array_api_strict`` (API version pinned in :mod:`xpcnn.backend`), ``torch``
on the CPU when PyTorch is installed, and ``cupy`` only where a CUDA device is
present (marker ``gpu``).  Inputs are generated as NumPy on the host, moved with
``xpcnn.backend.asarray`` and results compared on the host with ``to_numpy``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from xpcnn import backend as B


def cuda_present() -> bool:
    """CuPy is installed and sees a CUDA device (what the ``cupy`` lane needs)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        B.resolve("cupy")
    except B.BackendError:
        return False
    return True


def _lane(name: str, present: bool, *marks):
    reason = f"{name} is not installed or has no device on this machine"
    return pytest.param(name, id=name, marks=[*marks, pytest.mark.skipif(not present, reason=reason)])


LANES = [
    _lane("numpy", True),
    _lane("array_api_strict", importlib.util.find_spec("array_api_strict") is not None),
    _lane("torch", importlib.util.find_spec("torch") is not None),
    _lane("cupy", cuda_present(), pytest.mark.gpu),
]


@pytest.fixture(params=LANES)
def backend(request):
    """The current lane's :class:`xpcnn.backend.Backend`, active for the duration of the test."""
    with B.using(request.param) as be:
        yield be


@pytest.fixture
def rng():
    """A fresh, seeded host generator for test inputs."""
    return np.random.default_rng(12345)
