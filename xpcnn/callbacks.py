"""Callbacks for :func:`xpcnn.train.fit`: called after every epoch with the trainer and that epoch's logs.

:class:`ModelCheckpoint` saves resumable checkpoints (the last, and the best by a monitored metric);
:class:`EarlyStopping` stops a run whose monitored metric stopped improving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import backend as B

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint"]


class Callback(Protocol):
    """Called after every epoch; returning True stops training."""

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> bool | None: ...


class ModelCheckpoint:
    """Save a resumable checkpoint after every epoch (and, with ``best_path``, the best by ``monitor``)."""

    def __init__(self, path: str | Path, best_path: str | Path | None = None, monitor: str = "val_loss") -> None:
        self.path, self.best_path, self.monitor = Path(path), best_path and Path(best_path), monitor
        self.best = math.inf

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        trainer.save(self.path)
        value = logs.get(self.monitor)
        # after a resume, the epochs before it (restored history) still count: never overwrite a better best
        earlier = [e[self.monitor] for e in trainer.history.epochs if e is not logs and self.monitor in e]
        self.best = min([self.best, *earlier])
        if self.best_path is not None and value is not None and value < self.best:
            self.best = value
            trainer.save(self.best_path)


class EarlyStopping:
    """Stop when ``monitor`` (default ``val_loss``) has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the model's weights return to the best epoch's when it stops training
    (like Keras' ``restore_best_weights``); a run that ends by reaching its epoch count keeps the last.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.best, self.wait = math.inf, 0
        self.best_state: dict[str, Any] | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> bool:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the logs have only {sorted(logs)}; "
                           "pass validation data (val=... or val_split=...)")
        value = logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            if self.restore_best:
                self.best_state = {k: B.to_numpy(v).copy() for k, v in trainer.model.state_dict().items()}
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(logs["epoch"])
            if self.restore_best and self.best_state is not None:
                trainer.model.load_state_dict(self.best_state)
            return True
        return False
