"""A small training run for the distributed tests: ``[mpiexec -n N] python tests/distributed_worker.py OUT ...``.

Trains ``--model`` (from :mod:`xpcnn.models`) on the first ``--n`` bundled MNIST images with Adam
(or ``--optimizer momentum``)
through :func:`xpcnn.train.fit`; rank 0 (or the single process) writes the final parameters and
buffers, the history and the world size to ``OUT`` (an .npz).  The same function runs in the
pytest process as the one-process oracle.  Fault injection: ``--die-at K`` raises on rank 1 at
step K, ``--kill-at K`` SIGKILLs rank 1 at step K; ``--skew-data`` gives rank 1 different data;
``--init-offset`` gives every rank different initial weights (the broadcast must fix them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--augment", default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="adam", choices=["adam", "momentum"])
    p.add_argument("--checkpoint")
    p.add_argument("--resume")
    p.add_argument("--die-at", type=int)
    p.add_argument("--kill-at", type=int)
    p.add_argument("--skew-data", action="store_true")
    p.add_argument("--init-offset", action="store_true")
    return p.parse_args(argv)


def run(argv: list[str]) -> dict[str, Any]:
    from xpcnn import backend as B
    from xpcnn import distributed, models, optim, train
    from xpcnn.datasets import augment, load_mnist, standardize, to_float

    args = parse(argv)
    dp = distributed.current()
    rank = 0 if dp is None else dp.rank
    ds = load_mnist()
    x, _, _ = standardize(to_float(ds.x_train[:args.n]))
    x, y = x.astype(args.dtype), ds.y_train[:args.n]
    if args.skew_data and rank == 1:
        x = x[::-1].copy()
    init_seed = args.seed + (1000 * rank if args.init_offset else 0)
    model = models.build(args.model, dtype=args.dtype, rng=B.seed_stream(init_seed, "init"))
    opt = optim.Adam(model.parameters(), lr=1e-3) if args.optimizer == "adam" else \
        optim.Momentum(model.parameters(), lr=0.01, momentum=0.9)
    if args.die_at or args.kill_at:
        inner, count = opt.step, [0]

        def step() -> None:
            count[0] += 1
            if rank == 1 and count[0] == args.die_at:
                raise RuntimeError(f"injected failure at step {count[0]}")
            if rank == 1 and count[0] == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            inner()

        opt.step = step  # type: ignore[method-assign]
    callbacks = [train.ModelCheckpoint(args.checkpoint)] if args.checkpoint else []
    history = train.fit(model, opt, (x, y), epochs=args.epochs, batch_size=args.batch, seed=args.seed,
                        transform=augment.build(args.augment), callbacks=callbacks, resume=args.resume,
                        progress=False, log=None)
    state = {k: np.asarray(B.to_numpy(v)) for k, v in model.state_dict().items()}
    result = {"state": state, "history": history.epochs, "world_size": 1 if dp is None else dp.size}
    if rank == 0:
        np.savez(args.out, **state, _meta=np.asarray(json.dumps({k: result[k] for k in ("history", "world_size")})))
    return result


def load(path: str | Path) -> dict[str, Any]:
    with np.load(path) as f:
        meta = json.loads(str(f["_meta"]))
        return {"state": {k: f[k] for k in f.files if k != "_meta"}, **meta}


if __name__ == "__main__":
    run(sys.argv[1:])
