r"""Optimizer update rules: the math of every :mod:`xpcnn.optim` optimizer, in one place.

Each rule takes one parameter ``p``, its gradient ``g`` (same shape and dtype), its state ``slots``
(a dict of arrays shaped like ``p``, the names in :data:`SLOTS`), its update count ``step`` (1 on the
first update; only Adam's bias corrections read it) and the hyper-parameters as keyword Python
floats.  It returns the new parameter value and rebinds the ``slots`` entries to the new state; no
array is written in place, so every Array API namespace works.  :func:`optimizer_update` applies one
rule to a list of parameters (the reference of the multi-tensor op ``xpcnn.kernels.optimizer_update``).

The rules follow ``torch.optim`` exactly (the algorithm boxes at
https://pytorch.org/docs/stable/optim.html, ``maximize=False``, ``foreach`` irrelevant):
with :math:`\eta` = ``lr`` and :math:`\lambda` = ``weight_decay``, every rule but AdamW first adds
the coupled L2 term, :math:`g_t \leftarrow g_t + \lambda\,\theta_{t-1}`.

Hyper-parameters stay Python floats and bias corrections are computed as Python floats, so a
``float32`` parameter stays ``float32`` and no rule synchronises with the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import array_api_compat

__all__ = ["RULES", "SLOTS", "adagrad", "adam", "adamw", "momentum", "nesterov", "optimizer_update", "rmsprop",
           "sgd"]


_NAMESPACES: dict[type, Any] = {}


def _namespace(x: Any) -> Any:
    """``array_api_compat.array_namespace(x)``, remembered per array type (it costs ~2 us a call)."""
    xp = _NAMESPACES.get(type(x))
    if xp is None:
        xp = _NAMESPACES[type(x)] = array_api_compat.array_namespace(x)
    return xp


def _l2(p: Any, g: Any, weight_decay: float) -> Any:
    """``g + weight_decay * p`` (coupled L2 decay, as ``torch.optim``), skipped when the decay is 0."""
    return g + weight_decay * p if weight_decay != 0.0 else g


def sgd(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.SGD`` (momentum 0): :math:`\theta_t = \theta_{t-1} - \eta\, g_t`.  No slots."""
    return p - lr * _l2(p, g, weight_decay)


def momentum(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, momentum: float,
             weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.SGD(momentum=mu)``, dampening 0, heavy ball.

    .. math:: b_t = \mu\, b_{t-1} + g_t \ (b_0 = 0), \qquad \theta_t = \theta_{t-1} - \eta\, b_t

    Slot ``momentum_buffer`` (:math:`b`).  A changed ``lr`` rescales the whole velocity (PyTorch's form).
    """
    g = _l2(p, g, weight_decay)
    buf = momentum * slots["momentum_buffer"] + g
    slots["momentum_buffer"] = buf
    return p - lr * buf


def nesterov(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, momentum: float,
             weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.SGD(momentum=mu, nesterov=True)``, dampening 0.

    .. math:: b_t = \mu\, b_{t-1} + g_t, \qquad \theta_t = \theta_{t-1} - \eta\,(g_t + \mu\, b_t)

    (Sutskever's look-ahead rewritten in the current parameters).  Slot ``momentum_buffer`` (:math:`b`).
    """
    g = _l2(p, g, weight_decay)
    buf = momentum * slots["momentum_buffer"] + g
    slots["momentum_buffer"] = buf
    return p - lr * (g + momentum * buf)


def adagrad(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, eps: float,
            weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.Adagrad`` (``lr_decay=0``, ``initial_accumulator_value=0``).

    .. math:: h_t = h_{t-1} + g_t \odot g_t, \qquad \theta_t = \theta_{t-1} - \eta\, g_t / (\sqrt{h_t} + \epsilon)

    Slot ``sum`` (:math:`h`).
    """
    xp = _namespace(p)
    g = _l2(p, g, weight_decay)
    h = slots["sum"] + g * g
    slots["sum"] = h
    return p - lr * g / (xp.sqrt(h) + eps)


def rmsprop(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, alpha: float, eps: float,
            weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.RMSprop`` (non-centered, momentum 0).

    .. math:: s_t = \alpha\, s_{t-1} + (1 - \alpha)\, g_t \odot g_t, \qquad
              \theta_t = \theta_{t-1} - \eta\, g_t / (\sqrt{s_t} + \epsilon)

    Slot ``square_avg`` (:math:`s`).
    """
    xp = _namespace(p)
    g = _l2(p, g, weight_decay)
    s = alpha * slots["square_avg"] + (1.0 - alpha) * (g * g)
    slots["square_avg"] = s
    return p - lr * g / (xp.sqrt(s) + eps)


def _adam_direction(g: Any, slots: dict[str, Any], step: int, lr: float, beta1: float, beta2: float,
                    eps: float) -> Any:
    """Update ``exp_avg``/``exp_avg_sq``; return ``(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``."""
    xp = _namespace(g)
    m = beta1 * slots["exp_avg"] + (1.0 - beta1) * g
    v = beta2 * slots["exp_avg_sq"] + (1.0 - beta2) * (g * g)
    slots["exp_avg"], slots["exp_avg_sq"] = m, v
    step_size = lr / (1.0 - beta1**step)  # Python floats: no device synchronisation
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    return step_size * m / (xp.sqrt(v) / bc2_sqrt + eps)


def adam(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.Adam`` (``amsgrad=False``), L2 decay added to the gradient.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}\, \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    with :math:`t` = ``step``.  Slots ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).
    """
    g = _l2(p, g, weight_decay)
    return p - _adam_direction(g, slots, step, lr, beta1, beta2, eps)


def adamw(p: Any, g: Any, slots: dict[str, Any], step: int, *, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float = 0.0) -> Any:
    r"""``torch.optim.AdamW``: decoupled decay :math:`\theta'_{t-1} = \theta_{t-1}(1 - \eta\lambda)`, then Adam's step.

    The gradient is not decayed.  Slots ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).
    """
    if weight_decay != 0.0:
        p = p * (1.0 - lr * weight_decay)
    return p - _adam_direction(g, slots, step, lr, beta1, beta2, eps)


#: rule name -> update function
RULES: dict[str, Callable[..., Any]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adagrad": adagrad, "rmsprop": rmsprop,
    "adam": adam, "adamw": adamw,
}

#: rule name -> names of the per-parameter state arrays it reads and rebinds (zeros before the first step)
SLOTS: dict[str, tuple[str, ...]] = {
    "sgd": (), "momentum": ("momentum_buffer",), "nesterov": ("momentum_buffer",), "adagrad": ("sum",),
    "rmsprop": ("square_avg",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
}


def optimizer_update(params: list[Any], grads: list[Any], slots: list[dict[str, Any]], steps: list[int], rule: str,
                     hyper: Mapping[str, float]) -> list[Any]:
    """Apply ``rule`` to every parameter: the new values in order; each ``slots[i]`` dict is rebound in place.

    ``params[i]``, ``grads[i]`` and the arrays of ``slots[i]`` share one shape and dtype; ``steps[i]`` is
    parameter ``i``'s update count including this one.  ``hyper`` holds the rule's keyword floats.

    >>> import numpy as np
    >>> state = [{"momentum_buffer": np.zeros(2)}]
    >>> new = optimizer_update([np.array([1.0, -2.0])], [np.array([0.5, 0.5])], state, [1], "momentum",
    ...                        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    >>> new[0].tolist(), state[0]["momentum_buffer"].tolist()
    ([0.95, -2.05], [0.5, 0.5])
    """
    update = RULES.get(rule)
    if update is None:
        raise ValueError(f"unknown optimizer rule {rule!r}; expected one of {sorted(RULES)}")
    if not len(params) == len(grads) == len(slots) == len(steps):
        raise ValueError(f"params, grads, slots and steps must have one entry per parameter; got lengths "
                         f"{len(params)}, {len(grads)}, {len(slots)}, {len(steps)}")
    return [update(p, g, s, t, **hyper) for p, g, s, t in zip(params, grads, slots, steps, strict=True)]
