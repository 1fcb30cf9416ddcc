"""Training recipes: the settings ``xpcnn train --model NAME`` uses for each model when a flag is not given.

One :class:`Recipe` per model name in :data:`RECIPES`; adding a model to the CLI is one entry here
(its builder must exist in :data:`xpcnn.models.MODELS`).

>>> from xpcnn.recipes import RECIPES
>>> r = RECIPES["lenet5"]
>>> (r.optimizer, r.lr, r.epochs, r.batch_size, r.schedule, r.augment)
('adam', 0.002, 10, 64, 'cosine', 'shift1')
>>> r.replace(epochs=3).epochs
3
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["NORMALIZATIONS", "RECIPES", "Recipe", "SCHEDULES"]

#: LR schedules a recipe can name (stepped once per epoch)
SCHEDULES = ("none", "cosine", "step")
#: input normalisations: ``standardize`` (one mean/std from the training part), ``unit`` (pixels / 255)
NORMALIZATIONS = ("standardize", "unit")


@dataclass(frozen=True)
class Recipe:
    """How one model is trained by default.

    model: builder name in :data:`xpcnn.models.MODELS`.  optimizer: a key of :data:`xpcnn.optim.OPTIMIZERS`.
    lr, weight_decay: the optimizer's hyper-parameters.  epochs, batch_size: the length and batch of a run.
    schedule: one of :data:`SCHEDULES`.  augment: a spec for :func:`xpcnn.datasets.augment.parse_augment`.
    normalize: one of :data:`NORMALIZATIONS`.  dataset: the data set it is usually trained on.
    """

    model: str
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 128
    schedule: str = "none"
    augment: str = "none"
    normalize: str = "standardize"
    weight_decay: float = 0.0
    dataset: str = "mnist"

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` applied (``None`` values are ignored: the recipe's value stays)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what ``metrics.json`` records under ``recipe``)."""
        return dataclasses.asdict(self)

    def build_optimizer(self, params: Any) -> Any:
        """The optimizer named by this recipe over ``params``, with its ``lr`` and ``weight_decay``."""
        from . import optim

        return optim.OPTIMIZERS[self.optimizer](params, lr=self.lr, weight_decay=self.weight_decay)

    def build_scheduler(self, optimizer: Any) -> Any:
        """The LR schedule named by this recipe for ``optimizer`` (``None`` for ``"none"``)."""
        from . import optim

        if self.schedule == "cosine":
            return optim.CosineLR(optimizer, t_max=self.epochs)
        if self.schedule == "step":
            return optim.StepLR(optimizer, step_size=max(1, self.epochs // 3), gamma=0.1)
        return None


#: per-model recipes, by the CLI's ``--model`` name
RECIPES: dict[str, Recipe] = {
    "lenet5": Recipe("lenet5", optimizer="adam", lr=2e-3, epochs=10, batch_size=64, schedule="cosine",
                     augment="shift1"),
    "simple": Recipe("simple", optimizer="adam", lr=1e-3, epochs=20, batch_size=100, schedule="none",
                     augment="none", normalize="unit"),
    "wide": Recipe("wide", optimizer="adam", lr=1e-3, epochs=10, batch_size=128, schedule="cosine",
                   augment="shift2"),
    "bn": Recipe("bn", optimizer="adam", lr=2e-3, epochs=15, batch_size=128, schedule="cosine",
                 augment="shift1,flip", dataset="fashion-mnist"),
    # residual nets: SGD with Nesterov momentum 0.9, L2 5e-4, cosine from 0.1 (He et al.'s CIFAR recipe,
    # shortened); random 2-pixel crops of the zero-padded image and horizontal flips (for MNIST digits
    # pass --augment crop2: a flipped digit is another symbol)
    # resnet8: 25 epochs, 92.82% on Fashion-MNIST in 42.9 min (12 gave 92.29%); resnet20 is the one that
    # reaches 93.5% in an hour
    "resnet8": Recipe("resnet8", optimizer="nesterov", lr=0.1, epochs=25, batch_size=128, schedule="cosine",
                      augment="crop2,flip", weight_decay=5e-4, dataset="fashion-mnist"),
    # resnet20: 18 epochs, 93.75% on Fashion-MNIST in 51.4 min on 2 cores (README accuracy table)
    "resnet20": Recipe("resnet20", optimizer="nesterov", lr=0.1, epochs=18, batch_size=128, schedule="cosine",
                       augment="crop2,flip", weight_decay=5e-4, dataset="fashion-mnist"),
    # the batch-norm CNN on MNIST digits: random 2-pixel crops, no flips
    "bn-mnist": Recipe("bn", optimizer="adam", lr=2e-3, epochs=15, batch_size=128, schedule="cosine",
                       augment="crop2", dataset="mnist"),
    "separable": Recipe("separable", optimizer="adam", lr=2e-3, epochs=15, batch_size=128, schedule="cosine",
                        augment="crop2,flip", dataset="fashion-mnist"),
}
