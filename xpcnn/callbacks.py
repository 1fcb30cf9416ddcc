"""Callbacks for :func:`xpcnn.train.fit`: called after every epoch with the trainer and that epoch's logs.

:class:`ModelCheckpoint` saves resumable checkpoints (the last, and the best by a monitored metric);
:class:`EarlyStopping` stops a run whose monitored metric stopped improving; :class:`CSVLogger`
writes the history as a CSV file.  ``mode`` says which direction is better: ``"min"`` (losses),
``"max"`` (accuracies) or ``"auto"`` (``max`` for a name ending in ``acc`` or ``accuracy``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import backend as B
from . import checkpoint as ckpt

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "ModelCheckpoint", "resolve_mode"]

MODES = ("auto", "min", "max")


class Callback(Protocol):
    """Called after every epoch; returning True stops training."""

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> bool | None: ...


def resolve_mode(monitor: str, mode: str) -> str:
    """``"min"`` or ``"max"`` for ``monitor``: ``mode`` itself, or for ``"auto"`` max on accuracies.

    >>> resolve_mode("val_accuracy", "auto"), resolve_mode("val_loss", "auto"), resolve_mode("val_loss", "max")
    ('max', 'min', 'max')
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if monitor.endswith(("acc", "accuracy")) else "min"


class _Monitor:
    """The best value so far of one metric, in one direction (earlier epochs of a resumed run count)."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a logged metric (e.g. 'val_loss'), got {monitor!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0.0 <= min_delta < math.inf:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, resolve_mode(monitor, mode), float(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            raise KeyError(f"{self.monitor!r} is monitored, but the logs have only {sorted(logs)}; "
                           "pass validation data (val=... or val_split=...)")
        return float(logs[self.monitor])


class ModelCheckpoint:
    """Save a resumable checkpoint after every epoch (and, with ``best_path``, the best by ``monitor``).

    The best file is written only when the monitored value is finite and better than every earlier
    epoch's (those before a resume included); ``mode``: ``auto``, ``min`` or ``max`` (see the module).
    """

    def __init__(self, path: str | Path, best_path: str | Path | None = None, monitor: str = "val_loss",
                 mode: str = "auto") -> None:
        self.path, self.best_path = Path(path), best_path and Path(best_path)
        self._monitor = _Monitor(monitor, mode)
        self.monitor, self.mode = monitor, self._monitor.mode
        ckpt.remove_stale_temporaries(self.path)
        if self.best_path is not None:
            ckpt.remove_stale_temporaries(self.best_path)

    @property
    def best(self) -> float:
        return self._monitor.best

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        trainer.save(self.path)
        if self.best_path is None:
            return
        m = self._monitor
        value = m.value(logs)
        # after a resume, the epochs before it (restored history) still count: never overwrite a better best
        for e in trainer.history.epochs:
            if e is not logs and self.monitor in e and m.improves(float(e[self.monitor])):
                m.best = float(e[self.monitor])
        if m.improves(value):
            m.best = value
            trainer.save(self.best_path)


class EarlyStopping:
    """Stop when ``monitor`` (default ``val_loss``) has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode``: ``auto`` (accuracies are maximised, anything else minimised), ``min`` or ``max``.
    With ``restore_best=True`` the model's weights return to the best epoch's when it stops training
    (like Keras' ``restore_best_weights``); a run that ends by reaching its epoch count keeps the last.
    After a resume, the earlier epochs of the history count towards the best value and the patience
    (their weights are not in memory: a best epoch from before the resume is not restored).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 restore_best: bool = True, mode: str = "auto") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1 (epochs without improvement), got {patience!r}")
        self._monitor = _Monitor(monitor, mode, min_delta)
        self.monitor, self.mode, self.patience = monitor, self._monitor.mode, patience
        self.min_delta, self.restore_best = float(min_delta), restore_best
        self.wait = 0
        #: the epoch of the best value (None until one is seen)
        self.best_epoch: int | None = None
        self.best_state: dict[str, Any] | None = None
        self.stopped_epoch: int | None = None
        self._replayed = False

    @property
    def best(self) -> float:
        return self._monitor.best

    def _consider(self, value: float, epoch: int) -> bool:
        if self._monitor.improves(value):
            self._monitor.best, self.wait, self.best_epoch = value, 0, epoch
            return True
        self.wait += 1
        return False

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> bool:
        value = self._monitor.value(logs)
        if not self._replayed:  # a resumed run: the restored epochs set the best value and the wait
            self._replayed = True
            for e in trainer.history.epochs:
                if e is not logs and self.monitor in e:
                    self._consider(float(e[self.monitor]), int(e["epoch"]))
        if self._consider(value, int(logs["epoch"])):
            if self.restore_best:
                self.best_state = {k: B.to_numpy(v).copy() for k, v in trainer.model.state_dict().items()}
            return False
        if self.wait >= self.patience:
            self.stopped_epoch = int(logs["epoch"])
            if self.restore_best and self.best_state is not None:
                trainer.model.load_state_dict(self.best_state)
            return True
        return False


class CSVLogger:
    """Write the run's history to ``path`` after every epoch: a header row, then one row per epoch.

    The whole file is rewritten from ``trainer.history`` (atomically), so a resumed run's file holds
    every epoch, those before the resume included.  Columns: ``epoch``, ``loss``, ``accuracy``,
    ``val_loss``, ``val_accuracy`` (with validation), ``lr``, ``time_s``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        rows = trainer.history.epochs
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.path)
