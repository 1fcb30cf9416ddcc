"""``xpcnn evaluate CHECKPOINT``: the test loss and accuracy of a checkpoint written by ``xpcnn train``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import backend as B
from . import checkpoint, cli_common, train
from .cli_common import CLIError

__all__ = ["cmd_evaluate", "load_checkpoint"]


def load_checkpoint(path: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(model, meta, normalization stats)`` of a checkpoint written by ``xpcnn train``; CLIError otherwise."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{path} is a directory; pass the checkpoint file (e.g. {p / 'checkpoint.npz'})")
    try:
        model, meta = checkpoint.load_model(p)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such checkpoint") from None
    except checkpoint.CheckpointError as exc:
        raise CLIError(str(exc)) from None
    stats = (meta.get("extra") or {}).get("normalization")
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise CLIError(f"{path} has no normalization statistics; it was not written by `xpcnn train`")
    return model, meta, stats


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print ``{"checkpoint", "dataset", "epoch", "test_samples", "test_loss", "test_accuracy"}`` as JSON."""
    if args.backend:
        B.set_backend(args.backend)
    model, meta, stats = load_checkpoint(args.checkpoint)
    extra = meta.get("extra", {})
    dataset = args.dataset or extra.get("dataset", "mnist")
    ds = cli_common.load_data(dataset, args.data_dir)
    x, y = cli_common.normalize(ds.x_test, stats), ds.y_test.astype("int64")
    try:
        train.check_data(model, x, y, name=f"{dataset} test")
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{args.checkpoint}: {exc}") from None
    result = train.evaluate(model, (x, y), batch_size=args.batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, "epoch": meta["epoch"],
                      "test_samples": int(y.shape[0]), "test_loss": result["loss"],
                      "test_accuracy": result["accuracy"]}, indent=2))
    return 0
