"""Per-op benchmark: xpcnn's ops (through the kernel seam) vs torch.nn.functional (autograd), fwd and fwd+bwd.

    python benchmarks/layers.py                 # NumPy backend vs torch CPU, 2 threads each
    python benchmarks/layers.py --quick         # a smoke run
    python benchmarks/layers.py --device cuda   # CuPy backend vs torch CUDA
    python benchmarks/layers.py --ops conv,dense

Ops (batch N = --batch-size): conv2d of LeNet-5 (conv1 1->6 5x5 pad 2 on 28x28, conv2
6->16 5x5 on 14x14) and of the wide net (conv1 1->32 3x3 pad 1 on 28x28, conv2
32->64 3x3 pad 1 on 14x14); max and average pooling 2x2 on (N, 32, 28, 28); dense
3136->128; batch norm 2D (train mode) on (N, 32, 28, 28).

xpcnn's side calls the ops as the layers do, through ``xpcnn.kernels`` (``op.forward`` ->
``(y, cache)``, ``op.backward(dout, cache)``): the reference in ``xpcnn.functional``, or
a fast kernel set where one is registered and eligible (``XPCNN_KERNELS`` chooses; the "kernels"
column names the set that ran).  Where a fast set ran, the reference kernels are timed too, in the
same interleaved rounds ("reference ms", "reference/torch"; ``--no-reference`` skips them).

"fwd" is the training-mode forward (xpcnn keeps its backward cache, torch records
the autograd graph).  "fwd+bwd" adds the backward pass for an upstream gradient
fixed in advance: gradients of the input and of the parameters; for the first
conv layers (whose input is the data) xpcnn skips dx and torch's input has
requires_grad=False, so both compute only the weight gradients.  The peak memory
column is measured around one fwd+bwd call.  "err" is max|xpcnn - torch| /
max|torch| over the output and all gradients (a check that both sides compute
the same thing).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from benchlib import machine, process, tables
from benchlib.data import randn
from benchlib.nets import ConvLayer, conv_layers
from benchlib.options import make_parser
from benchlib.results import write_json
from benchlib.session import Env, setup
from benchlib.timing import ratio

from xpcnn import backend as B
from xpcnn import kernels
from xpcnn.functional import pool_geometry


@dataclass
class OpFns:
    """The four callables of one op; the fwd+bwd ones return ``(y, *grads)`` in the same order."""

    x_fwd: Callable[[], Any]
    x_fwdbwd: Callable[[], tuple]
    t_fwd: Callable[[], Any]
    t_fwdbwd: Callable[[], tuple]


@dataclass
class OpCase:
    name: str
    family: str  # conv, pool, dense, norm (for --ops)
    shape: str
    build: Callable[[Env, np.random.Generator], OpFns]


def _tgrad(y: torch.Tensor, inputs: list[torch.Tensor], dout: torch.Tensor) -> tuple:
    return (y.detach(), *torch.autograd.grad(y, inputs, dout))


# ---------------------------------------------------------------------------- op builders


def conv_case(L: ConvLayer) -> OpCase:
    def build(env: Env, rng: np.random.Generator) -> OpFns:
        N, pad, first = env.args.batch_size, L.pad, L.first
        x, W = randn(rng, (N, L.C, L.H, L.H)), randn(rng, (L.F, L.C, L.K, L.K), math.sqrt(2.0 / (L.C * L.K**2)))
        b, dout = randn(rng, (L.F,), 0.1), randn(rng, (N, L.F, L.out, L.out))
        xx, xW, xb, xd = env.x(x), env.x(W), env.x(b), env.x(dout)
        tx, tW, tb, td = env.t(x, grad=not first), env.t(W, True), env.t(b, True), env.t(dout)
        t_inputs = [tW, tb] if first else [tx, tW, tb]
        stride, padding, dilation = (L.stride, L.stride), (pad, pad), (1, 1)

        def x_fwd():
            return kernels.conv2d.forward(xx, xW, xb, stride, padding, dilation)

        def x_fwdbwd():
            y, cache = x_fwd()
            dx, dW, db = kernels.conv2d.backward(xd, cache, not first)
            return (y, dW, db) if first else (y, dx, dW, db)

        def t_fwd():
            return TF.conv2d(tx, tW, tb, stride=L.stride, padding=pad)

        return OpFns(x_fwd=x_fwd, x_fwdbwd=x_fwdbwd, t_fwd=t_fwd,
                     t_fwdbwd=lambda: _tgrad(t_fwd(), t_inputs, td))

    return OpCase(f"conv2d {L.label}", "conv", L.describe(), build)


def pool_case(kind: str, Cc: int = 32, H: int = 28) -> OpCase:
    def build(env: Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, dout = randn(rng, (N, Cc, H, H)), randn(rng, (N, Cc, H // 2, H // 2))
        xx, xd = env.x(x), env.x(dout)
        tx, td = env.t(x, grad=True), env.t(dout)
        geometry = pool_geometry(tuple(xx.shape), 2)
        op = kernels.max_pool2d if kind == "max" else kernels.avg_pool2d
        t_op = TF.max_pool2d if kind == "max" else TF.avg_pool2d

        def x_fwdbwd():
            y, cache = op.forward(xx, geometry)
            return y, op.backward(xd, cache)

        return OpFns(lambda: op.forward(xx, geometry), x_fwdbwd,
                     lambda: t_op(tx, 2), lambda: _tgrad(t_op(tx, 2), [tx], td))

    return OpCase(f"{kind}_pool2d 2x2", "pool", f"x(N,{Cc},{H},{H})", build)


def dense_case(n_in: int = 3136, n_out: int = 128) -> OpCase:
    def build(env: Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, W = randn(rng, (N, n_in)), randn(rng, (n_in, n_out), math.sqrt(2.0 / n_in))
        b, dout = randn(rng, (n_out,), 0.1), randn(rng, (N, n_out))
        xx, xW, xb, xd = env.x(x), env.x(W), env.x(b), env.x(dout)
        # torch.nn.Linear stores weight as (out, in): the same numbers, transposed
        tx, tWt, tb, td = env.t(x, True), env.t(np.ascontiguousarray(W.T), True), env.t(b, True), env.t(dout)

        def x_fwdbwd():
            y, cache = kernels.dense.forward(xx, xW, xb)
            return (y, *kernels.dense.backward(xd, cache, True))

        def t_fwdbwd():
            y, dx, dWt, db = _tgrad(TF.linear(tx, tWt, tb), [tx, tWt, tb], td)
            return y, dx, dWt.T, db  # a view, for the comparison

        return OpFns(lambda: kernels.dense.forward(xx, xW, xb), x_fwdbwd, lambda: TF.linear(tx, tWt, tb), t_fwdbwd)

    return OpCase(f"dense {n_in}->{n_out}", "dense", f"x(N,{n_in}) W({n_in},{n_out})", build)


def batchnorm_case(Cc: int = 32, H: int = 28) -> OpCase:
    def build(env: Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, dout = randn(rng, (N, Cc, H, H)), randn(rng, (N, Cc, H, H))
        gamma, beta = 1.0 + randn(rng, (Cc,), 0.1), randn(rng, (Cc,), 0.1)
        rm, rv = np.zeros(Cc, np.float32), np.ones(Cc, np.float32)
        xx, xg, xbeta, xrm, xrv, xd = (env.x(a) for a in (x, gamma, beta, rm, rv, dout))
        tx, tg, tbeta, td = env.t(x, True), env.t(gamma, True), env.t(beta, True), env.t(dout)
        trm, trv = env.t(rm), env.t(rv)

        def x_fwd():
            return kernels.batch_norm.forward(xx, xg, xbeta, xrm, xrv, True, 0.1, 1e-5)

        def x_fwdbwd():
            y, cache = x_fwd()
            return (y, *kernels.batch_norm.backward(xd, cache))

        def t_fwd():
            return TF.batch_norm(tx, trm, trv, tg, tbeta, training=True, momentum=0.1, eps=1e-5)

        return OpFns(x_fwd, x_fwdbwd, t_fwd, lambda: _tgrad(t_fwd(), [tx, tg, tbeta], td))

    return OpCase("batch_norm2d train", "norm", f"x(N,{Cc},{H},{H})", build)


CASES = [
    *(conv_case(L) for L in conv_layers()),  # the convolutions of xpcnn.models.lenet5 and wide_cnn
    pool_case("max"),
    pool_case("avg"),
    dense_case(),
    batchnorm_case(),
]


# ---------------------------------------------------------------------------- running


def max_rel_err(xs: tuple, ts: tuple) -> float:
    """``max |xpcnn - torch| / max |torch|`` over matching outputs (each array scaled by its own max)."""
    worst = 0.0
    for a, b in zip(xs, ts, strict=True):
        a, b = np.asarray(B.to_numpy(a), np.float64), b.detach().cpu().numpy().astype(np.float64)
        if a.shape != b.shape:
            raise RuntimeError(f"shape mismatch between xpcnn {a.shape} and torch {b.shape}")
        worst = max(worst, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30))
    return worst


def run_case(env: Env, case: OpCase, rng: np.random.Generator) -> list[dict[str, Any]]:
    fns = case.build(env, rng)
    err = max_rel_err(fns.x_fwdbwd(), fns.t_fwdbwd())
    peaks = {"xpcnn": env.x_peak(fns.x_fwdbwd), "torch": env.t_peak(fns.t_fwdbwd),
             "reference": env.x_peak(reference(fns.x_fwdbwd))}
    impl = implementation(fns.x_fwd)
    records = []
    for pass_name, xf, tf in (("fwd", fns.x_fwd, fns.t_fwd), ("fwd+bwd", fns.x_fwdbwd, fns.t_fwdbwd)):
        cands = [env.xcand("xpcnn", xf), env.tcand("torch", tf)]
        if env.args.reference and impl != "reference":
            cands.append(env.xcand("reference", reference(xf)))
        stats = env.compare(cands)
        rec = {"op": case.name, "shape": case.shape, "pass": pass_name, "kernels": impl,
               "xpcnn": stats["xpcnn"].as_dict(), "torch": stats["torch"].as_dict(),
               **ratio(stats["xpcnn"], stats["torch"])}
        if "reference" in stats:
            rec["reference"] = stats["reference"].as_dict()
            rec["reference_ratio"] = ratio(stats["reference"], stats["torch"])["median_ratio"]
        if pass_name == "fwd+bwd":
            rec.update(peak_bytes=peaks, max_rel_err=err)
        records.append(rec)
    return records


def reference(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with the reference kernels forced (the same op calls, ``XPCNN_KERNELS=reference``)."""
    def run() -> Any:
        with kernels.using_kernels("reference"):
            return fn()
    return run


def implementation(fn: Callable[[], Any]) -> str:
    """The kernel set that served ``fn``'s op call (``reference`` or a fast set's name)."""
    chosen = []
    originals = {}
    for op in (kernels.conv2d, kernels.max_pool2d, kernels.avg_pool2d, kernels.dense, kernels.batch_norm):
        originals[op.name] = op.forward

        def spy(*args: Any, _op: Any = op, **kw: Any) -> Any:
            chosen.append(_op.implementation(*args, **kw))
            return originals[_op.name](*args, **kw)
        op.forward = spy  # type: ignore[method-assign]
    try:
        fn()
    finally:
        for op in (kernels.conv2d, kernels.max_pool2d, kernels.avg_pool2d, kernels.dense, kernels.batch_norm):
            del op.forward
    return chosen[0] if chosen else "reference"


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for r in records:
        row = {"op": r["op"] if r["pass"] == "fwd" else "", "pass": r["pass"], **tables.timing_cells(r)}
        row.update(set=r.get("kernels", ""), r=tables.fmt_ms(r["reference"]["median"]) if "reference" in r else "-",
                   rratio=tables.fmt_ratio(r["reference_ratio"]) if "reference" in r else "-")
        if "peak_bytes" in r:
            row.update(xmem=tables.fmt_mib(r["peak_bytes"]["xpcnn"]), tmem=tables.fmt_mib(r["peak_bytes"]["torch"]),
                       rmem=tables.fmt_mib(r["peak_bytes"].get("reference")), err=f"{r['max_rel_err']:.1e}")
        rows.append(row)
    return rows


COLUMNS = [("op", "op"), ("pass", "pass"), ("set", "kernels"), *tables.TIMING_COLUMNS, ("r", "reference ms"),
           ("rratio", "reference/torch"), ("xmem", "xpcnn MiB"), ("rmem", "reference MiB"), ("tmem", "torch MiB"),
           ("err", "err")]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, repeats=20, warmup=3)
    parser.add_argument("--ops", default="conv,pool,dense,norm",
                        help="comma-separated families to run: conv, pool, dense, norm")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the reference kernels (XPCNN_KERNELS=reference) where a fast set served "
                             "the op (default: on)")
    env = setup(parser.parse_args(argv))
    families = {f.strip() for f in env.args.ops.split(",") if f.strip()}
    unknown = families - {c.family for c in CASES}
    if unknown:
        raise SystemExit(f"unknown --ops {sorted(unknown)}; expected some of conv, pool, dense, norm")
    print(machine.describe(env), flush=True)
    rng = np.random.default_rng(env.args.seed)
    records = []
    for case in CASES:
        if case.family in families:
            records += run_case(env, case, rng)
            print(f"  done: {case.name}", flush=True)
    print()
    tables.print_table(table_rows(records), COLUMNS,
                  title=f"median / min / IQR in ms per call; peak MiB over one fwd+bwd "
                        f"(xpcnn: {env.memory_methods()['xpcnn']}; torch: {env.memory_methods()['torch']})")
    write_json(env, "layers", records)
    return 0


if __name__ == "__main__":
    process.relaunch_with_thread_env()
    raise SystemExit(main())
