"""``xpcnn train``: check everything, then train the model of a recipe and write a run directory.

Two phases.  :func:`prepare` resolves the flags against the recipe (and, with ``--resume``, against
the checkpoint), loads and splits the data, builds the model and optimizer and creates the run
directory: any bad input fails here, as a :class:`~.cli_common.CLIError` with exit status 2,
before any long work and without leaving a directory behind.  :func:`run` trains (a held-out
validation split gives the per-epoch metrics; the test set is evaluated once, at the end) and
writes ``checkpoint.npz``, ``metrics.csv``, ``metrics.json`` and the plots of :mod:`xpcnn.report`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, cli_common, distributed, kernels, models, perf, report, train
from . import backend as B
from . import checkpoint as ckpt
from .callbacks import CSVLogger, EarlyStopping, ModelCheckpoint
from .cli_common import EXIT_FAILURE, CLIError
from .datasets import augment, images_as_float, standardize, train_val_split
from .recipes import RECIPES, Recipe

__all__ = ["Plan", "cmd_train", "prepare", "run"]

#: flags that override a recipe field of the same name
RECIPE_FLAGS = ("optimizer", "lr", "epochs", "batch_size", "schedule", "augment", "weight_decay")
#: flags a resumed run takes from its checkpoint; given explicitly, they must agree with it
RUN_FLAGS = ("model", "dataset", "seed", "val_split", "limit")
#: recipe fields a resumed run cannot change (the optimizer state and the data order depend on them)
FIXED_ON_RESUME = ("optimizer", "schedule", "batch_size", "augment")


@dataclass
class Plan:
    """Everything :func:`run` needs, all checked."""

    args: argparse.Namespace
    recipe: Recipe
    run: dict[str, Any]            # model, dataset, seed, val_split, limit
    model: Any
    optimizer: Any
    scheduler: Any
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    stats: dict[str, float]
    transform: Any
    out: Path
    created: bool
    resume_hyper: dict[str, float]
    resumed_epoch: int


def _resume_meta(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--resume {path} is a directory; pass the checkpoint file (e.g. {p / 'checkpoint.npz'})")
    try:
        meta, _, _ = ckpt.load(p)
    except FileNotFoundError:
        raise CLIError(f"--resume {path}: no such checkpoint") from None
    except ckpt.CheckpointError as exc:
        raise CLIError(f"--resume: {exc}") from None
    extra = meta.get("extra") or {}
    if "model" not in extra or "recipe" not in extra:
        raise CLIError(f"--resume {path} was not written by `xpcnn train` (its metadata names no model/recipe)")
    return meta


def _resolve(args: argparse.Namespace) -> tuple[Recipe, dict[str, Any], dict[str, Any] | None]:
    """The effective recipe and run settings: flags > checkpoint (on --resume) > recipe defaults."""
    meta = _resume_meta(args.resume) if args.resume else None
    run: dict[str, Any] = {}
    if meta is None:
        run["model"] = args.model or "lenet5"
        base = RECIPES[run["model"]]
        run.update(dataset=args.dataset or base.dataset, seed=0 if args.seed is None else args.seed,
                   val_split=0.1 if args.val_split is None else args.val_split, limit=args.limit)
        recipe = base.replace(dataset=run["dataset"], **{k: getattr(args, k) for k in RECIPE_FLAGS})
        return recipe, run, None
    extra = meta["extra"]
    for flag in RUN_FLAGS:
        saved = extra.get(flag)
        given = getattr(args, flag)
        if given is not None and flag in extra and given != saved:
            opt = "--" + flag.replace("_", "-")
            raise CLIError(f"--resume: the checkpoint was trained with {opt} {saved}, this run asks for {opt} "
                           f"{given}; drop {opt} to continue that run, or start a new one without --resume")
        run[flag] = given if given is not None else saved
    if run["val_split"] is None and "val_split" not in extra:
        run["val_split"] = 0.0  # written before the held-out split existed: the test set was its validation
    if run["seed"] is None:
        run["seed"] = 0
    known = {f.name for f in Recipe.__dataclass_fields__.values()}
    saved_recipe = Recipe(**{k: v for k, v in extra["recipe"].items() if k in known and k != "model"},
                          model=extra["model"])
    for flag in FIXED_ON_RESUME:
        given = getattr(args, flag)
        if given is not None and given != getattr(saved_recipe, flag):
            opt = "--" + flag.replace("_", "-")
            raise CLIError(f"--resume: the checkpoint was trained with {opt} {getattr(saved_recipe, flag)}, "
                           f"this run asks for {opt} {given}; a resumed run keeps it")
    recipe = saved_recipe.replace(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay)
    if recipe.epochs <= int(meta["epoch"]):
        raise CLIError(f"--resume: nothing left to do: the checkpoint is at epoch {meta['epoch']} and --epochs is "
                       f"{recipe.epochs}; pass a larger --epochs")
    return recipe, run, meta


def _split_and_normalize(ds: Any, recipe: Recipe, run: dict[str, Any]) -> tuple[Any, ...]:
    x, y = ds.x_train, ds.y_train
    if run["limit"] is not None:
        if run["limit"] > x.shape[0]:
            raise CLIError(f"--limit {run['limit']} is more than the {x.shape[0]} training images of "
                           f"{run['dataset']}")
        x, y = x[:run["limit"]], y[:run["limit"]]
    val = None
    if run["val_split"]:
        try:
            x, y, xv, yv = train_val_split(x, y, run["val_split"], rng=B.seed_stream(run["seed"], "val_split"))
        except ValueError as exc:
            raise CLIError(f"--val-split {run['val_split']}: {exc}") from None
        val = (xv, yv)
    x_f = images_as_float(x)
    if recipe.normalize == "unit":  # pixels / 255 in [0, 1], as in the book
        mean, std = 0.0, 1.0
    else:  # statistics of the training part only: the validation and test images are not looked at
        x_f, mean, std = standardize(x_f)
    stats = {"mean": mean, "std": std}
    val_f = None if val is None else (cli_common.normalize(val[0], stats), val[1].astype(np.int64))
    test = (cli_common.normalize(ds.x_test, stats), ds.y_test.astype(np.int64))
    return (x_f, y.astype(np.int64)), val_f, test, stats


def prepare(args: argparse.Namespace) -> Plan:
    """Check every input and build the run (see the module docstring); raises :class:`CLIError`."""
    if args.backend:
        B.set_backend(args.backend)
    be = B.get_backend()
    kernels.kernel_mode()  # a bad $XPCNN_KERNELS fails now, not at the first op
    recipe, run, meta = _resolve(args)
    if (args.early_stop or args.save_best) and not run["val_split"]:
        flag = "--early-stop" if args.early_stop else "--save-best"
        raise CLIError(f"{flag} selects on the validation split, but --val-split is 0; give a split "
                       "(e.g. --val-split 0.1); the test set is never used for selection")
    ds = cli_common.load_data(run["dataset"], args.data_dir)
    train_xy, val, test, stats = _split_and_normalize(ds, recipe, run)
    num_classes = max(10, int(max(train_xy[1].max(), test[1].max())) + 1) if run["dataset"] == "npz" else 10
    channels = int(train_xy[0].shape[1])
    if channels != 1 and "in_channels" not in inspect.signature(models.MODELS[recipe.model]).parameters:
        raise CLIError(f"{run['dataset']}: the images have {channels} channels, but {recipe.model} takes 1; "
                       "use resnet8, resnet20 or separable")
    model = models.build(recipe.model, rng=B.seed_stream(run["seed"], "init"),
                         **({"num_classes": num_classes} if num_classes != 10 else {}),
                         **({"in_channels": channels} if channels != 1 else {}))
    try:
        train.check_data(model, train_xy[0], train_xy[1], name="train")
        train.check_data(model, test[0], test[1], name="test")
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{run['dataset']}: {exc}") from None
    optimizer = recipe.build_optimizer(model.parameters())
    scheduler = recipe.build_scheduler(optimizer)
    transform = augment.parse_augment(recipe.augment, fill=-stats["mean"] / stats["std"])
    resume_hyper = {k: getattr(args, k) for k in ("lr", "weight_decay") if getattr(args, k) is not None}
    if meta is not None:
        try:  # a dry run of the restore: another architecture or optimizer fails here, all or nothing
            ckpt.restore(args.resume, model, optimizer, scheduler)
        except ckpt.CheckpointError as exc:
            raise CLIError(f"--resume: {exc}") from None
    dp = distributed.active()
    if dp is None or dp.is_root:  # data-parallel: rank 0 alone creates (and later writes) the run directory
        out, created = cli_common.make_run_dir(args.out, f"{run['model']}-{run['dataset']}")
        try:
            cli_common.probe_writable(out, 4 * 4 * model.num_params() + (1 << 16))  # params, grads-free Adam slots
        except CLIError:
            cli_common.remove_if_unused(out, created)
            raise
    if dp is not None:
        out, created = Path(dp.comm.bcast_object(str(out) if dp.is_root else None)), dp.is_root and created
    print(f"xpcnn {__version__}: training {run['model']} on {run['dataset']}, backend {be}, run directory {out}")
    return Plan(args, recipe, run, model, optimizer, scheduler, train_xy, val, test, stats, transform,
                out, created, resume_hyper, int(meta["epoch"]) if meta else 0)


def run(plan: Plan) -> int:
    """Train, then evaluate the test set once and write the run directory; returns the exit status."""
    args, recipe, out = plan.args, plan.recipe, plan.out
    dp = distributed.active()
    root = dp is None or dp.is_root
    be = B.get_backend()
    print(plan.model.summary((1, *plan.train[0].shape[1:])))
    extra = {"model": plan.run["model"], "dataset": plan.run["dataset"], "normalization": plan.stats,
             "recipe": recipe.as_dict(), "seed": plan.run["seed"], "val_split": plan.run["val_split"],
             "limit": plan.run["limit"], "input_shape": list(plan.train[0].shape[1:]), "backend": str(be)}
    callbacks: list[Any] = [ModelCheckpoint(out / "checkpoint.npz",
                                            best_path=out / "best.npz" if args.save_best else None,
                                            monitor=args.monitor)]  # writes on rank 0 only
    if root:
        callbacks.append(CSVLogger(out / "metrics.csv"))
    stopper = EarlyStopping(monitor=args.monitor, patience=args.early_stop) if args.early_stop else None
    if stopper is not None:
        callbacks.append(stopper)
    progress = not args.no_progress and sys.stderr.isatty()
    # NumPy's overflow/invalid warnings would add lines to a diverging run's one-line error: the guard reports it
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = train.fit(plan.model, plan.optimizer, plan.train, val=plan.val, epochs=recipe.epochs,
                            batch_size=recipe.batch_size, scheduler=plan.scheduler, callbacks=callbacks,
                            seed=plan.run["seed"], on_device=args.on_device, transform=plan.transform,
                            resume=args.resume, resume_hyper=plan.resume_hyper, progress=progress, extra=extra,
                            check_every=getattr(args, "check_every", 50))
    evaluated_epoch = int(history.epochs[-1]["epoch"]) if history.epochs else plan.resumed_epoch
    if stopper is not None and stopper.stopped_epoch is not None and stopper.best_state is not None:
        evaluated_epoch = stopper.best_epoch or evaluated_epoch
    test, predictions = train.evaluate_with_predictions(plan.model, plan.test, on_device=args.on_device)
    if not root:
        return 0
    # what was really used: a resumed run's checkpoint values unless --lr / --weight-decay replaced them
    used = recipe.replace(lr=plan.scheduler.base_lr if plan.scheduler is not None else plan.optimizer.lr,
                          weight_decay=plan.optimizer.weight_decay)
    metrics = {"xpcnn": __version__, "model": plan.run["model"], "dataset": plan.run["dataset"],
               "backend": str(be), "recipe": used.as_dict(), "seed": plan.run["seed"],
               "val_split": plan.run["val_split"], "limit": plan.run["limit"],
               "train_samples": int(plan.train[0].shape[0]),
               "val_samples": 0 if plan.val is None else int(plan.val[0].shape[0]),
               "test_samples": int(plan.test[0].shape[0]), "resumed_from": args.resume,
               "stopped_early_at": None if stopper is None else stopper.stopped_epoch,
               "evaluated_epoch": evaluated_epoch, "epochs": history.epochs,
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "train_time_s": sum(e["time_s"] for e in history.epochs),
               "world_size": 1 if dp is None else dp.size}
    report.write_metrics(out, metrics)
    report.plots(out, history.epochs, plan.test[1], predictions)
    if not math.isfinite(test["loss"]):
        raise CLIError(f"test loss is {test['loss']} (the weights of epoch {evaluated_epoch} overflow on the test "
                       f"set); metrics are in {out}", EXIT_FAILURE)
    print(f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}  (epoch {evaluated_epoch}, once, "
          f"at the end)  training time {metrics['train_time_s']:.0f}s  ->  {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``xpcnn train`` with parsed ``args``; returns the exit status.

    Under ``mpiexec -n N`` (N > 1) the run is data-parallel (:mod:`xpcnn.distributed`): rank 0 alone
    prints and writes the run directory.
    """
    try:
        dp = distributed.current()
    except distributed.MissingMPIError as exc:  # several ranks but no mpi4py: stop before anything starts
        raise CLIError(str(exc)) from None
    try:
        with contextlib.redirect_stdout(io.StringIO()) if dp is not None and not dp.is_root \
                else contextlib.nullcontext():
            return _cmd_train(args)
    except BaseException as exc:
        if dp is not None and not isinstance(exc, distributed.CollectiveError):
            # the other ranks would wait for this one forever: end them all, with the message
            dp.fail(exc, code=getattr(exc, "code", 1), show_traceback=not isinstance(exc, CLIError))
        raise


def _cmd_train(args: argparse.Namespace) -> int:
    perf.tune_malloc()  # this process only: keep NumPy's large temporaries in the heap (see xpcnn.perf)
    try:
        plan = prepare(args)
    except (ValueError, TypeError, FileNotFoundError, B.BackendError, kernels.KernelError) as exc:
        raise CLIError(str(exc)) from None
    try:
        return run(plan)
    except BaseException as exc:
        dp = distributed.active()
        removed = (dp is None or dp.is_root) and cli_common.remove_if_unused(plan.out, plan.created)
        where = "nothing was kept" if removed else f"the last checkpoint is intact in {plan.out}"
        if isinstance(exc, train.TrainingDivergedError):
            raise CLIError(f"training diverged: {exc}; {where}", EXIT_FAILURE) from None
        if isinstance(exc, OSError):
            raise CLIError(f"writing the run failed: {exc}; {where}", EXIT_FAILURE) from None
        if isinstance(exc, (KeyboardInterrupt, cli_common.Terminated)):
            raise type(exc)(where + ("" if removed else " (continue with --resume)")) from None
        if isinstance(exc, CLIError):
            raise
        if isinstance(exc, Exception):  # anything else that stops a run once it has started is a failed run
            raise CLIError(f"training failed: {type(exc).__name__}: {exc}; {where}", EXIT_FAILURE) from None
        raise
