"""In-place optimizer updates in Numba: the rules of :mod:`xpcnn.functional.updates`, one pass per parameter.

Each kernel reads and writes the parameter and its slots in place (one pass over memory instead of
the reference's five to ten temporaries).  The arithmetic follows the reference's operation order in
the parameter's own dtype (hyper-parameters and bias corrections rounded to it first, as NumPy does
with Python floats), so a float32 step agrees with the reference to a few ulps.  The op returns the
same parameter arrays it was given; the slot dicts keep their arrays (updated in place).

On a model with a flat store (:mod:`xpcnn.flat`) the optimizer hands over one entry per dtype: the
store's whole 1-D parameter and gradient buffers and its flat slot buffers, so each dtype is one
kernel call; the zero gaps between entries stay zero (every rule maps zeros to zeros for ``eps > 0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._jit import jit

__all__ = ["optimizer_update", "update_eligible"]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
SLOTS = {"sgd": (), "momentum": ("momentum_buffer",), "nesterov": ("momentum_buffer",), "adagrad": ("sum",),
         "rmsprop": ("square_avg",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq")}


@jit
def _sgd(p, g, lr, wd, decay):  # pragma: no cover - compiled
    for k in range(np.uint64(p.size)):
        gk = g[k] + wd * p[k] if decay else g[k]
        p[k] = p[k] - lr * gk


@jit
def _momentum(p, g, buf, lr, mu, wd, decay, nesterov):  # pragma: no cover - compiled
    for k in range(np.uint64(p.size)):
        gk = g[k] + wd * p[k] if decay else g[k]
        b = mu * buf[k] + gk
        buf[k] = b
        if nesterov:
            p[k] = p[k] - lr * (gk + mu * b)
        else:
            p[k] = p[k] - lr * b


@jit
def _adagrad(p, g, h, lr, eps, wd, decay):  # pragma: no cover - compiled
    for k in range(np.uint64(p.size)):
        gk = g[k] + wd * p[k] if decay else g[k]
        hk = h[k] + gk * gk
        h[k] = hk
        p[k] = p[k] - lr * gk / (np.sqrt(hk) + eps)


@jit
def _rmsprop(p, g, sq, lr, alpha, one_minus_alpha, eps, wd, decay):  # pragma: no cover - compiled
    for k in range(np.uint64(p.size)):
        gk = g[k] + wd * p[k] if decay else g[k]
        s = alpha * sq[k] + one_minus_alpha * (gk * gk)
        sq[k] = s
        p[k] = p[k] - lr * gk / (np.sqrt(s) + eps)


@jit
def _adam(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps, wd, decay, decoupled,
          shrink):  # pragma: no cover - compiled
    for k in range(np.uint64(p.size)):
        pk = p[k]
        gk = g[k]
        if decay and not decoupled:
            gk = gk + wd * pk
        if decoupled:
            pk = pk * shrink
        mk = b1 * m[k] + one_minus_b1 * gk
        vk = b2 * v[k] + one_minus_b2 * (gk * gk)
        m[k] = mk
        v[k] = vk
        p[k] = pk - step_size * mk / (np.sqrt(vk) / bc2_sqrt + eps)


def update_eligible(params: Any, grads: Any, slots: Any, steps: Any, rule: Any, hyper: Any) -> bool:
    """NumPy float32/float64 parameters updated in place: contiguous, writable, gradients and slots alike."""
    if rule not in SLOTS or not isinstance(params, (list, tuple)) or not params:
        return False
    if not (len(params) == len(grads) == len(slots) == len(steps)):
        return False
    names = SLOTS[rule]
    for p, g, s in zip(params, grads, slots, strict=True):
        if type(p) is not np.ndarray or type(g) is not np.ndarray or p.dtype not in FLOATS or g.dtype != p.dtype:
            return False
        if p.shape != g.shape or not p.flags.c_contiguous or not p.flags.writeable:
            return False
        if not isinstance(s, dict) or set(s) != set(names):
            return False
        for arr in s.values():
            if (type(arr) is not np.ndarray or arr.dtype != p.dtype or arr.shape != p.shape
                    or not arr.flags.c_contiguous or not arr.flags.writeable):
                return False
    return True


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def optimizer_update(params: list[np.ndarray], grads: list[np.ndarray], slots: list[dict[str, np.ndarray]],
                     steps: list[int], rule: str, hyper: Mapping[str, float]) -> list[np.ndarray]:
    """Update every parameter (and its slots) in place; returns ``params`` (the same arrays)."""
    for p, g, s, t in zip(params, grads, slots, steps, strict=True):
        T = p.dtype.type
        pf, gf = _flat(p), _flat(np.ascontiguousarray(g))
        wd = float(hyper.get("weight_decay", 0.0))
        lr = float(hyper["lr"])
        if rule == "sgd":
            _sgd(pf, gf, T(lr), T(wd), wd != 0.0)
        elif rule in ("momentum", "nesterov"):
            _momentum(pf, gf, _flat(s["momentum_buffer"]), T(lr), T(hyper["momentum"]), T(wd), wd != 0.0,
                      rule == "nesterov")
        elif rule == "adagrad":
            _adagrad(pf, gf, _flat(s["sum"]), T(lr), T(hyper["eps"]), T(wd), wd != 0.0)
        elif rule == "rmsprop":
            alpha = float(hyper["alpha"])
            _rmsprop(pf, gf, _flat(s["square_avg"]), T(lr), T(alpha), T(1.0 - alpha), T(hyper["eps"]), T(wd),
                     wd != 0.0)
        else:  # adam, adamw
            b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
            step_size = lr / (1.0 - b1**t)
            bc2_sqrt = math.sqrt(1.0 - b2**t)
            decoupled = rule == "adamw"
            _adam(pf, gf, _flat(s["exp_avg"]), _flat(s["exp_avg_sq"]), T(b1), T(1.0 - b1), T(b2), T(1.0 - b2),
                  T(step_size), T(bc2_sqrt), T(hyper["eps"]), T(wd), wd != 0.0, decoupled,
                  T(1.0 - lr * wd))
    return list(params)
