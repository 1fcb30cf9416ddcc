"""``xpcnn evaluate CHECKPOINT``: the test loss and accuracy of a checkpoint written by ``xpcnn train``."""

from __future__ import annotations

import argparse
import json

from . import backend as B
from . import checkpoint, cli_common, train

__all__ = ["cmd_evaluate"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print ``{"checkpoint", "dataset", "epoch", "test_loss", "test_accuracy"}`` as JSON; returns 0."""
    if args.backend:
        B.set_backend(args.backend)
    model, meta = checkpoint.load_model(args.checkpoint)
    extra = meta.get("extra", {})
    dataset = args.dataset or extra.get("dataset", "mnist")
    stats = extra.get("normalization")
    if stats is None:
        raise SystemExit(f"{args.checkpoint} has no normalization statistics; it was not written by `xpcnn train`")
    ds = cli_common.load_data(dataset, args.data_dir)
    result = train.evaluate(model, (cli_common.normalize(ds.x_test, stats), ds.y_test))
    print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": dataset, "epoch": meta["epoch"],
                      "test_loss": result["loss"], "test_accuracy": result["accuracy"]}, indent=2))
    return 0
