"""The ``xpcnn`` command line: ``train``, ``evaluate`` and ``info``.

    xpcnn train                                  # LeNet-5 on the bundled MNIST, NumPy backend
    xpcnn train --model bn --dataset fashion-mnist --epochs 15
    XPCNN_BACKEND=cupy xpcnn train               # same, on a CUDA GPU
    xpcnn evaluate runs/<run>/checkpoint.npz
    xpcnn info
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, checkpoint, models, optim, perf, train
from . import backend as B
from .datasets import augment, load_fashion_mnist, load_mnist, standardize, to_float

DEFAULTS = {  # per-model training recipes used when the flag is not given
    "lenet5": {"optimizer": "adam", "lr": 2e-3, "epochs": 10, "batch_size": 64, "schedule": "cosine",
               "augment": "shift1"},
    "simple": {"optimizer": "adam", "lr": 1e-3, "epochs": 20, "batch_size": 100, "schedule": "none",
               "augment": "none", "normalize": "unit"},
    "wide": {"optimizer": "adam", "lr": 1e-3, "epochs": 10, "batch_size": 128, "schedule": "cosine",
             "augment": "shift2"},
    "bn": {"optimizer": "adam", "lr": 2e-3, "epochs": 15, "batch_size": 128, "schedule": "cosine",
           "augment": "shift1,flip"},
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpcnn", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("--model", choices=sorted(DEFAULTS), default="lenet5")
    t.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    t.add_argument("--data-dir", help="directory with the four IDX files (default: see the README's lookup order)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS))
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", choices=["none", "cosine", "step"])
    t.add_argument("--augment", help="host-side augmentation: none, shift[N] (random N-pixel shifts), flip, "
                   "or a comma list such as shift2,flip")
    t.add_argument("--val-split", type=float, default=None, help="hold out this fraction of train for validation")
    t.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--backend", help="backend spec, overrides $XPCNN_BACKEND (numpy, cupy, cupy:1, torch, ...)")
    t.add_argument("--on-device", action="store_true", help="keep the whole data set on the device")
    t.add_argument("--out", help="run directory (default runs/<model>-<dataset>-<time>)")
    t.add_argument("--resume", help="checkpoint to continue from")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a test set")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="default: the one it was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--backend")

    sub.add_parser("info", help="backend, device, versions and BLAS")
    return p


def _load_data(name: str, data_dir: str | None):
    return (load_mnist if name == "mnist" else load_fashion_mnist)(data_dir)


def _standardize(x_uint8: np.ndarray, stats: dict[str, float]) -> np.ndarray:
    return standardize(to_float(x_uint8), stats["mean"], stats["std"])[0]


def cmd_train(args: argparse.Namespace) -> int:
    perf.tune_malloc()  # this process only: keep NumPy's large temporaries in the heap (see xpcnn.perf)
    if args.backend:
        B.set_backend(args.backend)
    recipe = {k: v for k, v in DEFAULTS[args.model].items()}
    for key in recipe:
        if getattr(args, key, None) is not None:
            recipe[key] = getattr(args, key)
    if args.on_device and args.augment is None and recipe["augment"] != "none":
        # the recipe's augmentation runs on the host, which on_device rules out; an explicit --augment still errors
        print(f"--on-device: the host-side augmentation {recipe['augment']!r} of the {args.model} recipe is off")
        recipe["augment"] = "none"
    be = B.get_backend()
    out = Path(args.out or f"runs/{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"xpcnn {__version__}: training {args.model} on {args.dataset}, backend {be}, run directory {out}")

    ds = _load_data(args.dataset, args.data_dir)
    x_train, y_train = ds.x_train, ds.y_train
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    if recipe.get("normalize", "standardize") == "unit":  # pixels / 255 in [0, 1], as in the book
        x_train_f, mean, std = to_float(x_train), 0.0, 1.0
    else:
        x_train_f, mean, std = standardize(to_float(x_train))
    stats = {"mean": mean, "std": std}
    x_test_f = _standardize(ds.x_test, stats)

    model = models.build(args.model, rng=B.seed_stream(args.seed, "init"))
    print(model.summary((1, 1, 28, 28)))
    opt = optim.OPTIMIZERS[recipe["optimizer"]](model.parameters(), lr=recipe["lr"], weight_decay=args.weight_decay)
    scheduler = None
    if recipe["schedule"] == "cosine":
        scheduler = optim.CosineLR(opt, t_max=recipe["epochs"])
    elif recipe["schedule"] == "step":
        scheduler = optim.StepLR(opt, step_size=max(1, recipe["epochs"] // 3), gamma=0.1)

    extra = {"model": args.model, "dataset": args.dataset, "normalization": stats, "recipe": recipe,
             "seed": args.seed, "backend": str(be)}
    val_split = args.val_split or None  # 0 means no split
    val = None if val_split else (x_test_f, ds.y_test)
    history = train.fit(model, opt, (x_train_f, y_train), val=val, val_split=val_split,
                        epochs=recipe["epochs"], batch_size=recipe["batch_size"], scheduler=scheduler,
                        callbacks=[train.ModelCheckpoint(out / "checkpoint.npz")], seed=args.seed,
                        on_device=args.on_device, transform=augment.build(recipe["augment"], fill=-mean / std),
                        resume=args.resume, progress=not args.no_progress, extra=extra)

    test = train.evaluate(model, (x_test_f, ds.y_test), on_device=args.on_device)
    preds = _predict_labels(model, x_test_f)
    metrics = {"model": args.model, "dataset": args.dataset, "backend": str(be), "recipe": recipe,
               "seed": args.seed, "train_samples": int(x_train.shape[0]), "epochs": history.epochs,
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "train_time_s": sum(e["time_s"] for e in history.epochs)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plots(out, history.epochs, ds.y_test, preds, val_label="validation" if args.val_split else "test")
    print(f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}  "
          f"training time {metrics['train_time_s']:.0f}s  ->  {out}")
    return 0


def _predict_labels(model: Any, x: np.ndarray) -> np.ndarray:
    logits = model.predict(B.asarray(x))
    return np.argmax(B.to_numpy(logits), axis=1)


def _plots(out: Path, epochs: list[dict[str, float]], y_true: np.ndarray, y_pred: np.ndarray,
           val_label: str = "validation") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install 'xpcnn[plots]')")
        return
    ep = [e["epoch"] for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [e["loss"] for e in epochs], "o-", label="train")
    ax2.plot(ep, [e["accuracy"] for e in epochs], "o-", label="train")
    if epochs and "val_loss" in epochs[0]:
        ax1.plot(ep, [e["val_loss"] for e in epochs], "o-", label=val_label)
        ax2.plot(ep, [e["val_accuracy"] for e in epochs], "o-", label=val_label)
    for ax, name in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel("epoch"), ax.set_ylabel(name), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)

    k = int(max(y_true.max(), y_pred.max())) + 1
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_xticks(range(k)), ax.set_yticks(range(k))
    ax.set_title("test confusion matrix")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.backend:
        B.set_backend(args.backend)
    model, meta = checkpoint.load_model(args.checkpoint)
    extra = meta.get("extra", {})
    dataset = args.dataset or extra.get("dataset", "mnist")
    stats = extra.get("normalization")
    if stats is None:
        raise SystemExit(f"{args.checkpoint} has no normalization statistics; it was not written by `xpcnn train`")
    ds = _load_data(dataset, args.data_dir)
    result = train.evaluate(model, (_standardize(ds.x_test, stats), ds.y_test))
    print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, "epoch": meta["epoch"],
                      "test_loss": result["loss"], "test_accuracy": result["accuracy"]}, indent=2))
    return 0


def info() -> dict[str, Any]:
    """Versions, the current backend and device, the available backends and NumPy's BLAS."""
    import array_api_compat

    result: dict[str, Any] = {
        "xpcnn": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "numpy": np.__version__, "array_api_compat": array_api_compat.__version__,
    }
    try:
        be = B.get_backend()
        result.update(backend=be.name, device=str(be.device))
    except B.BackendError as exc:
        result.update(backend=f"error: {exc}")
    result["available_backends"] = B.available_backends()
    for mod in ("cupy", "torch", "array_api_strict"):
        try:
            result[mod] = __import__(mod).__version__
        except ImportError:
            result[mod] = None
    try:
        from threadpoolctl import threadpool_info

        result["blas"] = [{k: v for k, v in lib.items() if k in ("internal_api", "version", "num_threads",
                                                                   "architecture")}
                          for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        config = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
        result["blas"] = config.get("Build Dependencies", {}).get("blas", {})
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        print(json.dumps(info(), indent=2))
        return 0
    except (B.BackendError, FileNotFoundError, ValueError) as exc:
        print(f"xpcnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
