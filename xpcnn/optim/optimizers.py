r"""The seven optimizers: each names its rule in :mod:`xpcnn.functional.updates` and declares its hyper-parameters.

The update math lives in :mod:`xpcnn.functional.updates` (one function per rule, PyTorch's formula in
its docstring); the classes here hold the defaults (their ``__init__`` signatures) and the checks
(their :class:`~xpcnn.optim.base.Hyper` attributes).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from ..checks import non_negative, unit_interval
from ..parameter import ParamRef
from .base import Hyper, Optimizer

__all__ = ["OPTIMIZERS", "SGD", "AdaGrad", "Adam", "AdamW", "Momentum", "Nesterov", "RMSProp"]


def beta_pair(name: str, value: Any) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: two coefficients in ``[0, 1)``, as a tuple of Python floats."""
    try:
        beta1, beta2 = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}") from None
    return unit_interval(f"{name}[0]", beta1), unit_interval(f"{name}[1]", beta2)


class SGD(Optimizer):
    r"""Plain stochastic gradient descent (``torch.optim.SGD`` without momentum).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \eta\, g_t

    with learning rate :math:`\eta` (``lr``) and L2 weight decay :math:`\lambda` (``weight_decay``).
    """

    rule = "sgd"

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)


class Momentum(Optimizer):
    r"""SGD with heavy-ball momentum (``torch.optim.SGD(momentum=m)``, dampening 0).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        b_t &= \mu\, b_{t-1} + g_t, \qquad b_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\, b_t

    The book writes :math:`v_t = \mu v_{t-1} - \eta g_t,\ \theta_t = \theta_{t-1} + v_t`;
    with a constant learning rate this is the same sequence (:math:`v_t = -\eta b_t`),
    but when a schedule changes :math:`\eta` PyTorch's form (used here) rescales
    the whole velocity, while the book's keeps past steps at their old rate.
    ``momentum`` must be in ``[0, 1)``.  Slot: ``momentum_buffer`` (:math:`b`).
    """

    rule = "momentum"
    momentum = Hyper(unit_interval)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


class Nesterov(Momentum):
    r"""SGD with Nesterov momentum (``torch.optim.SGD(momentum=m, nesterov=True)``, dampening 0).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        b_t &= \mu\, b_{t-1} + g_t, \qquad b_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\,(g_t + \mu\, b_t)

    (the Sutskever et al. look-ahead rewritten in terms of the current
    parameters, as PyTorch does).  ``momentum`` must be in ``(0, 1)``.
    Slot: ``momentum_buffer`` (:math:`b`).
    """

    rule = "nesterov"
    momentum = Hyper(partial(unit_interval, allow_zero=False))


class AdaGrad(Optimizer):
    r"""AdaGrad (``torch.optim.Adagrad`` with ``lr_decay=0``, ``initial_accumulator_value=0``).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        h_t &= h_{t-1} + g_t \odot g_t, \qquad h_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{g_t}{\sqrt{h_t} + \epsilon}

    ``eps`` defaults to PyTorch's ``1e-10`` (the book uses ``1e-7``).
    Slot: ``sum`` (:math:`h`).
    """

    rule = "adagrad"
    eps = Hyper(non_negative)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, eps: float = 1e-10,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, eps=eps)


class RMSProp(Optimizer):
    r"""RMSProp (``torch.optim.RMSprop``, non-centered, no momentum).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        s_t &= \alpha\, s_{t-1} + (1 - \alpha)\, g_t \odot g_t, \qquad s_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{g_t}{\sqrt{s_t} + \epsilon}

    ``alpha`` (the smoothing constant) must be in ``[0, 1)``.
    Slot: ``square_avg`` (:math:`s`).
    """

    rule = "rmsprop"
    alpha = Hyper(unit_interval)
    eps = Hyper(non_negative)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, alpha=alpha, eps=eps)


class Adam(Optimizer):
    r"""Adam with bias correction (``torch.optim.Adam``, ``amsgrad=False``).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad m_0 = 0 \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t, \qquad v_0 = 0 \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Weight decay here is L2 regularisation added to the gradient (it is then
    rescaled by the adaptive denominator); see :class:`AdamW` for decoupled
    decay.  :math:`t` counts this parameter's updates; the bias corrections
    are computed as Python floats.  Slots: ``exp_avg`` (:math:`m`),
    ``exp_avg_sq`` (:math:`v`).
    """

    rule = "adam"
    betas = Hyper(beta_pair)
    eps = Hyper(non_negative)

    def __init__(self, params: Iterable[ParamRef], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)

    def _rule_hyper(self) -> dict[str, Any]:
        hyper = super()._rule_hyper()
        hyper["beta1"], hyper["beta2"] = hyper.pop("betas")  # the rule's names (as torch's functional adam)
        return hyper


class AdamW(Adam):
    r"""Adam with decoupled weight decay (``torch.optim.AdamW``).

    .. math::

        \theta'_{t-1} &= \theta_{t-1}\,(1 - \eta\lambda) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad g_t = \nabla_\theta L(\theta_{t-1}) \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t \\
        \theta_t &= \theta'_{t-1} - \frac{\eta}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    The decay shrinks the parameters directly (``p -= lr * weight_decay * p``)
    instead of entering the gradient.  ``weight_decay`` defaults to ``1e-2``.
    Slots: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`).
    """

    rule = "adamw"

    def __init__(self, params: Iterable[ParamRef], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


#: optimizer classes by name (for CLIs and configs)
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, Adam, AdamW)
}
