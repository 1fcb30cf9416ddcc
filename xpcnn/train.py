"""The training loop: ``fit``, the ``Trainer`` and a history; callbacks live in :mod:`xpcnn.callbacks`,
``evaluate`` in :mod:`xpcnn.evaluation`, the device tally in :mod:`xpcnn.tally`, argument and label checks in
:mod:`xpcnn.fit_checks` (all re-exported here).

    from xpcnn import models, optim, train
    from xpcnn.datasets import load_mnist, to_float
    x_train, y_train, x_test, y_test = load_mnist()
    model = models.lenet5(rng=0)
    history = train.fit(model, optim.Adam(model.parameters()), (to_float(x_train), y_train),
                        val_split=0.1, epochs=5, batch_size=128, seed=0)   # 10% of train held out
    test = train.evaluate(model, (to_float(x_test), y_test))              # the test set: once, at the end

Randomness comes from host generators: ``seed`` fixes the shuffling order, the validation split and
the model's dropout generator (``Sequential.set_rng``), each from its own stream, so a run is
reproducible and a resumed run (``fit(..., resume=path)``) continues exactly where the checkpoint
left off.  No module-global generator is touched.

Bad arguments (labels that are not integers in ``0..K-1`` of shape ``(N,)``, a non-positive
``epochs`` or ``batch_size``, a ``val_split`` outside ``(0, 1)``, ...) raise ``ValueError`` or
``TypeError`` naming what was expected and what was received, before any training starts.
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
from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from .datasets.loader import BatchIterator
from .datasets.preprocess import train_val_split
from .evaluation import evaluate, evaluate_with_predictions
from .fit_checks import _as_xy, _check_fit_args, _check_label_range, _model_dtype, check_data
from .layers.mask_bank import MaskBank
from .losses import SoftmaxCrossEntropy, labels_prevalidated
from .model import Sequential
from .tally import Tally

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "History", "ModelCheckpoint", "Tally", "Trainer",
           "TrainingDivergedError", "check_data", "evaluate", "evaluate_with_predictions", "fit"]


class TrainingDivergedError(FloatingPointError):
    """The training or validation loss, or a weight, became NaN or infinite; the message says where."""


@dataclass
class History:
    """Per-epoch records: ``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``time_s``."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def __len__(self) -> int:
        return len(self.epochs)


class Trainer:
    """The state of one training run; :func:`fit` is the usual entry point."""

    def __init__(self, model: Sequential, optimizer: Any, loss: Any, train: BatchIterator, scheduler: Any = None,
                 extra: dict[str, Any] | None = None, check_every: int | None = 50) -> None:
        self.model, self.optimizer, self.loss, self.train = model, optimizer, loss, train
        self.scheduler, self.extra = scheduler, extra or {}
        #: read the loss tally (divergence check, progress) every this many steps; None: once per epoch
        self.check_every = check_every
        self.history = History()
        self.epoch = 0
        #: the data-parallel hooks (:class:`xpcnn.distributed.DataParallel`), None in a single process
        self.dp: Any = None

    def rng_state(self) -> dict[str, Any]:
        """The loader's and the model's generator states (JSON-able)."""
        return {"loader": self.train.state_dict(), "model": self.model.rng_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state`; also reads checkpoints of earlier versions (``global`` + ``layers``)."""
        self.train.load_state_dict(state["loader"])
        if "model" in state:
            self.model.load_rng_state(state["model"])
        else:  # before Sequential.set_rng: dropout drew from the global generator, now the model's shared one
            self.model.load_rng_state({"shared": state.get("global"), "layers": state.get("layers", {})})

    def save(self, path: str | Path) -> Path:
        """Write a resumable checkpoint (data-parallel: rank 0 only; it holds every rank's state)."""
        if self.dp is not None and not self.dp.is_root:
            return Path(path)
        return ckpt.save(path, self.model, self.optimizer, scheduler=self.scheduler, epoch=self.epoch,
                         rng_state=self.rng_state(), history=self.history.epochs, extra=self.extra)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load model, optimizer, scheduler, epoch, history and RNG states from ``path``; returns its metadata."""
        meta = ckpt.restore(path, self.model, self.optimizer, self.scheduler)
        self.epoch = int(meta["epoch"])
        self.history = History(list(meta.get("history", [])))
        if meta.get("rng_state"):
            self.set_rng_state(meta["rng_state"])
        return meta

    def set_hyper(self, **hyper: Any) -> None:
        """Replace optimizer hyper-parameters (after a resume); ``lr`` with a scheduler becomes its base rate."""
        for name, value in hyper.items():
            if name == "lr" and self.scheduler is not None:
                self.optimizer.lr = value  # checked like any assignment
                self.scheduler.base_lr = float(value)
                self.optimizer.lr = self.scheduler.get_lr()
            else:
                setattr(self.optimizer, name, value)

    def step(self, xb: Any, yb: Any, step: int) -> tuple[Any, Any]:
        """One optimisation step on a batch: forward, loss, backward, update; returns ``(loss, logits)``.

        xb: (B, C, H, W) on the backend, yb: (B,) integer labels.  ``loss`` is a 0-d array on the
        device, not read here (no host sync): :class:`Tally` checks it every ``check_every`` steps.
        ``step`` (1-based, within the epoch) is kept for the divergence error.
        """
        out = self.model.forward(xb, train=True)
        if step == 1:
            _check_label_range(self.train, out)  # before the first update: host integers only
        loss = self.loss.forward(out, yb)
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
        tally = Tally(self.check_every, self._diverged)
        bar = _progress(len(self.train), f"epoch {self.epoch + 1}", progress)
        banks = _mask_banks(self.model)
        for bank in banks:  # dropout masks of the whole epoch: one host-to-device copy per layer
            bank.plan(self.train.samples_per_epoch)
        # the chosen GPU current (cupy:N); the labels' range was read on the host
        try:
            with B.device_scope(self.train.backend), labels_prevalidated(self.loss):
                for step, (xb, yb) in enumerate(self.train, start=1):
                    loss, out = self.step(xb, yb, step)
                    if tally.add(loss, out, yb, step) and bar is not None:
                        bar.set_postfix(**tally.postfix())  # only when the tally was read anyway
                    if bar is not None:
                        bar.update(1)
                if self.dp is not None:
                    self.dp.reduce_tally(tally)
                result = tally.result()
        finally:
            for bank in banks:
                bank.plan(0)
        if bar is not None:
            bar.close()
        return result

    def _diverged(self, value: float, step: int, first: int, last: int) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"loss became {value} at epoch {self.epoch + 1}, step {step} of {len(self.train)} "
            f"(lr {self.optimizer.lr:g}), found when steps {first}-{last} were checked; "
            "lower the learning rate or check the inputs for NaN/inf")

    def check_weights(self) -> None:
        """Raise :class:`TrainingDivergedError` naming the first parameter holding NaN or inf."""
        for ref in self.model.parameters():
            xp = array_api_compat.array_namespace(ref.value)
            if not bool(xp.all(xp.isfinite(ref.value))):
                raise TrainingDivergedError(f"parameter {ref.name} holds NaN or inf after epoch {self.epoch + 1} "
                                            f"(lr {self.optimizer.lr:g}); lower the learning rate")


def _mask_banks(layer: Any) -> list[Any]:
    """The dropout mask banks of ``layer`` and of the layers it holds (Sequential, nested blocks)."""
    leaves = [leaf for _, leaf in layer.named_leaves()] if hasattr(layer, "named_leaves") else [layer]
    return [leaf.masks for leaf in leaves if isinstance(getattr(leaf, "masks", None), MaskBank)]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def fit(model: Sequential, optimizer: Any, train: tuple[Any, Any], *, val: tuple[Any, Any] | None = None,
        val_split: float | None = None, epochs: int = 1, batch_size: int = 128, loss: Any = None,
        scheduler: Any = None, callbacks: Sequence[Callback] = (), seed: int | None = None,
        on_device: bool = False, transform: Any = None, drop_last: bool = False, resume: str | Path | None = None,
        resume_hyper: dict[str, Any] | None = None, progress: bool = True,
        log: Callable[[str], None] | None = print, extra: dict[str, Any] | None = None,
        check_every: int | None = 50) -> History:
    """Train ``model`` for ``epochs`` epochs (in total: a resumed run continues up to that count).

    train: ``(x, y)`` host arrays, x: (N, C, H, W) float, y: (N,) integer labels in ``0..K-1``.
    val / val_split: validation data, or the fraction of ``train`` held out for it (seeded); it gives
        the per-epoch ``val_loss`` / ``val_accuracy`` that callbacks select on.  Keep the test set out.
    scheduler: an LR schedule stepped once per epoch.  callbacks: see :class:`Callback`.
    seed: fixes the shuffling order, the validation split and the model's dropout generator, each
        from its own stream (:func:`xpcnn.backend.seed_stream`).
    on_device: keep the whole data set on the backend's device and slice batches there (and augment
        there: the epoch's augmentation parameters are drawn on the host and copied once).
    transform: augmentation of each training batch (see :mod:`xpcnn.datasets.augment`).
    drop_last: skip the last, smaller batch of each epoch (batch norm cannot train on a batch of one).
    resume: a checkpoint written by :class:`ModelCheckpoint` (or ``Trainer.save``) to continue from.
    resume_hyper: optimizer hyper-parameters that replace the checkpoint's after resuming
        (``{"lr": 1e-4, "weight_decay": 0.0}``; ``lr`` with a scheduler is its new base rate).
    check_every: read the device's loss tally every this many steps (divergence check, progress bar);
        None reads it once per epoch.  Nothing else is read from the device during an epoch: labels
        are checked once on the host, loss and accuracy are summed on the device.
    Raises :class:`TrainingDivergedError` when the training or validation loss, or a weight, becomes
    NaN or infinite (before the callbacks of that epoch run, so no checkpoint is written from it); a
    training loss at the next check, naming the first bad step and the checked range.
    """
    loss = loss or SoftmaxCrossEntropy()
    x, y = _as_xy(train, "train")
    _check_fit_args(epochs, batch_size, val_split, seed, callbacks)
    check_data(model, x, y, "train")
    dp = distributed.current()  # None unless launched with several ranks (or distributed.init() was called)
    if dp is not None:
        seed = dp.common_seed(seed)
        progress, log = progress and dp.is_root, log if dp.is_root else None

    def stream(purpose: str) -> np.random.Generator | None:
        return None if seed is None else B.seed_stream(seed, purpose)

    if seed is not None and hasattr(model, "set_rng"):
        model.set_rng(stream("dropout"))
    if val_split is not None:
        if val is not None:
            raise ValueError("pass either val or val_split, not both")
        x, y, xv, yv = train_val_split(x, y, float(val_split), rng=stream("val_split"))
        val = (xv, yv)
    if val is not None:
        check_data(model, *_as_xy(val, "val"), "val")
    make_loader = BatchIterator if dp is None else dp.make_loader
    loader = make_loader(x, y, batch_size, shuffle=True, rng=stream("shuffle"), on_device=on_device,
                         x_dtype=_model_dtype(model), transform=transform, drop_last=drop_last)
    trainer = Trainer(model, optimizer, loss, loader, scheduler, extra, check_every)
    trainer.dp = dp
    if resume is not None:
        trainer.resume(resume)
        if resume_hyper:
            trainer.set_hyper(**resume_hyper)
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
        trainer.check_weights()
        if val is not None:
            v = evaluate(model, val, loss, on_device=on_device)
            if not (math.isfinite(v["loss"])):
                raise TrainingDivergedError(f"validation loss became {v['loss']} after epoch {trainer.epoch + 1} "
                                            f"(training loss {logs['loss']:.4g}, lr {optimizer.lr:g}); "
                                            "lower the learning rate")
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
