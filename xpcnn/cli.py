"""The ``xpcnn`` command line: ``train``, ``evaluate`` and ``info`` (parser and dispatch; one module per command).

    xpcnn train                                  # LeNet-5 on the bundled MNIST, NumPy backend
    xpcnn train --model bn --dataset fashion-mnist --epochs 15
    XPCNN_BACKEND=cupy xpcnn train               # same, on a CUDA GPU
    xpcnn evaluate runs/<run>/checkpoint.npz
    xpcnn info
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, distributed, optim
from . import backend as B
from .cli_common import DATASETS
from .cli_evaluate import cmd_evaluate
from .cli_info import info
from .cli_train import cmd_train
from .recipes import RECIPES, SCHEDULES

__all__ = ["info", "main"]

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpcnn", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("--model", choices=sorted(RECIPES), default="lenet5")
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument("--data-dir", help="directory with the four IDX files (default: see the README's lookup order)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=sorted(optim.OPTIMIZERS))
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--schedule", choices=SCHEDULES)
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
    e.add_argument("--dataset", choices=DATASETS, help="default: the one it was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--backend")

    sub.add_parser("info", help="backend, device, versions and BLAS")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        print(json.dumps(info(), indent=2))
        return 0
    except (B.BackendError, FileNotFoundError, ValueError, distributed.MissingMPIError) as exc:
        dp = distributed.active()
        if dp is not None and not isinstance(exc, distributed.CollectiveError):
            dp.fail(exc)  # the other ranks would wait for this one forever: end them all, with the message
        print(f"xpcnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
