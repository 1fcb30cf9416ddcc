r"""Learning-rate schedules: closed forms in the epoch number that set ``optimizer.lr``.

Each schedule declares its settings once, as :class:`~xpcnn.optim.base.Hyper` attributes (the check
runs on construction, assignment and ``load_state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

from ..checks import integer, non_negative, positive
from .base import Hyper, Optimizer, collect_hypers

__all__ = ["SCHEDULERS", "CosineLR", "ExponentialLR", "LRScheduler", "StepLR"]

_count = partial(integer, minimum=1)


class LRScheduler:
    """Base class: sets ``optimizer.lr`` from a closed form in the epoch number.

    ``base_lr`` is the optimizer's ``lr`` when the schedule is created; epoch 0
    starts there.  Call :meth:`step` once per epoch (after that epoch's
    optimizer steps); it advances ``last_epoch`` and sets ``optimizer.lr`` to
    :meth:`get_lr`.  Schedules are closed forms of ``last_epoch`` and do not
    chain (two schedules on one optimizer overwrite each other).
    """

    #: every setting (:class:`Hyper` attribute) of the class (filled in by ``__init_subclass__``)
    settings: ClassVar[dict[str, Hyper[Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.settings = collect_hypers(cls)

    def __init__(self, optimizer: Optimizer, **settings: Any) -> None:
        self._set_config(settings)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} expects an xpcnn.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self.optimizer.lr = self.get_lr()

    def get_lr(self) -> float:  # pragma: no cover
        """The learning rate for epoch ``last_epoch`` (a Python float)."""
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch, set and return the optimizer's new ``lr``."""
        self.last_epoch += 1
        lr = self.get_lr()
        self.optimizer.lr = lr
        return lr

    def _config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.settings}

    def _set_config(self, config: Mapping[str, Any]) -> None:
        """Validate every setting, then apply them all (or nothing)."""
        checked = {name: field.check(name, config[name]) for name, field in self.settings.items()}
        self.__dict__.update(checked)

    def state_dict(self) -> dict[str, Any]:
        """``{"type": ..., "base_lr": float, "last_epoch": int, <settings>}``: JSON-able."""
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                **self._config()}

    def load_state_dict(self, state_dict: Mapping[str, Any], keep_config: bool = False) -> None:
        """Restore a :meth:`state_dict` and set ``optimizer.lr`` for the restored epoch.

        With ``keep_config=True`` only the progress (``base_lr``, ``last_epoch``) is restored and
        this schedule keeps its own settings (``t_max``, ``step_size``, ...): a resumed run that
        asks for more epochs stretches its schedule instead of replaying the old one.
        """
        kind = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{kind}.load_state_dict expects a dict, got {type(state_dict).__name__}")
        if state_dict.get("type") != kind:
            raise ValueError(f"schedule state is for {state_dict.get('type')!r}, but this schedule is {kind!r}")
        expected = set(self.state_dict())
        if set(state_dict) != expected:
            raise ValueError(f"{kind} state_dict must have the keys {sorted(expected)}, got {sorted(state_dict)}")
        base_lr = non_negative("base_lr", state_dict["base_lr"])
        last_epoch = integer("last_epoch", state_dict["last_epoch"], minimum=0)
        if not keep_config:
            self._set_config(state_dict)
        self.base_lr, self.last_epoch = base_lr, last_epoch
        self.optimizer.lr = self.get_lr()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args}, base_lr={self.base_lr!r}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    r"""Decay by ``gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).

    .. math:: \eta_e = \eta_0\, \gamma^{\lfloor e / \text{step\_size} \rfloor}
    """

    step_size = Hyper(_count)
    gamma = Hyper(positive)

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer, step_size=step_size, gamma=gamma)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class ExponentialLR(LRScheduler):
    r"""Decay by ``gamma`` every epoch (``torch.optim.lr_scheduler.ExponentialLR``).

    .. math:: \eta_e = \eta_0\, \gamma^{e}
    """

    gamma = Hyper(positive)

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        super().__init__(optimizer, gamma=gamma)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma**self.last_epoch


class CosineLR(LRScheduler):
    r"""Cosine annealing (the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR``).

    .. math:: \eta_e = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
                       \left(1 + \cos\frac{\pi e}{T_{\max}}\right)

    The rate reaches ``eta_min`` at epoch ``t_max``; past it, the cosine
    continues (it rises again), like PyTorch's.
    """

    t_max = Hyper(_count)
    eta_min = Hyper(non_negative)

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer, t_max=t_max, eta_min=eta_min)

    def get_lr(self) -> float:
        cosine = math.cos(math.pi * self.last_epoch / self.t_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cosine) / 2.0


#: schedule classes by name
SCHEDULERS: dict[str, type[LRScheduler]] = {
    "step": StepLR,
    "exponential": ExponentialLR,
    "cosine": CosineLR,
}
