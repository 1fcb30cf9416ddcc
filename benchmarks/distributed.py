"""Data-parallel step time on this machine (1-3 MPI ranks) and a projection to 8 H200 GPUs.

    python benchmarks/distributed.py                  # lenet5, wide (+ resnet8 when xpcnn.models has it)
    python benchmarks/distributed.py --quick          # fewer steps
    python benchmarks/distributed.py --models lenet5 --ranks 1 2

Measured (CPU, NumPy, one BLAS thread per rank, ``mpiexec -n p``): a training step on a fixed global
batch, split into *compute* (forward, loss, backward, Adam update), *wait* (a barrier: how long the
fastest rank waits for the slowest) and *Allreduce* (the bucketed flat-buffer gradient Allreduce in
the step); *Allreduce alone* repeats it back to back after a barrier (the transport's own cost).
Medians over the timed steps (rank 0's clock), then the median over ``--rounds`` runs of every
configuration, interleaved.  With 3 ranks on a 2-core machine the ranks
share cores, so that row measures oversubscription, not scaling.

Projected (8 GPUs, one node, NVLink 4): an alpha-beta model of a ring Allreduce,

    T_ring(p, G) = 2 (p - 1) alpha + 2 (p - 1) / p * G / beta

with G the gradient bytes (float32), beta = 450 GB/s (NVLink 4 is 900 GB/s per H200 counting both
directions; a ring sends and receives at once, so one direction's 450 GB/s carries the data) and
alpha = 5 us per ring step (an assumption: the order of NCCL's per-hop latency inside one node).
Synchronised batch norm adds 3 small Allreduces per BN layer per step (latency only).
No GPU run exists: the single-GPU step time is an ESTIMATE, t_gpu(b) = max(ops * 10 us,
FLOPs(b) / 30 TFLOP/s), where ops = array operations per step counted on array-api-strict (each is
about one CuPy kernel launch, ~10 us of host time each as measured for CuPy 14 in DESIGN.md) and
30 TFLOP/s is about half the H200's FP32 peak.  Reported: weak scaling (per-GPU batch fixed) and
strong scaling (global batch fixed), efficiency = speedup / p, and where it stops scaling
(efficiency under 50 %, or adding a GPU no longer speeds up the step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"

ALPHA_S = 5e-6            # per ring step (assumption)
BETA_BPS = 450e9          # NVLink 4, one direction per H200
LAUNCH_S = 10e-6          # host cost of one CuPy kernel launch (DESIGN.md, CuPy 14)
GPU_FLOPS = 30e12         # effective FP32 rate assumed for one H200 (about half of peak)
GPUS = (1, 2, 4, 8)


# -- worker: runs under mpiexec -------------------------------------------------------------------

def worker(args: argparse.Namespace) -> None:
    import numpy as np

    from xpcnn import backend as B
    from xpcnn import distributed, models, optim
    from xpcnn.distributed.buckets import allreduce_gradients
    from xpcnn.losses import SoftmaxCrossEntropy

    dp = distributed.current()
    rank, size = (0, 1) if dp is None else (dp.rank, dp.size)
    model = models.build(args.model, rng=B.seed_stream(0, "init"))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    b = args.batch
    x = rng.normal(size=(b, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, b)
    start, stop = distributed.shard_bounds(b, rank, size)
    xb, yb = B.asarray(x[start:stop]), B.asarray(y[start:stop])
    if dp is not None:
        dp.broadcast_state(model)
    params = list(opt.params)
    grad_bytes = sum(int(p.value.size) * p.value.dtype.itemsize for p in params)
    rows: list[tuple[float, float, float]] = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out = model.forward(xb, train=True)
        loss_fn.forward(out, yb)
        dout = loss_fn.backward() * ((stop - start) / b)
        model.backward(dout)
        t1 = time.perf_counter()
        if dp is not None:
            dp.comm.barrier()
        t2 = time.perf_counter()
        if dp is not None:
            allreduce_gradients(params, dp.comm)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if step >= args.warmup:
            rows.append(((t1 - t0) + (t4 - t3), t2 - t1, t3 - t2))
    alone = []  # the gradient Allreduce by itself, back to back after a barrier: the transport's cost
    for _ in range(args.steps if dp is not None else 0):
        dp.comm.barrier()  # type: ignore[union-attr]
        t0 = time.perf_counter()
        allreduce_gradients(params, dp.comm)  # type: ignore[union-attr]
        alone.append(time.perf_counter() - t0)
    if rank == 0:
        med = [statistics.median(r[i] for r in rows) for i in range(3)]
        print("RESULT " + json.dumps({"model": args.model, "ranks": size, "batch": b, "grad_bytes": grad_bytes,
                                      "compute_ms": med[0] * 1e3, "wait_ms": med[1] * 1e3,
                                      "allreduce_ms": med[2] * 1e3, "step_ms": sum(med) * 1e3,
                                      "allreduce_alone_ms": statistics.median(alone) * 1e3 if alone else 0.0,
                                      "steps": args.steps}), flush=True)


# -- the GPU estimate -----------------------------------------------------------------------------

def count_ops_per_step(model_name: str, batch: int) -> int:
    """Array operations in one training step, counted as array-api-strict arrays created (~ kernel launches)."""
    import numpy as np
    from array_api_strict import _array_object

    from xpcnn import backend as B
    from xpcnn import models, optim
    from xpcnn.losses import SoftmaxCrossEntropy

    with B.using("array_api_strict"):
        model = models.build(model_name, rng=0)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        xb = B.asarray(rng.normal(size=(batch, 1, 28, 28)).astype(np.float32))
        yb = B.asarray(rng.integers(0, 10, batch))
        original = _array_object.Array._new.__func__  # type: ignore[attr-defined]
        count = [0]

        def counting(cls: Any, *a: Any, **k: Any) -> Any:
            count[0] += 1
            return original(cls, *a, **k)

        _array_object.Array._new = classmethod(counting)  # type: ignore[method-assign,assignment]
        try:
            out = model.forward(xb, train=True)
            loss_fn.forward(out, yb)
            model.backward(loss_fn.backward())
            opt.step()
        finally:
            _array_object.Array._new = classmethod(original)  # type: ignore[method-assign,assignment]
    return count[0]


def flops_per_step(model_name: str, batch: int) -> float:
    """2 x multiply-adds of every conv and dense layer (nested ones included), forward + backward (dW, and dx
    except for the first layer): recorded from one forward pass, scaled to ``batch``."""
    import numpy as np

    from xpcnn import models
    from xpcnn.layers import Conv2D, Dense

    model = models.build(model_name, rng=0)
    macs: list[float] = []
    originals = {cls: cls.forward for cls in (Conv2D, Dense)}

    def recording(cls: Any) -> Any:
        def forward(self: Any, x: Any, train: bool = False) -> Any:
            y = originals[cls](self, x, train)
            per_out = int(np.prod(self.params["W"].shape)) // (self.params["W"].shape[0] if cls is Conv2D else 1)
            spatial = int(np.prod(y.shape[2:])) if cls is Conv2D else 1
            out_ch = y.shape[1]
            macs.append(float(per_out * spatial * out_ch) if cls is Conv2D else float(per_out))
            return y
        return forward

    try:
        for cls in originals:
            cls.forward = recording(cls)  # type: ignore[method-assign]
        model.forward(np.zeros((1, 1, 28, 28), np.float32))
    finally:
        for cls, fwd in originals.items():
            cls.forward = fwd  # type: ignore[method-assign]
    return sum(2.0 * m * batch * (2 if i == 0 else 3) for i, m in enumerate(macs))


def bn_layers(model_name: str) -> int:
    from xpcnn import models
    from xpcnn.distributed.context import _walk
    from xpcnn.layers.norm import _BatchNorm
    return sum(isinstance(layer, _BatchNorm) for layer in _walk(models.build(model_name, rng=0)))


def ring_allreduce_s(p: int, nbytes: float) -> float:
    return 0.0 if p == 1 else 2 * (p - 1) * ALPHA_S + 2 * (p - 1) / p * nbytes / BETA_BPS


def projection(model_name: str, batch: int, grad_bytes: int) -> dict[str, Any]:
    ops = count_ops_per_step(model_name, batch)
    n_bn = bn_layers(model_name)

    def t_gpu(b: int) -> float:  # ESTIMATE (no GPU run): launch-bound or FLOP-bound, whichever is slower
        return max(ops * LAUNCH_S, flops_per_step(model_name, b) / GPU_FLOPS)

    def comm(p: int) -> float:
        return ring_allreduce_s(p, grad_bytes) + 3 * n_bn * (0.0 if p == 1 else 2 * (p - 1) * ALPHA_S)

    weak, strong = [], []
    for p in GPUS:
        step = t_gpu(batch) + comm(p)
        weak.append({"gpus": p, "per_gpu_batch": batch, "step_ms": step * 1e3, "allreduce_ms": comm(p) * 1e3,
                     "efficiency": t_gpu(batch) / step, "samples_per_s": p * batch / step})
        local = max(1, batch // p)
        step_s = t_gpu(local) + comm(p)
        strong.append({"gpus": p, "global_batch": batch, "step_ms": step_s * 1e3, "allreduce_ms": comm(p) * 1e3,
                       "speedup": t_gpu(batch) / step_s, "efficiency": t_gpu(batch) / step_s / p})
    return {"ops_per_step": ops, "flops_per_step": flops_per_step(model_name, batch),
            "t_gpu_ms_estimate": t_gpu(batch) * 1e3, "launch_bound": ops * LAUNCH_S >= flops_per_step(
                model_name, batch) / GPU_FLOPS, "bn_layers": n_bn, "weak": weak, "strong": strong,
            "weak_stops_at": _stops(weak), "strong_stops_at": _stops(strong)}


def _stops(rows: list[dict[str, Any]]) -> str:
    """The first GPU count whose efficiency is under 50 %, or that is no faster than the previous one."""
    for prev, row in zip(rows, rows[1:], strict=False):
        faster = row.get("speedup", row["efficiency"] * row["gpus"]) > prev.get("speedup",
                                                                             prev["efficiency"] * prev["gpus"]) * 1.05
        if row["efficiency"] < 0.5 or not faster:
            return f"{row['gpus']} GPUs (efficiency {row['efficiency']:.0%})"
    return f"not within {rows[-1]['gpus']} GPUs (efficiency {rows[-1]['efficiency']:.0%} at {rows[-1]['gpus']})"


# -- driver ---------------------------------------------------------------------------------------

def measure(model: str, ranks: int, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(var, None)
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup)]
    if ranks > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="lenet5", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="runs per configuration, interleaved (median reported)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--reuse", help="take the measured rows from this earlier JSON (recompute the projection only)")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from xpcnn import models

    names = args.models or [m for m in ("lenet5", "wide", "resnet8") if m in models.MODELS]
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    previous = json.loads(Path(args.reuse).read_text()) if args.reuse else None
    if previous is not None:
        for r in previous["measured"]:
            if r["model"] in names and r["ranks"] in args.ranks:
                runs[(r["model"], r["ranks"])] = [r]
        args.rounds = 0
    for _ in range(args.rounds):  # rounds of every configuration: load drift hits them alike
        for name in names:
            for ranks in args.ranks:
                runs.setdefault((name, ranks), []).append(measure(name, ranks, args.batch, args.steps, args.warmup))
    measured = []
    print(f"{'model':8} {'ranks':>5} {'batch':>6} {'grad KiB':>9} {'compute ms':>11} {'wait ms':>8} "
          f"{'Allreduce ms':>13} {'step ms':>8} {'Allreduce alone ms':>19}")
    for (name, ranks), rs in runs.items():
        r = rs[0] if args.reuse else \
            {**rs[0], **{k: statistics.median(x[k] for x in rs) for k in ("compute_ms", "wait_ms", "allreduce_ms",
                                                                          "step_ms", "allreduce_alone_ms")},
             "rounds": len(rs), "step_ms_per_round": [x["step_ms"] for x in rs]}
        measured.append(r)
        print(f"{name:8} {ranks:5d} {r['batch']:6d} {r['grad_bytes'] / 1024:9.0f} {r['compute_ms']:11.2f} "
              f"{r['wait_ms']:8.2f} {r['allreduce_ms']:13.3f} {r['step_ms']:8.2f} {r['allreduce_alone_ms']:19.3f}")
    projected = {}
    print(f"\nProjection to H200s over NVLink 4 (alpha {ALPHA_S * 1e6:g} us/step, beta {BETA_BPS / 1e9:g} GB/s "
          f"per direction); single-GPU step time is an ESTIMATE (no GPU run)")
    for name in names:
        grad_bytes = next(r["grad_bytes"] for r in measured if r["model"] == name)
        proj = projected[name] = projection(name, args.batch, grad_bytes)
        print(f"\n{name}: {grad_bytes / 1024:.0f} KiB of gradients, {proj['ops_per_step']} array ops/step, "
              f"{proj['flops_per_step'] / 1e9:.2f} GFLOP/step at batch {args.batch}; estimated single-GPU step "
              f"{proj['t_gpu_ms_estimate']:.2f} ms ({'launch' if proj['launch_bound'] else 'FLOP'}-bound)")
        print(f"  {'GPUs':>4} {'Allreduce us':>13} {'weak: step ms':>14} {'eff':>5} {'strong: step ms':>16} "
              f"{'speedup':>8} {'eff':>5}")
        for w, s in zip(proj["weak"], proj["strong"], strict=True):
            print(f"  {w['gpus']:4d} {w['allreduce_ms'] * 1e3:13.1f} {w['step_ms']:14.3f} {w['efficiency']:5.0%} "
                  f"{s['step_ms']:16.3f} {s['speedup']:8.2f} {s['efficiency']:5.0%}")
        print(f"  weak scaling stops at: {proj['weak_stops_at']}; strong scaling stops at: {proj['strong_stops_at']}")
    result = {"benchmark": "distributed", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                      "python": sys.version.split()[0]},
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "settings": {"global_batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                           "rounds": args.rounds, "load_average_at_start": os.getloadavg()[0],
                           "reused_measurements_from": args.reuse,
                           "threads_per_rank": 1, "statistic": "median over timed steps, rank 0"},
              "assumptions": {"alpha_s_per_ring_step": ALPHA_S, "beta_bytes_per_s": BETA_BPS,
                              "launch_s": LAUNCH_S, "gpu_flops": GPU_FLOPS,
                              "single_gpu_step": "ESTIMATE, no GPU run: max(ops * launch_s, flops / gpu_flops)"},
              "measured": measured, "projection": projected}
    if previous is not None:
        result["measured_settings"] = previous.get("measured_settings", previous["settings"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
