"""Optimizers and learning-rate schedules on the Array API.

Every optimizer updates a list of :class:`xpcnn.parameter.ParamRef` (what a
model's ``parameters()`` returns) and follows the update rules of
``torch.optim`` exactly, so PyTorch can serve as a test oracle:

=============  ==========================================================
``SGD``        ``torch.optim.SGD`` (no momentum)
``Momentum``   ``torch.optim.SGD(momentum=m)`` (dampening 0)
``Nesterov``   ``torch.optim.SGD(momentum=m, nesterov=True)``
``AdaGrad``    ``torch.optim.Adagrad`` (lr_decay 0, initial accumulator 0)
``RMSProp``    ``torch.optim.RMSprop`` (non-centered, no momentum)
``Adam``       ``torch.optim.Adam`` (L2 weight decay added to the gradient)
``AdamW``      ``torch.optim.AdamW`` (decoupled weight decay)
=============  ==========================================================

Conventions:

* the namespace comes from the parameter arrays
  (``array_api_compat.array_namespace``); state ("slots") is created with
  ``xp.zeros_like`` at construction, so it lives on the parameter's
  device with the parameter's dtype;
* hyper-parameters are Python floats and bias corrections are computed in
  Python floats, so ``float32`` parameters stay ``float32`` on every backend
  and :meth:`Optimizer.step` never synchronises with the device;
* new values are written with :meth:`ParamRef.assign` (no in-place update is
  required of the backend); a parameter whose gradient is ``None`` is skipped
  (its state and its step count are left untouched, as in PyTorch);
* :meth:`Optimizer.state_dict` is checkpointable without pickle: JSON-able
  values plus a flat ``{"<param name>/<slot name>": array}`` dict.

Schedules (:class:`StepLR`, :class:`ExponentialLR`, :class:`CosineLR`) are
stepped once per epoch and set ``optimizer.lr`` from a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import array_api_compat
import numpy as np

from . import backend as _backend
from .parameter import ParamRef

__all__ = [
    "AdaGrad",
    "Adam",
    "AdamW",
    "CosineLR",
    "ExponentialLR",
    "LRScheduler",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "OPTIMIZERS",
    "RMSProp",
    "SGD",
    "SCHEDULERS",
    "StepLR",
]


# ----------------------------------------------------------------------------- validation helpers


def _real(name: str, value: Any) -> float:
    """``value`` as a finite Python float (never a NumPy scalar), or ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _positive(name: str, value: Any) -> float:
    out = _real(name, value)
    if not out > 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


def _non_negative(name: str, value: Any) -> float:
    out = _real(name, value)
    if not out >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


def _unit(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A coefficient in ``[0, 1)`` (or ``(0, 1)`` when ``allow_zero`` is false)."""
    out = _real(name, value)
    low_ok = out >= 0.0 if allow_zero else out > 0.0
    if not (low_ok and out < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return out


def _int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- optimizers


class Optimizer:
    """Base class: holds the parameters, their per-parameter state and ``lr``.

    Subclasses declare ``slot_names`` (the state arrays kept per parameter,
    created as zeros like the parameter) and implement :meth:`_update`, which
    returns the new parameter value from the current value, its gradient, the
    parameter's slots (a dict it rebinds) and the parameter's step count
    ``t`` (1 on the first update).

    ``lr`` is an ordinary attribute that schedules (and users) may change
    between steps; it must stay finite and ``>= 0``.
    """

    #: names of the per-parameter state arrays
    slot_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[ParamRef], lr: float, weight_decay: float = 0.0) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        seen: set[str] = set()
        for ref in params:
            if not isinstance(ref, ParamRef):
                raise TypeError(f"{type(self).__name__} expects xpcnn.parameter.ParamRef objects "
                                f"(a model's parameters()), got {type(ref).__name__}")
            if ref.name in seen:
                raise ValueError(f"duplicate parameter name {ref.name!r}: every parameter given to "
                                 f"{type(self).__name__} needs a unique name")
            seen.add(ref.name)
        self.params: list[ParamRef] = params
        self.lr = _positive("lr", lr)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        #: number of calls to :meth:`step`
        self.step_count = 0
        self._t: dict[str, int] = {ref.name: 0 for ref in params}
        self._xp: dict[str, Any] = {}
        self.state: dict[str, dict[str, Any]] = {}
        for ref in params:
            value = ref.value
            xp = array_api_compat.array_namespace(value)
            self._xp[ref.name] = xp
            self.state[ref.name] = {slot: xp.zeros_like(value) for slot in self.slot_names}

    # -- lr -------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate used by the next :meth:`step` (a Python float)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _non_negative("lr", value)

    # -- stepping -------------------------------------------------------------------------

    def step(self) -> None:
        """Update every parameter that has a gradient (one optimisation step)."""
        self.step_count += 1
        for ref in self.params:
            g = ref.grad
            if g is None:
                continue
            name = ref.name
            self._t[name] += 1
            new = self._update(self._xp[name], ref.value, g, self.state[name], self._t[name])
            ref.assign(new)

    def _update(self, xp: Any, p: Any, g: Any, slots: dict[str, Any], t: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _l2(self, p: Any, g: Any) -> Any:
        """``g + weight_decay * p`` (coupled L2 decay, as ``torch.optim``), skipped when the decay is 0."""
        if self.weight_decay != 0.0:
            return g + self.weight_decay * p
        return g

    # -- hyper-parameters ----------------------------------------------------------------

    def hyper(self) -> dict[str, Any]:
        """The hyper-parameters as JSON-able Python values (floats, lists)."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        """Validate and apply ``hyper`` (all keys of :meth:`hyper` required); used by ``load_state_dict``."""
        self.lr = _non_negative("lr", hyper["lr"])
        self.weight_decay = _non_negative("weight_decay", hyper["weight_decay"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, checkpointable without pickle.

        ``{"type": "Adam", "hyper": {...}, "step": int, "param_steps": {name: int},
        "slots": {"<param name>/<slot name>": array}}``.  Everything but the
        slot arrays is JSON-able; the arrays are the optimizer's own (not
        copies) and stay on the backend.  ``param_steps`` counts the updates
        each parameter received (it differs from ``step`` only for parameters
        whose gradient was sometimes ``None``); it may be omitted on load.
        """
        slots = {f"{name}/{slot}": arr for name, state in self.state.items() for slot, arr in state.items()}
        return {
            "type": type(self).__name__,
            "hyper": self.hyper(),
            "step": self.step_count,
            "param_steps": dict(self._t),
            "slots": slots,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: hyper-parameters, step counts and slots.

        Everything is validated before anything changes: the optimizer type,
        the hyper-parameters, that the slot names are exactly this
        optimizer's ``"<param name>/<slot name>"`` keys and that each array's
        shape and dtype match its parameter.  Slot arrays may come from any
        backend (NumPy from a checkpoint, say); they are copied onto the
        parameters' backend and device.  Raises ``ValueError`` on any mismatch.
        """
        kind = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{kind}.load_state_dict expects a dict, got {type(state_dict).__name__}")
        missing_keys = [k for k in ("type", "hyper", "step", "slots") if k not in state_dict]
        if missing_keys:
            raise ValueError(f"{kind} state_dict is missing the key(s) {missing_keys}")
        if state_dict["type"] != kind:
            raise ValueError(f"optimizer state is for {state_dict['type']!r}, but this optimizer is {kind!r}")

        hyper = state_dict["hyper"]
        expected_hyper = set(self.hyper())
        if not isinstance(hyper, Mapping) or set(hyper) != expected_hyper:
            got = sorted(hyper) if isinstance(hyper, Mapping) else type(hyper).__name__
            raise ValueError(f"{kind} state_dict 'hyper' must have the keys {sorted(expected_hyper)}, got {got}")
        step = _int("step", state_dict["step"], minimum=0)

        names = [ref.name for ref in self.params]
        param_steps_in = state_dict.get("param_steps")
        if param_steps_in is None:
            param_steps = {name: step for name in names}
        else:
            if not isinstance(param_steps_in, Mapping) or set(param_steps_in) != set(names):
                got = sorted(param_steps_in) if isinstance(param_steps_in, Mapping) else param_steps_in
                raise ValueError(f"{kind} state_dict 'param_steps' must name exactly the parameters "
                                 f"{sorted(names)}, got {got}")
            param_steps = {name: _int(f"param_steps[{name!r}]", param_steps_in[name], minimum=0)
                           for name in names}

        slots_in = state_dict["slots"]
        if not isinstance(slots_in, Mapping):
            raise ValueError(f"{kind} state_dict 'slots' must be a dict, got {type(slots_in).__name__}")
        expected = {f"{ref.name}/{slot}": ref for ref in self.params for slot in self.slot_names}
        unknown = sorted(set(slots_in) - set(expected))
        if unknown:
            raise ValueError(f"{kind} state_dict has slot(s) {unknown} that match no parameter/slot of this "
                             f"optimizer; expected exactly {sorted(expected)}")
        missing = sorted(set(expected) - set(slots_in))
        if missing:
            raise ValueError(f"{kind} state_dict is missing the slot(s) {missing}; expected exactly {sorted(expected)}")

        new_state: dict[str, dict[str, Any]] = {ref.name: {} for ref in self.params}
        for key, ref in expected.items():
            value = ref.value
            arr = slots_in[key]
            host = _backend.to_numpy(arr)
            want_shape, want_dtype = tuple(value.shape), _backend.dtype_name(value.dtype)
            got_shape, got_dtype = tuple(host.shape), host.dtype.name
            if got_shape != want_shape or got_dtype != want_dtype:
                raise ValueError(f"{kind} state slot {key!r}: expected shape {want_shape} and dtype {want_dtype} "
                                 f"(like parameter {ref.name!r}), got shape {got_shape} and dtype {got_dtype}")
            xp = self._xp[ref.name]
            moved = xp.asarray(host, dtype=value.dtype, device=array_api_compat.device(value), copy=True)
            new_state[ref.name][key.rsplit("/", 1)[1]] = moved

        # validate the hyper-parameters on a scratch copy before touching self
        saved = self.hyper()
        try:
            self._set_hyper(hyper)
        except (ValueError, KeyError, TypeError) as exc:
            self._set_hyper(saved)
            raise ValueError(f"{kind} state_dict has invalid hyper-parameters: {exc}") from exc

        self.step_count = step
        self._t = param_steps
        self.state = new_state


class SGD(Optimizer):
    r"""Plain stochastic gradient descent (``torch.optim.SGD`` without momentum).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \eta\, g_t

    with learning rate :math:`\eta` (``lr``) and L2 weight decay :math:`\lambda`
    (``weight_decay``).
    """

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        return p - self.lr * g


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
    Slot: ``momentum_buffer`` (:math:`b`).
    """

    slot_names = ("momentum_buffer",)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        self.momentum = _unit("momentum", momentum)
        super().__init__(params, lr, weight_decay)

    def hyper(self):
        return {**super().hyper(), "momentum": self.momentum}

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self.momentum = _unit("momentum", hyper["momentum"])

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        buf = self.momentum * slots["momentum_buffer"] + g
        slots["momentum_buffer"] = buf
        return p - self.lr * buf


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

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, _unit("momentum", momentum, allow_zero=False), weight_decay)

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self.momentum = _unit("momentum", hyper["momentum"], allow_zero=False)

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        buf = self.momentum * slots["momentum_buffer"] + g
        slots["momentum_buffer"] = buf
        return p - self.lr * (g + self.momentum * buf)


class AdaGrad(Optimizer):
    r"""AdaGrad (``torch.optim.Adagrad`` with ``lr_decay=0``, ``initial_accumulator_value=0``).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        h_t &= h_{t-1} + g_t \odot g_t, \qquad h_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{g_t}{\sqrt{h_t} + \epsilon}

    ``eps`` defaults to PyTorch's ``1e-10`` (the book uses ``1e-7``).
    Slot: ``sum`` (:math:`h`).
    """

    slot_names = ("sum",)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, eps: float = 1e-10,
                 weight_decay: float = 0.0) -> None:
        self.eps = _non_negative("eps", eps)
        super().__init__(params, lr, weight_decay)

    def hyper(self):
        return {**super().hyper(), "eps": self.eps}

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self.eps = _non_negative("eps", hyper["eps"])

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        h = slots["sum"] + g * g
        slots["sum"] = h
        return p - self.lr * g / (xp.sqrt(h) + self.eps)


class RMSProp(Optimizer):
    r"""RMSProp (``torch.optim.RMSprop``, non-centered, no momentum).

    .. math::

        g_t &= \nabla_\theta L(\theta_{t-1}) + \lambda\,\theta_{t-1} \\
        s_t &= \alpha\, s_{t-1} + (1 - \alpha)\, g_t \odot g_t, \qquad s_0 = 0 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{g_t}{\sqrt{s_t} + \epsilon}

    ``alpha`` (the smoothing constant) must be in ``[0, 1)``.
    Slot: ``square_avg`` (:math:`s`).
    """

    slot_names = ("square_avg",)

    def __init__(self, params: Iterable[ParamRef], lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.alpha = _unit("alpha", alpha)
        self.eps = _non_negative("eps", eps)
        super().__init__(params, lr, weight_decay)

    def hyper(self):
        return {**super().hyper(), "alpha": self.alpha, "eps": self.eps}

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self.alpha = _unit("alpha", hyper["alpha"])
        self.eps = _non_negative("eps", hyper["eps"])

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        s = self.alpha * slots["square_avg"] + (1.0 - self.alpha) * (g * g)
        slots["square_avg"] = s
        return p - self.lr * g / (xp.sqrt(s) + self.eps)


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

    slot_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[ParamRef], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.betas = self._check_betas(betas)
        self.eps = _non_negative("eps", eps)
        super().__init__(params, lr, weight_decay)

    @staticmethod
    def _check_betas(betas: Any) -> tuple[float, float]:
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        return _unit("betas[0]", beta1), _unit("betas[1]", beta2)

    def hyper(self):
        return {**super().hyper(), "betas": list(self.betas), "eps": self.eps}

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self.betas = self._check_betas(hyper["betas"])
        self.eps = _non_negative("eps", hyper["eps"])

    def _moments(self, g: Any, slots: dict[str, Any], t: int, xp: Any) -> Any:
        """Update ``m`` and ``v`` and return the step direction ``-(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``."""
        beta1, beta2 = self.betas
        m = beta1 * slots["exp_avg"] + (1.0 - beta1) * g
        v = beta2 * slots["exp_avg_sq"] + (1.0 - beta2) * (g * g)
        slots["exp_avg"], slots["exp_avg_sq"] = m, v
        step_size = self.lr / (1.0 - beta1**t)
        bc2_sqrt = math.sqrt(1.0 - beta2**t)
        return step_size * m / (xp.sqrt(v) / bc2_sqrt + self.eps)

    def _update(self, xp, p, g, slots, t):
        g = self._l2(p, g)
        return p - self._moments(g, slots, t, xp)


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

    def __init__(self, params: Iterable[ParamRef], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, xp, p, g, slots, t):
        if self.weight_decay != 0.0:
            p = p * (1.0 - self.lr * self.weight_decay)
        return p - self._moments(g, slots, t, xp)


#: optimizer classes by name (for CLIs and configs)
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, Adam, AdamW)
}


# ----------------------------------------------------------------------------- LR schedules


class LRScheduler:
    """Base class: sets ``optimizer.lr`` from a closed form in the epoch number.

    ``base_lr`` is the optimizer's ``lr`` when the schedule is created; epoch 0
    starts there.  Call :meth:`step` once per epoch (after that epoch's
    optimizer steps); it advances ``last_epoch`` and sets ``optimizer.lr`` to
    :meth:`get_lr`.  Schedules are closed forms of ``last_epoch`` and do not
    chain (two schedules on one optimizer overwrite each other).
    """

    def __init__(self, optimizer: Optimizer) -> None:
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
        return {}

    def _set_config(self, config: Mapping[str, Any]) -> None:
        pass

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
        base_lr = _non_negative("base_lr", state_dict["base_lr"])
        last_epoch = _int("last_epoch", state_dict["last_epoch"], minimum=0)
        saved = self._config()
        try:
            self._set_config(saved if keep_config else state_dict)
        except ValueError:
            self._set_config(saved)
            raise
        self.base_lr, self.last_epoch = base_lr, last_epoch
        self.optimizer.lr = self.get_lr()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args}, base_lr={self.base_lr!r}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    r"""Decay by ``gamma`` every ``step_size`` epochs (``torch.optim.lr_scheduler.StepLR``).

    .. math:: \eta_e = \eta_0\, \gamma^{\lfloor e / \text{step\_size} \rfloor}
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _int("step_size", step_size, minimum=1)
        self.gamma = _positive("gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)

    def _config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _set_config(self, config):
        self.step_size = _int("step_size", config["step_size"], minimum=1)
        self.gamma = _positive("gamma", config["gamma"])


class ExponentialLR(LRScheduler):
    r"""Decay by ``gamma`` every epoch (``torch.optim.lr_scheduler.ExponentialLR``).

    .. math:: \eta_e = \eta_0\, \gamma^{e}
    """

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        self.gamma = _positive("gamma", gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma**self.last_epoch

    def _config(self):
        return {"gamma": self.gamma}

    def _set_config(self, config):
        self.gamma = _positive("gamma", config["gamma"])


class CosineLR(LRScheduler):
    r"""Cosine annealing (the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR``).

    .. math:: \eta_e = \eta_{\min} + \tfrac12 (\eta_0 - \eta_{\min})
                       \left(1 + \cos\frac{\pi e}{T_{\max}}\right)

    The rate reaches ``eta_min`` at epoch ``t_max``; past it, the cosine
    continues (it rises again), like PyTorch's.
    """

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0) -> None:
        self.t_max = _int("t_max", t_max, minimum=1)
        self.eta_min = _non_negative("eta_min", eta_min)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        cosine = math.cos(math.pi * self.last_epoch / self.t_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cosine) / 2.0

    def _config(self):
        return {"t_max": self.t_max, "eta_min": self.eta_min}

    def _set_config(self, config):
        self.t_max = _int("t_max", config["t_max"], minimum=1)
        self.eta_min = _non_negative("eta_min", config["eta_min"])


#: schedule classes by name
SCHEDULERS: dict[str, type[LRScheduler]] = {
    "step": StepLR,
    "exponential": ExponentialLR,
    "cosine": CosineLR,
}
