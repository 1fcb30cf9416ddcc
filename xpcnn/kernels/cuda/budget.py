"""Kernel launches per LeNet-5 training step, counted on the CuPy stand-in (no GPU needed).

One step is ``model.forward(x, train=True)``, the ``softmax_cross_entropy`` op, ``model.backward`` and
``optimizer.step()``: the seam's part of :meth:`xpcnn.train.Trainer.step`.  The same model, data and
optimizer run twice on :class:`~xpcnn.kernels.cuda.standin.StandIn` arrays: with the reference ops
(``using_kernels("reference")``) and with the CUDA kernel set (its kernels run through the CPU shim),
so the count comes with a check that both paths train alike.

    python -m xpcnn.kernels.cuda.budget [--batch 32] [--steps 3] [--optimizer adam]
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import kernels, models, optim
from . import cupy_set
from .standin import StandIn

__all__ = ["StepCounts", "count_lenet5_steps", "main"]

_OPTIMIZERS = {"sgd": optim.SGD, "momentum": optim.Momentum, "nesterov": optim.Nesterov, "adagrad": optim.AdaGrad,
               "rmsprop": optim.RMSProp, "adam": optim.Adam, "adamw": optim.AdamW}


@dataclass
class StepCounts:
    """Per path (``"reference"``, ``"cuda"``): launches and syncs of every step, the last step's launches by kind."""

    launches: dict[str, list[int]] = field(default_factory=dict)
    syncs: dict[str, list[int]] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def max_param_difference(self) -> float:
        """Largest |reference - cuda| over every parameter after the last step."""
        ref, fast = self.params["reference"], self.params["cuda"]
        return max(float(np.max(np.abs(ref[k] - fast[k]))) for k in ref)


def _to_standin(model: Any, ns: StandIn) -> None:
    for layer in model.layers:
        for key, value in layer.params.items():
            layer.params[key] = ns.from_numpy(np.asarray(value))


def count_lenet5_steps(batch: int = 32, steps: int = 3, optimizer: str = "adam", seed: int = 0,
                       ns: StandIn | None = None) -> StepCounts:
    """Train LeNet-5 for ``steps`` steps on random data on both paths, counting every launch of every step."""
    ns = ns or StandIn()
    cupy_set.install(ns)
    rng = np.random.default_rng(seed)
    xs = [ns.from_numpy(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)) for _ in range(steps)]
    ys = [ns.from_numpy(rng.integers(0, 10, batch).astype(np.int64)) for _ in range(steps)]
    out = StepCounts()
    for path, mode in (("reference", "reference"), ("cuda", "auto")):
        model = models.lenet5(rng=seed)
        _to_standin(model, ns)
        opt = _OPTIMIZERS[optimizer](model.parameters(), lr=1e-3)
        launches, syncs, losses = [], [], []
        last: Counter[str] = Counter()
        with kernels.using_kernels(mode):
            for x, y in zip(xs, ys, strict=True):
                ns.ledger.reset()
                logits = model.forward(x, train=True)
                loss, cache = kernels.softmax_cross_entropy.forward(logits, y)
                model.backward(kernels.softmax_cross_entropy.backward(None, cache))
                opt.step()
                launches.append(ns.ledger.total)
                syncs.append(ns.ledger.syncs)
                last = Counter(ns.ledger.launches)
                losses.append(float(loss._a))
        out.launches[path], out.syncs[path], out.losses[path] = launches, syncs, losses
        out.kinds[path] = dict(sorted(last.items()))
        out.params[path] = {ref.name: np.array(ref.value._a) for ref in model.parameters()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizer", choices=sorted(_OPTIMIZERS), default="adam")
    args = parser.parse_args(argv)
    c = count_lenet5_steps(args.batch, args.steps, args.optimizer)
    print(f"LeNet-5, batch {args.batch}, {args.optimizer}: kernel launches per training step (CuPy stand-in)")
    for path in ("reference", "cuda"):
        print(f"  {path:<10} launches per step {c.launches[path]}  host syncs {c.syncs[path]}")
    print(f"  max |reference - cuda| over the parameters after {args.steps} steps: {c.max_param_difference():.3g}")
    print("  cuda path, last step, by kind:")
    for kind, n in c.kinds["cuda"].items():
        print(f"    {kind:<40} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
