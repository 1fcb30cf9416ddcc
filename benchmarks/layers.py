"""Per-op benchmark: xpcnn.functional vs torch.nn.functional (autograd), forward and forward+backward.

    python benchmarks/layers.py                 # NumPy backend vs torch CPU, 2 threads each
    python benchmarks/layers.py --quick         # a smoke run
    python benchmarks/layers.py --device cuda   # CuPy backend vs torch CUDA
    python benchmarks/layers.py --ops conv,dense

Ops (batch N = --batch-size): conv2d of LeNet-5 (conv1 1->6 5x5 pad 2 on 28x28, conv2
6->16 5x5 on 14x14) and of the wide net (conv1 1->32 3x3 pad 1 on 28x28, conv2
32->64 3x3 pad 1 on 14x14); max and average pooling 2x2 on (N, 32, 28, 28); dense
3136->128; batch norm 2D (train mode) on (N, 32, 28, 28).

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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common as C  # first: it sets the thread-pool environment before NumPy/torch load
import numpy as np
from _common import B, torch

import xpcnn.functional as XF
import torch.nn.functional as TF


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
    build: Callable[[C.Env, np.random.Generator], OpFns]


def _tgrad(y: torch.Tensor, inputs: list[torch.Tensor], dout: torch.Tensor) -> tuple:
    return (y.detach(), *torch.autograd.grad(y, inputs, dout))


# ---------------------------------------------------------------------------- op builders


def conv_case(L: C.ConvLayer) -> OpCase:
    def build(env: C.Env, rng: np.random.Generator) -> OpFns:
        N, pad, first = env.args.batch_size, L.pad, L.first
        x, W = C.randn(rng, (N, L.C, L.H, L.H)), C.randn(rng, (L.F, L.C, L.K, L.K), math.sqrt(2.0 / (L.C * L.K**2)))
        b, dout = C.randn(rng, (L.F,), 0.1), C.randn(rng, (N, L.F, L.out, L.out))
        xx, xW, xb, xd = env.x(x), env.x(W), env.x(b), env.x(dout)
        tx, tW, tb, td = env.t(x, grad=not first), env.t(W, True), env.t(b, True), env.t(dout)
        t_inputs = [tW, tb] if first else [tx, tW, tb]
        x_shape = tuple(xx.shape)

        def x_fwdbwd():
            y, col = XF.conv2d_forward(xx, xW, xb, 1, pad)
            dx, dW, db = XF.conv2d_backward(xd, col, x_shape, xW, 1, pad, need_dx=not first)
            return (y, dW, db) if first else (y, dx, dW, db)

        return OpFns(
            x_fwd=lambda: XF.conv2d_forward(xx, xW, xb, 1, pad),
            x_fwdbwd=x_fwdbwd,
            t_fwd=lambda: TF.conv2d(tx, tW, tb, padding=pad),
            t_fwdbwd=lambda: _tgrad(TF.conv2d(tx, tW, tb, padding=pad), t_inputs, td),
        )

    return OpCase(f"conv2d {L.label}", "conv", L.describe(), build)


def pool_case(kind: str, Cc: int = 32, H: int = 28) -> OpCase:
    def build(env: C.Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, dout = C.randn(rng, (N, Cc, H, H)), C.randn(rng, (N, Cc, H // 2, H // 2))
        xx, xd = env.x(x), env.x(dout)
        tx, td = env.t(x, grad=True), env.t(dout)
        x_shape = tuple(xx.shape)
        if kind == "max":
            def x_fwdbwd():
                y, argmax = XF.max_pool2d_forward(xx, 2)
                return y, XF.max_pool2d_backward(xd, argmax, x_shape, 2)

            return OpFns(lambda: XF.max_pool2d_forward(xx, 2), x_fwdbwd,
                         lambda: TF.max_pool2d(tx, 2), lambda: _tgrad(TF.max_pool2d(tx, 2), [tx], td))

        def x_fwdbwd():
            y = XF.avg_pool2d(xx, 2)
            return y, XF.avg_pool2d_backward(xd, x_shape, 2)

        return OpFns(lambda: XF.avg_pool2d(xx, 2), x_fwdbwd,
                     lambda: TF.avg_pool2d(tx, 2), lambda: _tgrad(TF.avg_pool2d(tx, 2), [tx], td))

    return OpCase(f"{kind}_pool2d 2x2", "pool", f"x(N,{Cc},{H},{H})", build)


def dense_case(n_in: int = 3136, n_out: int = 128) -> OpCase:
    def build(env: C.Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, W = C.randn(rng, (N, n_in)), C.randn(rng, (n_in, n_out), math.sqrt(2.0 / n_in))
        b, dout = C.randn(rng, (n_out,), 0.1), C.randn(rng, (N, n_out))
        xx, xW, xb, xd = env.x(x), env.x(W), env.x(b), env.x(dout)
        # torch.nn.Linear stores weight as (out, in): the same numbers, transposed
        tx, tWt, tb, td = env.t(x, True), env.t(np.ascontiguousarray(W.T), True), env.t(b, True), env.t(dout)

        def x_fwdbwd():
            y = XF.dense(xx, xW, xb)
            return (y, *XF.dense_backward(xd, xx, xW))

        def t_fwdbwd():
            y, dx, dWt, db = _tgrad(TF.linear(tx, tWt, tb), [tx, tWt, tb], td)
            return y, dx, dWt.T, db  # a view, for the comparison

        return OpFns(lambda: XF.dense(xx, xW, xb), x_fwdbwd, lambda: TF.linear(tx, tWt, tb), t_fwdbwd)

    return OpCase(f"dense {n_in}->{n_out}", "dense", f"x(N,{n_in}) W({n_in},{n_out})", build)


def batchnorm_case(Cc: int = 32, H: int = 28) -> OpCase:
    def build(env: C.Env, rng: np.random.Generator) -> OpFns:
        N = env.args.batch_size
        x, dout = C.randn(rng, (N, Cc, H, H)), C.randn(rng, (N, Cc, H, H))
        gamma, beta = 1.0 + C.randn(rng, (Cc,), 0.1), C.randn(rng, (Cc,), 0.1)
        rm, rv = np.zeros(Cc, np.float32), np.ones(Cc, np.float32)
        xx, xg, xbeta, xrm, xrv, xd = (env.x(a) for a in (x, gamma, beta, rm, rv, dout))
        tx, tg, tbeta, td = env.t(x, True), env.t(gamma, True), env.t(beta, True), env.t(dout)
        trm, trv = env.t(rm), env.t(rv)

        def x_fwd():
            return XF.batch_norm_forward(xx, xg, xbeta, xrm, xrv, train=True)

        def x_fwdbwd():
            y, cache, _, _ = x_fwd()
            return (y, *XF.batch_norm_backward(xd, cache))

        def t_fwd():
            return TF.batch_norm(tx, trm, trv, tg, tbeta, training=True, momentum=0.1, eps=1e-5)

        return OpFns(x_fwd, x_fwdbwd, t_fwd, lambda: _tgrad(t_fwd(), [tx, tg, tbeta], td))

    return OpCase("batch_norm2d train", "norm", f"x(N,{Cc},{H},{H})", build)


CASES = [
    *(conv_case(L) for L in C.CONV_LAYERS),
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


def run_case(env: C.Env, case: OpCase, rng: np.random.Generator) -> list[dict[str, Any]]:
    fns = case.build(env, rng)
    err = max_rel_err(fns.x_fwdbwd(), fns.t_fwdbwd())
    peaks = {"xpcnn": env.x_peak(fns.x_fwdbwd), "torch": env.t_peak(fns.t_fwdbwd)}
    records = []
    for pass_name, xf, tf in (("fwd", fns.x_fwd, fns.t_fwd), ("fwd+bwd", fns.x_fwdbwd, fns.t_fwdbwd)):
        stats = env.compare([env.xcand("xpcnn", xf), env.tcand("torch", tf)])
        rec = {"op": case.name, "shape": case.shape, "pass": pass_name,
               "xpcnn": stats["xpcnn"].as_dict(), "torch": stats["torch"].as_dict(),
               **C.ratio(stats["xpcnn"], stats["torch"])}
        if pass_name == "fwd+bwd":
            rec.update(peak_bytes=peaks, max_rel_err=err)
        records.append(rec)
    return records


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for r in records:
        row = {"op": r["op"] if r["pass"] == "fwd" else "", "pass": r["pass"], **C.timing_cells(r)}
        if "peak_bytes" in r:
            row.update(xmem=C.fmt_mib(r["peak_bytes"]["xpcnn"]), tmem=C.fmt_mib(r["peak_bytes"]["torch"]),
                       err=f"{r['max_rel_err']:.1e}")
        rows.append(row)
    return rows


COLUMNS = [("op", "op"), ("pass", "pass"), *C.TIMING_COLUMNS, ("xmem", "xpcnn MiB"), ("tmem", "torch MiB"),
           ("err", "err")]


def main(argv: list[str] | None = None) -> int:
    parser = C.make_parser(__doc__, repeats=20, warmup=3)
    parser.add_argument("--ops", default="conv,pool,dense,norm",
                        help="comma-separated families to run: conv, pool, dense, norm")
    env = C.setup(parser.parse_args(argv))
    families = {f.strip() for f in env.args.ops.split(",") if f.strip()}
    unknown = families - {c.family for c in CASES}
    if unknown:
        raise SystemExit(f"unknown --ops {sorted(unknown)}; expected some of conv, pool, dense, norm")
    print(C.describe(env), flush=True)
    rng = np.random.default_rng(env.args.seed)
    records = []
    for case in CASES:
        if case.family in families:
            records += run_case(env, case, rng)
            print(f"  done: {case.name}", flush=True)
    print()
    C.print_table(table_rows(records), COLUMNS,
                  title=f"median / min / IQR in ms per call; peak MiB over one fwd+bwd "
                        f"(xpcnn: {env.memory_methods()['xpcnn']}; torch: {env.memory_methods()['torch']})")
    C.write_json(env, "layers", records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
