"""Weight initialisation on the host RNG (float64 NumPy), moved to the backend by the layers.

Drawing on the host means the same seed gives bit-identical initial weights on
every backend.  ``fan_in``/``fan_out`` for a conv kernel ``(F, C, KH, KW)`` are
``C*KH*KW`` and ``F*KH*KW``; for a dense ``(in, out)`` matrix ``in`` and ``out``.

* He (Kaiming) normal: ``std = sqrt(2 / fan_in)`` (He et al. 2015, for ReLU nets)
* He uniform: ``U(-a, a)``, ``a = sqrt(6 / fan_in)``
* Xavier/Glorot normal: ``std = sqrt(2 / (fan_in + fan_out))`` (Glorot & Bengio 2010)
* Xavier/Glorot uniform: ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``
* ``normal``: ``std = 0.01`` (the book's fixed-scale default)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["INITIALIZERS", "fans", "initialize"]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a dense ``(in, out)`` or conv ``(F, C, KH, KW)`` weight shape."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    raise ValueError(f"cannot compute fans of a weight with shape {shape}; expected 2-D or 4-D")


def _he_normal(shape, rng):
    fan_in, _ = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def _he_uniform(shape, rng):
    fan_in, _ = fans(shape)
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=shape)


def _xavier_normal(shape, rng):
    fan_in, fan_out = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def _xavier_uniform(shape, rng):
    fan_in, fan_out = fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)


def _normal(shape, rng):
    return rng.normal(0.0, 0.01, size=shape)


INITIALIZERS: dict[str, Callable[[tuple[int, ...], np.random.Generator], np.ndarray]] = {
    "he": _he_normal,
    "he_normal": _he_normal,
    "he_uniform": _he_uniform,
    "xavier": _xavier_normal,
    "xavier_normal": _xavier_normal,
    "xavier_uniform": _xavier_uniform,
    "glorot": _xavier_normal,
    "normal": _normal,
}


def initialize(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Draw a float64 host array of ``shape`` with the named scheme."""
    try:
        init = INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}") from None
    return init(tuple(shape), rng)
