"""``xpcnn train``: build the model of a recipe, train it, and write a run directory.

The run directory holds ``checkpoint.npz``, ``metrics.json`` and (with matplotlib) the plots of
:mod:`xpcnn.report`.  Recipes (the defaults of every flag per model) live in :mod:`xpcnn.recipes`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, cli_common, distributed, models, perf, report, train
from . import backend as B
from .datasets import augment, standardize, to_float
from .recipes import RECIPES

__all__ = ["cmd_train"]

#: the flags that override a recipe field of the same name
RECIPE_FLAGS = ("optimizer", "lr", "epochs", "batch_size", "schedule", "augment", "weight_decay")


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``xpcnn train`` with parsed ``args``; returns the exit status.

    Under ``mpiexec -n N`` (N > 1) the run is data-parallel (:mod:`xpcnn.distributed`): rank 0 alone
    prints and writes the run directory.
    """
    dp = distributed.current()
    if dp is not None and not dp.is_root:
        with contextlib.redirect_stdout(io.StringIO()):
            return _train(args, dp)
    return _train(args, dp)


def _train(args: argparse.Namespace, dp: distributed.DataParallel | None) -> int:
    root = dp is None or dp.is_root
    perf.tune_malloc()  # this process only: keep NumPy's large temporaries in the heap (see xpcnn.perf)
    if args.backend:
        B.set_backend(args.backend)
    recipe = RECIPES[args.model].replace(dataset=args.dataset, **{k: getattr(args, k, None) for k in RECIPE_FLAGS})
    if args.on_device and args.augment is None and recipe.augment != "none":
        # the recipe's augmentation runs on the host, which on_device rules out; an explicit --augment still errors
        print(f"--on-device: the host-side augmentation {recipe.augment!r} of the {args.model} recipe is off")
        recipe = recipe.replace(augment="none")
    be = B.get_backend()
    out = Path(args.out or f"runs/{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if dp is not None:  # rank 0's name (the clock may tick between ranks)
        out = Path(dp.comm.bcast_object(str(out)))
    if root:
        out.mkdir(parents=True, exist_ok=True)
    print(f"xpcnn {__version__}: training {args.model} on {args.dataset}, backend {be}, run directory {out}")

    ds = cli_common.load_data(args.dataset, args.data_dir)
    x_train, y_train = ds.x_train, ds.y_train
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    if recipe.normalize == "unit":  # pixels / 255 in [0, 1], as in the book
        x_train_f, mean, std = to_float(x_train), 0.0, 1.0
    else:
        x_train_f, mean, std = standardize(to_float(x_train))
    stats = {"mean": mean, "std": std}
    x_test_f = cli_common.normalize(ds.x_test, stats)

    model = models.build(recipe.model, rng=B.seed_stream(args.seed, "init"))
    print(model.summary((1, 1, 28, 28)))
    opt = recipe.build_optimizer(model.parameters())
    scheduler = recipe.build_scheduler(opt)

    extra = {"model": args.model, "dataset": args.dataset, "normalization": stats, "recipe": recipe.as_dict(),
             "seed": args.seed, "backend": str(be)}
    val_split = args.val_split or None  # 0 means no split
    val = None if val_split else (x_test_f, ds.y_test)
    history = train.fit(model, opt, (x_train_f, y_train), val=val, val_split=val_split,
                        epochs=recipe.epochs, batch_size=recipe.batch_size, scheduler=scheduler,
                        callbacks=[train.ModelCheckpoint(out / "checkpoint.npz")], seed=args.seed,
                        on_device=args.on_device, transform=augment.build(recipe.augment, fill=-mean / std),
                        resume=args.resume, progress=not args.no_progress, extra=extra)

    test = train.evaluate(model, (x_test_f, ds.y_test), on_device=args.on_device)
    if not root:
        return 0
    preds = _predict_labels(model, x_test_f)
    metrics = {"model": args.model, "dataset": args.dataset, "backend": str(be), "recipe": recipe.as_dict(),
               "seed": args.seed, "train_samples": int(x_train.shape[0]), "epochs": history.epochs,
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "train_time_s": sum(e["time_s"] for e in history.epochs), "world_size": 1 if dp is None else dp.size}
    report.write_metrics(out, metrics)
    report.plots(out, history.epochs, ds.y_test, preds, val_label="validation" if args.val_split else "test")
    print(f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}  "
          f"training time {metrics['train_time_s']:.0f}s  ->  {out}")
    return 0


def _predict_labels(model: Any, x: np.ndarray) -> np.ndarray:
    logits = model.predict(B.asarray(x))
    return np.argmax(B.to_numpy(logits), axis=1)
