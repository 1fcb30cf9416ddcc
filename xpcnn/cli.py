"""The xpcnn command line: train, evaluate, predict, export and info.

This module holds the parser and the dispatch; each command lives in its own module
(:mod:`.cli_train`, :mod:`.cli_evaluate`, :mod:`.cli_predict`, :mod:`.cli_info`, and
:func:`xpcnn.interop.main_export` for ``export``).

    xpcnn train                                  # LeNet-5 on the bundled MNIST, NumPy backend
    xpcnn train --model bn --dataset fashion-mnist --data-dir DIR
    XPCNN_BACKEND=cupy xpcnn train               # same, on a CUDA GPU
    xpcnn evaluate runs/<run>/checkpoint.npz
    xpcnn predict runs/<run>/checkpoint.npz digit.png more.npy
    xpcnn export runs/<run>/checkpoint.npz model.onnx   # needs the onnx extra
    xpcnn info

Every error is one line on stderr; exit codes: 0 success, 1 training failure, 2 bad usage or
input, 130 Ctrl-C, 143 SIGTERM (the last checkpoint stays intact).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from typing import Any, NoReturn

from . import __version__, optim
from . import backend as B
from .cli_common import (
    DATASETS,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CLIError,
    Terminated,
    one_line,
    sigterm_raises,
)
from .datasets import augment
from .recipes import RECIPES, SCHEDULES

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``xpcnn train: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _number(kind: str, convert: Any, low: float | None, high: float | None = None, low_open: bool = False,
            high_open: bool = True) -> Any:
    """An argparse ``type=`` that converts with ``convert`` and checks a finite value in a range."""

    a_kind = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {a_kind}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite {kind}, got {text!r}")
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"expected {a_kind} {' and '.join(p for p in (lo, hi) if p)}, "
                                             f"got {text}")
        return value

    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


def _augment_spec(text: str) -> str:
    try:
        augment.parse_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_POSITIVE_INT = _number("integer", int, 1)
_NON_NEGATIVE_INT = _number("integer", int, 0)
_POSITIVE_FLOAT = _number("number", float, 0.0, low_open=True)
_NON_NEGATIVE_FLOAT = _number("number", float, 0.0)
_FRACTION = _number("fraction", float, 0.0, 1.0)


def _recipe_table() -> str:
    head = f"{'model':8} {'dataset':14} {'optimizer':9} {'lr':>7} {'epochs':>6} {'batch':>5} {'schedule':8} augment"
    rows = [f"{name:8} {r.dataset:14} {r.optimizer:9} {r.lr:>7g} {r.epochs:>6} {r.batch_size:>5} {r.schedule:8} "
            f"{r.augment}" for name, r in RECIPES.items()]
    return "per-model defaults (xpcnn/recipes.py), used for every flag not given:\n  " + "\n  ".join([head, *rows])


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xpcnn", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict,export,info}")
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a model and write a run directory", formatter_class=fmt,
                       description="Train a model with its recipe and write runs/<model>-<dataset>-<time>/: "
                       "checkpoint.npz, metrics.json, metrics.csv and (with matplotlib) plots. 10%% of the "
                       "training set is held out for per-epoch validation; the test set is evaluated once, at "
                       "the end.", epilog=_recipe_table())
    t.add_argument("--model", choices=sorted(RECIPES), help="architecture and recipe (default: lenet5)")
    t.add_argument("--dataset", choices=sorted(DATASETS), help="default: the recipe's (see below)")
    t.add_argument("--data-dir", "--data", dest="data_dir", metavar="PATH",
                   help="directory with the four IDX files, or the .npz file of --dataset npz "
                   "(default: the lookup order in the README)")
    t.add_argument("--epochs", type=_POSITIVE_INT, help="total epochs, resumed ones included (default: recipe)")
    t.add_argument("--batch-size", type=_POSITIVE_INT, help="default: recipe")
    t.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS), help="default: recipe")
    t.add_argument("--lr", type=_POSITIVE_FLOAT, help="learning rate (default: recipe); applied on --resume too")
    t.add_argument("--weight-decay", type=_NON_NEGATIVE_FLOAT, help="default: 0; applied on --resume too")
    t.add_argument("--schedule", choices=SCHEDULES, help="LR schedule, stepped per epoch (default: recipe)")
    t.add_argument("--augment", type=_augment_spec, help=f"augmentation, drawn on the host and applied where "
                   f"the data is (default: recipe): "
                   f"{augment.SPEC_HELP}")
    t.add_argument("--val-split", type=_FRACTION, help="fraction of the training set held out for per-epoch "
                   "validation, drawn from the seed; 0 trains on everything (default: 0.1)")
    t.add_argument("--limit", type=_POSITIVE_INT, help="use only the first N training images (quick runs)")
    t.add_argument("--seed", type=_NON_NEGATIVE_INT, help="seeds initialisation, split, shuffling, dropout "
                   "(default: 0)")
    t.add_argument("--early-stop", type=_POSITIVE_INT, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better --monitor value; test on the best weights")
    t.add_argument("--save-best", action="store_true", help="also keep best.npz, the best epoch by --monitor")
    t.add_argument("--monitor", choices=["val_loss", "val_accuracy"], default="val_loss",
                   help="validation metric for --early-stop and --save-best (default: val_loss)")
    t.add_argument("--backend", help="backend spec, overrides $XPCNN_BACKEND (numpy, cupy, cupy:1, torch, ...)")
    t.add_argument("--on-device", action="store_true",
                   help="keep the whole data set on the device (batches and augmentation made there)")
    t.add_argument("--check-every", type=_POSITIVE_INT, default=50, metavar="K",
                   help="read the loss from the device every K steps (divergence check, progress; default 50)")
    t.add_argument("--out", help="a new (or empty) run directory (default: runs/<model>-<dataset>-<time>)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue that run (same model, data, seed, split) "
                   "up to --epochs, in a new run directory")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")

    e = sub.add_parser("evaluate", help="test loss and accuracy of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", choices=sorted(DATASETS), help="default: the one it was trained on")
    e.add_argument("--data-dir", "--data", dest="data_dir", metavar="PATH")
    e.add_argument("--backend")
    e.add_argument("--batch-size", type=_POSITIVE_INT, default=512, help="default: 512")

    r = sub.add_parser("predict", help="classify images (.npy, IDX, PNG) with a checkpoint")
    r.add_argument("checkpoint")
    r.add_argument("images", nargs="+", metavar="IMAGE",
                   help=".npy (H, W) or (N, H, W) or (N, C, H, W); IDX (.gz or raw); 8-bit PNG")
    r.add_argument("--backend")
    r.add_argument("--top", type=_POSITIVE_INT, default=1, help="show the K most likely classes (default: 1)")
    r.add_argument("--json", action="store_true", help="print JSON instead of one line per image")

    sub.add_parser("export", help="write a checkpoint's model as ONNX (see xpcnn export --help)", add_help=False)
    sub.add_parser("info", help="backend, device, kernel sets, versions and BLAS")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from .cli_train import cmd_train

        return cmd_train(args)
    if args.command == "evaluate":
        from .cli_evaluate import cmd_evaluate

        return cmd_evaluate(args)
    if args.command == "predict":
        from .cli_predict import cmd_predict

        return cmd_predict(args)
    from .cli_info import cmd_info

    return cmd_info(args)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:  # its own parser and errors: xpcnn.interop.onnx_export
        from .interop import main_export

        return main_export(argv[1:])
    args = _parser().parse_args(argv)
    try:
        with sigterm_raises():
            return _run(args)
    except KeyboardInterrupt as exc:
        print(f"xpcnn: interrupted (Ctrl-C){'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        print(f"xpcnn: terminated (SIGTERM){'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return EXIT_TERMINATED
    except CLIError as exc:
        print(f"xpcnn: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.code
    except (B.BackendError, FileNotFoundError, ValueError, TypeError, RuntimeError) as exc:
        print(f"xpcnn: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `xpcnn info | head`: the reader left; stay quiet
        _silence_stdout()
        return EXIT_FAILURE
    except OSError as exc:
        print(f"xpcnn: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: still one line, with the type to report it by
        print(f"xpcnn: internal error: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
