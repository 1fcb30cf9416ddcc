"""The training loop: ``fit`` / ``evaluate`` and a history; callbacks live in :mod:`xpcnn.callbacks`.

    from xpcnn import models, optim, train
    from xpcnn.datasets import load_mnist, to_float
    x_train, y_train, x_test, y_test = load_mnist()
    model = models.lenet5(rng=0)
    history = train.fit(model, optim.Adam(model.parameters()), (to_float(x_train), y_train),
                        val=(to_float(x_test), y_test), epochs=5, batch_size=128, seed=0)

Randomness comes from host generators: ``seed`` fixes the shuffling order and
reseeds the global generator (dropout masks), from independent streams, so a run is reproducible and a
resumed run (``fit(..., resume=path)``) continues exactly where the checkpoint
left off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from . import backend as B
from . import checkpoint as ckpt
from . import distributed
from .callbacks import Callback, EarlyStopping, ModelCheckpoint
from .datasets.loader import BatchIterator
from .datasets.preprocess import train_val_split
from .losses import SoftmaxCrossEntropy
from .model import Sequential

__all__ = ["Callback", "EarlyStopping", "History", "ModelCheckpoint", "Trainer", "TrainingDivergedError", "evaluate",
           "fit"]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class History:
    """Per-epoch records: ``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``time_s``."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def __len__(self) -> int:
        return len(self.epochs)


def _as_xy(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(B.to_numpy(data[0])), np.asarray(B.to_numpy(data[1]))
    raise TypeError(f"data must be a pair (x, y) of arrays, got {type(data).__name__}")


def evaluate(model: Sequential, data: tuple[Any, Any], loss: Any = None, batch_size: int = 512,
             on_device: bool = False) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (eval mode) on ``(x, y)``: ``{"loss": ..., "accuracy": ...}``."""
    loss = loss or SoftmaxCrossEntropy()
    x, y = _as_xy(data)
    n = x.shape[0]
    dp = distributed.current()
    if dp is not None:  # data-parallel: each rank evaluates a contiguous part, the sums are reduced
        start, stop = dp.eval_rows(n)
        x, y = x[start:stop], y[start:stop]
    batches: Any = [] if x.shape[0] == 0 else \
        BatchIterator(x, y, batch_size, shuffle=False, on_device=on_device, x_dtype=_model_dtype(model))
    total_loss, correct = 0.0, 0
    for xb, yb in batches:
        out = model.forward(xb, train=False)
        xp = array_api_compat.array_namespace(out)
        total_loss += float(loss.forward(out, yb)) * xb.shape[0]
        correct += int(xp.sum(xp.astype(xp.argmax(out, axis=1) == yb, xp.int64)))
    if dp is not None:
        total_loss, summed_correct = dp.sum([total_loss, correct])
        correct = int(summed_correct)
    return {"loss": total_loss / n, "accuracy": correct / n}


def _model_dtype(model: Sequential) -> str:
    ref = next((p.value for p in model.parameters()), None)
    return "float32" if ref is None else B.dtype_name(ref.dtype)


class Trainer:
    """The state of one training run; :func:`fit` is the usual entry point."""

    def __init__(self, model: Sequential, optimizer: Any, loss: Any, train: BatchIterator, scheduler: Any = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.model, self.optimizer, self.loss, self.train = model, optimizer, loss, train
        self.scheduler, self.extra = scheduler, extra or {}
        self.history = History()
        self.epoch = 0
        #: the data-parallel hooks (:class:`xpcnn.distributed.DataParallel`), None in a single process
        self.dp: Any = None

    def rng_state(self) -> dict[str, Any]:
        return {"loader": self.train.state_dict(), "global": B.host_rng().bit_generator.state,
                "layers": {str(i): layer.rng.bit_generator.state for i, layer in enumerate(self.model)
                           if getattr(layer, "rng", None) is not None}}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.train.load_state_dict(state["loader"])
        B.host_rng().bit_generator.state = state["global"]
        for i, s in state.get("layers", {}).items():
            self.model[int(i)].rng.bit_generator.state = s

    def save(self, path: str | Path) -> Path:
        """Write a resumable checkpoint (data-parallel: rank 0 only; it holds every rank's state)."""
        if self.dp is not None and not self.dp.is_root:
            return Path(path)
        return ckpt.save(path, self.model, self.optimizer, scheduler=self.scheduler, epoch=self.epoch,
                         rng_state=self.rng_state(), history=self.history.epochs, extra=self.extra)

    def resume(self, path: str | Path) -> None:
        meta = ckpt.restore(path, self.model, self.optimizer, self.scheduler)
        self.epoch = int(meta["epoch"])
        self.history = History(list(meta.get("history", [])))
        if meta.get("rng_state"):
            self.set_rng_state(meta["rng_state"])

    def step(self, xb: Any, yb: Any, step: int) -> tuple[float, Any]:
        """One optimisation step on a batch: forward, loss, backward, update; returns ``(loss, logits)``.

        xb: (B, C, H, W) on the backend, yb: (B,) integer labels.  ``step`` (1-based, within the
        epoch) only names the place in the divergence error.
        """
        out = self.model.forward(xb, train=True)
        loss = float(self.loss.forward(out, yb))
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {loss} at epoch {self.epoch + 1}, step {step} of {len(self.train)} "
                f"(lr {self.optimizer.lr:g}); lower the learning rate or check the inputs for NaN/inf")
        dout = self.loss.backward()
        if self.dp is not None:  # this rank's share of the global batch's mean; gradients summed over ranks
            dout = self.dp.scale_loss_grad(dout)
        self.model.backward(dout)
        if self.dp is not None:
            self.dp.reduce_gradients(self.optimizer.params)
        self.optimizer.step()
        return loss, out

    def train_epoch(self, progress: bool) -> dict[str, float]:
        """One pass over the training batches; returns mean loss and accuracy over the epoch."""
        tally = Tally()
        bar = _progress(len(self.train), f"epoch {self.epoch + 1}", progress)
        for step, (xb, yb) in enumerate(self.train, start=1):
            loss, out = self.step(xb, yb, step)
            tally.add(loss, out, yb)
            if bar is not None:
                bar.update(1)
                if step % 20 == 0 or step == len(self.train):
                    bar.set_postfix(**tally.postfix())
        if bar is not None:
            bar.close()
        if self.dp is not None:
            tally.loss_sum, tally.correct, tally.seen = self.dp.sum([tally.loss_sum, tally.correct, tally.seen])
        return tally.result()


class Tally:
    """Running loss and accuracy over an epoch: the one place batch results are summed.

    ``add(loss, logits, labels)`` with loss the batch mean, logits (B, K), labels (B,);
    ``result()`` gives the sample-weighted means ``{"loss": ..., "accuracy": ...}``.
    """

    def __init__(self) -> None:
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: float, logits: Any, labels: Any) -> None:
        xp = array_api_compat.array_namespace(logits)
        n = int(labels.shape[0])
        self.loss_sum += loss * n
        self.correct += int(xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64)))
        self.seen += n

    def result(self) -> dict[str, float]:
        return {"loss": self.loss_sum / self.seen, "accuracy": self.correct / self.seen}

    def postfix(self) -> dict[str, str]:
        r = self.result()
        return {"loss": f"{r['loss']:.4f}", "acc": f"{r['accuracy']:.4f}"}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(model: Sequential, optimizer: Any, train: tuple[Any, Any], *, val: tuple[Any, Any] | None = None,
        val_split: float | None = None, epochs: int = 1, batch_size: int = 128, loss: Any = None,
        scheduler: Any = None, callbacks: Sequence[Callback] = (), seed: int | None = None,
        on_device: bool = False, transform: Any = None, drop_last: bool = False, resume: str | Path | None = None,
        progress: bool = True, log: Callable[[str], None] | None = print,
        extra: dict[str, Any] | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs (in total: a resumed run continues up to that count).

    train: ``(x, y)`` host arrays, x: (N, C, H, W) float, y: (N,) integer labels.
    val / val_split: validation data, or the fraction of ``train`` held out for it (seeded).
    scheduler: an LR schedule stepped once per epoch.  callbacks: see :class:`Callback`.
    seed: fixes the shuffling order, the validation split and the global host RNG (dropout), each
        from its own stream (:func:`xpcnn.backend.seed_stream`).
    on_device: keep the whole data set on the backend's device and slice batches there.
    transform: host-side augmentation of each training batch (see :mod:`xpcnn.datasets.augment`).
    drop_last: skip the last, smaller batch of each epoch (batch norm cannot train on a batch of one).
    resume: a checkpoint written by :class:`ModelCheckpoint` (or ``Trainer.save``) to continue from.
    Raises :class:`TrainingDivergedError` when the loss becomes NaN or infinite.
    """
    loss = loss or SoftmaxCrossEntropy()
    x, y = _as_xy(train)
    dp = distributed.current()  # None unless launched with several ranks (or distributed.init() was called)
    if dp is not None:
        seed = dp.common_seed(seed)
        progress, log = progress and dp.is_root, log if dp.is_root else None

    def stream(purpose: str) -> np.random.Generator | None:
        return None if seed is None else B.seed_stream(seed, purpose)

    if seed is not None:
        B.seed(stream("dropout"))
    if val_split is not None:
        if val is not None:
            raise ValueError("pass either val or val_split, not both")
        x, y, xv, yv = train_val_split(x, y, val_split, rng=stream("val_split"))
        val = (xv, yv)
    make_loader = BatchIterator if dp is None else dp.make_loader
    loader = make_loader(x, y, batch_size, shuffle=True, rng=stream("shuffle"), on_device=on_device,
                         x_dtype=_model_dtype(model), transform=transform, drop_last=drop_last)
    trainer = Trainer(model, optimizer, loss, loader, scheduler, extra)
    trainer.dp = dp
    if resume is not None:
        trainer.resume(resume)
        if log:
            log(f"resumed from {resume} at epoch {trainer.epoch}")
    if dp is not None:  # same configuration, data and state on every rank; rank 0's weights everywhere
        dp.start(model, {"model": model.config(), "optimizer": optimizer.state_dict(), "data": (x, y), "val": val,
                         "fit": [epochs, batch_size, seed, drop_last, on_device, distributed.describe(transform),
                                 distributed.describe(scheduler)],
                         "rng": trainer.rng_state(), "epoch": trainer.epoch, "extra": extra})
    with nullcontext() if dp is None else dp.attach(model):
        try:
            _train_epochs(trainer, epochs, val, on_device, progress, log, callbacks)
        except distributed.CollectiveError:
            raise
        except BaseException as exc:
            if dp is not None:
                dp.fail(exc)  # a lone failing rank ends them all (MPI_Abort) instead of leaving them waiting
            raise
    return trainer.history


def _train_epochs(trainer: Trainer, epochs: int, val: Any, on_device: bool, progress: bool,
                  log: Callable[[str], None] | None, callbacks: Sequence[Callback]) -> None:
    """The epoch loop of :func:`fit`: train, validate, schedule, log, callbacks (which may stop it)."""
    model, optimizer, scheduler, loss = trainer.model, trainer.optimizer, trainer.scheduler, trainer.loss
    while trainer.epoch < epochs:
        start = time.perf_counter()
        logs: dict[str, float] = {"epoch": trainer.epoch + 1, "lr": optimizer.lr}
        logs.update(trainer.train_epoch(progress))
        if val is not None:
            v = evaluate(model, val, loss, on_device=on_device)
            logs.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        if scheduler is not None:
            scheduler.step()
        trainer.epoch += 1
        logs["time_s"] = time.perf_counter() - start
        trainer.history.epochs.append(logs)
        if log:
            log(_format_logs(logs, epochs))
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(trainer, logs)) or stop
        if trainer.dp is not None:
            trainer.dp.check_replicas(model)
        if stop:
            break


def _format_logs(logs: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(logs['epoch'])}/{epochs}", f"loss {logs['loss']:.4f}", f"acc {logs['accuracy']:.4f}"]
    if "val_loss" in logs:
        parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
    parts += [f"lr {logs['lr']:.2e}", f"{logs['time_s']:.1f}s"]
    return "  ".join(parts)
