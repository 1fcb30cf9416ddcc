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

Where things are:

* :mod:`xpcnn.functional.updates` -- the update math, one function per rule;
* :mod:`xpcnn.optim.base` -- :class:`Optimizer`: parameters, hyper-parameters (each declared once, as a
  :class:`~xpcnn.optim.base.Hyper` class attribute), step counts, state dicts;
* :mod:`xpcnn.optim.optimizers` -- the seven optimizers (defaults and checks);
* :mod:`xpcnn.optim.schedules` -- :class:`StepLR`, :class:`ExponentialLR`, :class:`CosineLR`, stepped
  once per epoch, setting ``optimizer.lr`` from a closed form.

Conventions:

* the namespace comes from the parameter arrays
  (``array_api_compat.array_namespace``); state ("slots") is created with
  ``xp.zeros_like`` at construction, so it lives on the parameter's
  device with the parameter's dtype: build the optimizer after ``model.to(...)``
  (:meth:`Optimizer.step` refuses a parameter that no longer lives with its state);
* hyper-parameters are Python floats and bias corrections are computed in
  Python floats, so ``float32`` parameters stay ``float32`` on every backend
  and :meth:`Optimizer.step` never synchronises with the device;
* one :meth:`Optimizer.step` is one call of the kernel op ``xpcnn.kernels.optimizer_update`` over every
  parameter that has a gradient; new values are written with :meth:`ParamRef.assign` (no in-place
  update is required of the backend); a parameter whose gradient is ``None`` is skipped
  (its state and its step count are left untouched, as in PyTorch);
* :meth:`Optimizer.state_dict` is checkpointable without pickle: JSON-able
  values plus a flat ``{"<param name>/<slot name>": array}`` dict.

>>> import numpy as np
>>> from xpcnn import layers, optim
>>> from xpcnn.model import Sequential
>>> model = Sequential([layers.Dense(3, 2)])
>>> opt = optim.Adam(model.parameters(), lr=1e-3)
>>> sched = optim.CosineLR(opt, t_max=10)
>>> opt.hyper()
{'lr': 0.001, 'weight_decay': 0.0, 'betas': [0.9, 0.999], 'eps': 1e-08}
"""

from .base import Optimizer
from .optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, RMSProp
from .schedules import SCHEDULERS, CosineLR, ExponentialLR, LRScheduler, StepLR

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
