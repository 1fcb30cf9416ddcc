"""The training loop: ``fit`` / ``evaluate`` and a history; callbacks live in :mod:`xpcnn.callbacks`.

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
from . import functional as F
from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from .datasets.loader import BatchIterator
from .datasets.preprocess import train_val_split
from .layers.mask_bank import MaskBank
from .losses import SoftmaxCrossEntropy, labels_prevalidated
from .model import Sequential

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


def _as_xy(data: Any, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(B.to_numpy(data[0])), np.asarray(B.to_numpy(data[1]))
    raise TypeError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")


def _num_classes(model: Sequential, x: np.ndarray) -> int | None:
    """K, the model's number of outputs for samples shaped like ``x[0]`` (None when the model cannot say)."""
    shapes = getattr(model, "output_shapes", None)
    if shapes is None:
        return None
    try:
        out = shapes((1, *x.shape[1:]))[-1]
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"the model cannot take samples of shape {tuple(x.shape[1:])}: {exc}") from None
    return int(out[-1]) if len(out) == 2 else None


def check_data(model: Sequential, x: np.ndarray, y: np.ndarray, name: str = "train") -> None:
    """Check ``x: (N, ...)`` floating or integer images and ``y: (N,)`` integer labels in ``0..K-1``.

    K is the model's number of outputs.  Raises ValueError / TypeError naming ``name``, what was
    expected and what was received (the first offending label and its index).
    """
    if x.ndim < 2:
        raise ValueError(f"{name} x must have a sample axis and at least one feature axis, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} x must be a numeric array, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty (x has shape {x.shape})")
    if y.ndim != 1:
        hint = "; pass y.ravel()" if y.ndim == 2 and y.shape[1] == 1 else ""
        raise ValueError(f"{name} y must be class labels of shape (N,), got shape {y.shape}{hint}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} x and y have different numbers of samples: {x.shape[0]} and {y.shape[0]}")
    if y.dtype.kind not in "iu":
        bad = ""
        if y.dtype.kind == "f":
            frac = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
            if frac.size:
                bad = f" ({float(y[frac[0]])!r} at index {int(frac[0])})"
        raise TypeError(f"{name} y must be integer class labels, got dtype {y.dtype}{bad}")
    k = _num_classes(model, x)
    low, high = int(y.min()), int(y.max())
    if low < 0 or (k is not None and high >= k):
        index = int(np.argmin(y)) if low < 0 else int(np.argmax(y))
        limit = f"0..{k - 1} (the model has {k} outputs)" if k is not None else ">= 0"
        raise ValueError(f"{name} y must hold labels in {limit}, got {int(y[index])} at index {index}")


def evaluate(model: Sequential, data: tuple[Any, Any], loss: Any = None, batch_size: int = 512,
             on_device: bool = False) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (eval mode) on ``(x, y)``: ``{"loss": ..., "accuracy": ...}``."""
    return evaluate_with_predictions(model, data, loss, batch_size, on_device)[0]


def evaluate_with_predictions(model: Sequential, data: tuple[Any, Any], loss: Any = None, batch_size: int = 512,
                              on_device: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate` and the predicted class of every sample, (N,) int64 on the host, in one pass.

    Data-parallel (:mod:`xpcnn.distributed`): every rank calls it; each evaluates a contiguous part and
    every rank gets the reduced metrics and all predictions.
    """
    dp = distributed.current()
    if dp is not None:
        x, y = _as_xy(data)
        check_data(model, x, y, "evaluation")
        return dp.evaluate(x, y, lambda part: _evaluate_here(model, part, loss, batch_size, on_device))
    return _evaluate_here(model, data, loss, batch_size, on_device)


def _evaluate_here(model: Sequential, data: tuple[Any, Any], loss: Any, batch_size: int,
                   on_device: bool) -> tuple[dict[str, float], np.ndarray]:
    loss = loss or SoftmaxCrossEntropy()
    x, y = _as_xy(data)
    check_data(model, x, y, "evaluation")
    batches = BatchIterator(x, y, _positive_int("batch_size", batch_size), shuffle=False, on_device=on_device,
                            x_dtype=_model_dtype(model))
    tally = Tally(check_every=None)
    predictions = []
    # labels checked on the host above; sums and predictions stay on the device until the end
    with B.device_scope(batches.backend), labels_prevalidated(loss):
        for xb, yb in batches:
            out = model.forward(xb, train=False)
            _check_label_range(batches, out)
            tally.add(loss.forward(out, yb), out, yb)
            xp = array_api_compat.array_namespace(out)
            predictions.append(xp.argmax(out, axis=1))
        result = tally.result()
        joined = predictions[0] if len(predictions) == 1 else xp.concat(predictions, axis=0)
        return result, np.asarray(B.to_numpy(joined)).astype(np.int64)


def _check_label_range(loader: BatchIterator, logits: Any) -> None:
    """The loader's labels (range read on the host) against the model's classes (a shape: no device read)."""
    if loader.label_range is not None and getattr(logits, "ndim", 0) == 2:
        F.check_label_range(*loader.label_range, int(logits.shape[1]))


def _model_dtype(model: Sequential) -> str:
    ref = next((p.value for p in model.parameters()), None)
    return "float32" if ref is None else B.dtype_name(ref.dtype)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


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


class Tally:
    """Running loss and accuracy over an epoch, kept on the device: the one place batch results are summed.

    ``add(loss, logits, labels, step)`` with ``loss`` the batch mean (a 0-d array), logits (B, K),
    labels (B,): device operations only.  Every ``check_every`` steps (None: only at the end) the
    running loss sum is read once and, if it is not finite, the steps since the previous check are
    read one by one to name the first bad one (``diverged(value, step, first, last)`` builds the
    error).  ``result()`` reads the sums once: ``{"loss": ..., "accuracy": ...}`` (sample-weighted).
    """

    def __init__(self, check_every: int | None = 50,
                 diverged: Callable[[float, int, int, int], Exception] | None = None) -> None:
        if check_every is not None and (isinstance(check_every, bool) or int(check_every) < 1):
            raise ValueError(f"check_every must be an integer >= 1 or None, got {check_every!r}")
        self.check_every = None if check_every is None else int(check_every)
        self.diverged = diverged
        self.loss_sum: Any = None
        self.correct: Any = None
        self.seen = 0
        self._pending: list[tuple[int, Any]] = []
        self._read: dict[str, float] = {}
        self._wide: bool | None = None

    def add(self, loss: Any, logits: Any, labels: Any, step: int = 0) -> bool:
        """Sum one batch on the device; returns True when this call read the tally (a check)."""
        xp = array_api_compat.array_namespace(logits)
        n = int(labels.shape[0])
        if self._wide is None:  # sum in float64 where the device has it (asked once)
            self._wide = _has_float64(xp, loss)
        weighted = (xp.astype(loss, xp.float64) if self._wide else loss) * float(n)
        hits = xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64))
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = hits if self.correct is None else self.correct + hits
        self.seen += n
        if self.diverged is not None:
            self._pending.append((step, loss))
        if self.check_every is not None and len(self._pending) >= self.check_every:
            self.check()
            return True
        return False

    def check(self) -> None:
        """Read the running loss sum (one device-to-host copy); raise if a pending step diverged."""
        if self.loss_sum is None:
            return
        total = float(B.to_numpy(self.loss_sum))
        self._read = {"loss": total / self.seen}
        if not math.isfinite(total) and self.diverged is not None and self._pending:
            first, last = self._pending[0][0], self._pending[-1][0]
            for step, loss in self._pending:  # the failure path only: read the pending steps
                value = float(B.to_numpy(loss))
                if not math.isfinite(value):
                    raise self.diverged(value, step, first, last)
            raise self.diverged(total, last, first, last)  # finite steps whose sum overflowed
        self._pending.clear()

    def result(self) -> dict[str, float]:
        self.check()
        correct = int(B.to_numpy(self.correct)) if self.correct is not None else 0
        return {"loss": self._read.get("loss", math.nan), "accuracy": correct / max(self.seen, 1)}

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self._read.get('loss', math.nan):.4f}"}


def _mask_banks(layer: Any) -> list[Any]:
    """The dropout mask banks of ``layer`` and of the layers it holds (Sequential, nested blocks)."""
    leaves = [leaf for _, leaf in layer.named_leaves()] if hasattr(layer, "named_leaves") else [layer]
    return [leaf.masks for leaf in leaves if isinstance(getattr(leaf, "masks", None), MaskBank)]


def _has_float64(xp: Any, x: Any) -> bool:
    """``x``'s device supports float64 (CPU, CUDA; not array-api-strict's ``no_float64`` device)."""
    try:
        return "float64" in xp.__array_namespace_info__().dtypes(device=array_api_compat.device(x),
                                                                 kind="real floating")
    except (AttributeError, TypeError):  # a namespace without the inspection API
        return True


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _check_fit_args(epochs: Any, batch_size: Any, val_split: Any, seed: Any, callbacks: Any) -> None:
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    if val_split is not None:
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float, np.floating, np.integer)) \
                or not 0.0 < float(val_split) < 1.0:
            raise ValueError(f"val_split must be a fraction in (0, 1) (or None for no split), got {val_split!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise TypeError(f"every callback needs an on_epoch_end(trainer, logs) method; got {type(cb).__name__}")


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
