"""Kernel launches per LeNet-5 training step, counted on the CuPy stand-in (no GPU needed).

One step is ``model.forward(x, train=True)``, the ``softmax_cross_entropy`` op, ``model.backward`` and
``optimizer.step()``: the seam's part of :meth:`xpcnn.train.Trainer.step`.  The same model, data and
optimizer run twice on :class:`~xpcnn.kernels.cuda.standin.StandIn` arrays: with the reference ops
(``using_kernels("reference")``) and with the CUDA kernel set (its kernels run through the CPU shim),
so the count comes with a check that both paths train alike.  A third path, ``cuda+fused``, also runs
each Conv2D -> ReLU -> MaxPool2D through the fused pair, as a model-level planner would.

    python -m xpcnn.kernels.cuda.budget [--batch 32] [--steps 3] [--optimizer adam]
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import flat, kernels, models, optim
from . import cupy_set
from .standin import StandIn

__all__ = ["StepCounts", "count_lenet5_steps", "main"]

_OPTIMIZERS = {"sgd": optim.SGD, "momentum": optim.Momentum, "nesterov": optim.Nesterov, "adagrad": optim.AdaGrad,
               "rmsprop": optim.RMSProp, "adam": optim.Adam, "adamw": optim.AdamW}


@dataclass
class StepCounts:
    """Per path (``"reference"``, ``"cuda"``, ``"cuda+fused"``): launches and syncs of every step, and more.

    ``kinds``: the last step's launches by kind; ``losses``; ``params``: the parameters after the last step.
    """

    launches: dict[str, list[int]] = field(default_factory=dict)
    syncs: dict[str, list[int]] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def max_param_difference(self, path: str = "cuda") -> float:
        """Largest |reference - path| over every parameter after the last step."""
        ref, fast = self.params["reference"], self.params[path]
        return max(float(np.max(np.abs(ref[k] - fast[k]))) for k in ref)


class _FusedPlan:
    """A sketch of a model-level planner: each Conv2D -> ReLU -> MaxPool2D run becomes the fused pair.

    Only for counting what such a planner would save (the seam has no fused op yet); other layers run
    as usual.  Sets the conv layers' grads like Conv2D.backward does.
    """

    def __init__(self, model: Any) -> None:
        from ...layers import Conv2D, MaxPool2D, ReLU

        self.model = model
        self.fused: set[int] = set()
        self.caches: dict[int, Any] = {}
        layers = model.layers
        for i in range(len(layers) - 2):
            if (isinstance(layers[i], Conv2D) and isinstance(layers[i + 1], ReLU)
                    and isinstance(layers[i + 2], MaxPool2D)):
                self.fused.add(i)

    def forward(self, x: Any) -> Any:
        from ...functional.pool import pool_geometry

        layers, i = self.model.layers, 0
        while i < len(layers):
            layer = layers[i]
            if i in self.fused:
                conv, pool = layer, layers[i + 2]
                z_shape = (x.shape[0], *conv.output_shape(tuple(x.shape))[1:])
                g = pool_geometry(z_shape, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
                x, self.caches[i] = cupy_set.conv_relu_maxpool_forward(
                    x, conv.params["W"], conv.params.get("b"), conv.stride, conv.padding, conv.dilation, g)
                i += 3
            else:
                x = layer.forward(x, train=True)
                i += 1
        return x

    def backward(self, dout: Any) -> None:
        layers, i = self.model.layers, len(self.model.layers) - 1
        while i >= 0:
            start = i - 2
            if start in self.fused:
                conv = layers[start]
                dout, dW, db = cupy_set.conv_relu_maxpool_backward(dout, self.caches[start], conv.need_input_grad)
                conv.grads["W"] = dW
                if db is not None:
                    conv.grads["b"] = db
                i -= 3
            else:
                dout = layers[i].backward(dout)
                i -= 1


def _to_standin(model: Any, ns: StandIn) -> None:
    for layer in model.layers:
        for key, value in layer.params.items():
            layer.params[key] = ns.from_numpy(np.asarray(value))
    flat.sync(model)  # as model.to(...) does: a flat store on the new arrays where they can be viewed


def count_lenet5_steps(batch: int = 32, steps: int = 3, optimizer: str = "adam", seed: int = 0,
                       ns: StandIn | None = None) -> StepCounts:
    """Train LeNet-5 for ``steps`` steps on random data on both paths, counting every launch of every step."""
    ns = ns or StandIn()
    cupy_set.install(ns)
    rng = np.random.default_rng(seed)
    xs = [ns.from_numpy(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)) for _ in range(steps)]
    ys = [ns.from_numpy(rng.integers(0, 10, batch).astype(np.int64)) for _ in range(steps)]
    out = StepCounts()
    for path, mode in (("reference", "reference"), ("cuda", "auto"), ("cuda+fused", "auto")):
        model = models.lenet5(rng=seed)
        _to_standin(model, ns)
        opt = _OPTIMIZERS[optimizer](model.parameters(), lr=1e-3)
        launches, syncs, losses = [], [], []
        last: Counter[str] = Counter()
        with kernels.using_kernels(mode):
            for x, y in zip(xs, ys, strict=True):
                ns.ledger.reset()
                net = _FusedPlan(model) if path == "cuda+fused" else model
                logits = net.forward(x) if path == "cuda+fused" else model.forward(x, train=True)
                loss, cache = kernels.softmax_cross_entropy.forward(logits, y)
                net.backward(kernels.softmax_cross_entropy.backward(None, cache))
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
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    args = parser.parse_args(argv)
    c = count_lenet5_steps(args.batch, args.steps, args.optimizer)
    if args.json:
        import json
        from pathlib import Path

        record = {"model": "lenet5", "batch": args.batch, "optimizer": args.optimizer, "launches": c.launches,
                  "syncs": c.syncs, "kinds_last_step": c.kinds,
                  "max_param_difference": {p: c.max_param_difference(p) for p in ("cuda", "cuda+fused")},
                  "note": "counted on the NumPy-backed CuPy stand-in (a model of CuPy's launches), not on a GPU"}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"LeNet-5, batch {args.batch}, {args.optimizer}: kernel launches per training step (CuPy stand-in)")
    for path in ("reference", "cuda", "cuda+fused"):
        print(f"  {path:<10} launches per step {c.launches[path]}  host syncs {c.syncs[path]}")
    for path in ("cuda", "cuda+fused"):
        print(f"  max |reference - {path}| over the parameters after {args.steps} steps: "
              f"{c.max_param_difference(path):.3g}")
    print("  cuda path, last step, by kind:")
    for kind, n in c.kinds["cuda"].items():
        print(f"    {kind:<40} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
