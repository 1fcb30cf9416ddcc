"""How close xpcnn's conv2d forward gets to a plain matmul of the same size, in GFLOP/s.

    python benchmarks/gemm.py                   # NumPy backend (OpenBLAS), 2 threads
    python benchmarks/gemm.py --quick
    python benchmarks/gemm.py --device cuda     # CuPy backend (cuBLAS)

For each convolution of LeNet-5 and the wide net, with K = C*KH*KW and
L = OH*OW, all float32 on xpcnn's backend, interleaved:

* ``conv``:   xpcnn.functional.conv2d (im2col + one broadcast matmul + bias);
* ``im2col``: xpcnn.functional.im2col alone;
* ``matmul``: the plain GEMM of the same size, (F, K) @ (K, N*L), contiguous operands;
* ``bmm``:    the broadcast batched matmul xpcnn issues, (F, K) @ (N, K, L);
* ``torch``:  torch.nn.functional.conv2d under no_grad on --device (a reference, not the same backend).

FLOPs = 2 * N * F * OH * OW * C * KH * KW for every column.  ``conv/matmul`` is the
ratio of median times; the issue's target is the wide net's conv2 forward within
1.3x of the plain matmul.
"""

from __future__ import annotations

import math
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

from xpcnn import functional as F

TARGET_LAYER, TARGET_RATIO = "wide.conv2", 1.3
CANDIDATES = ("conv", "im2col", "matmul", "bmm", "torch")


def run_layer(env: Env, L: ConvLayer, rng: np.random.Generator) -> dict[str, Any]:
    N, xp = env.args.batch_size, env.xp
    K, L_out = L.C * L.K * L.K, L.out * L.out
    x, W = randn(rng, (N, L.C, L.H, L.H)), randn(rng, (L.F, L.C, L.K, L.K), math.sqrt(2.0 / K))
    b = randn(rng, (L.F,), 0.1)
    xx, xW, xb = env.x(x), env.x(W), env.x(b)
    A, Bm = env.x(randn(rng, (L.F, K))), env.x(randn(rng, (K, N * L_out)))
    col3 = env.x(randn(rng, (N, K, L_out)))
    tx, tW, tb = env.t(x), env.t(W), env.t(b)

    def torch_conv():
        with torch.no_grad():
            return TF.conv2d(tx, tW, tb, stride=L.stride, padding=L.pad)

    stats = env.compare([
        env.xcand("conv", lambda: F.conv2d(xx, xW, xb, L.stride, L.pad)),
        env.xcand("im2col", lambda: F.im2col(xx, L.K, L.stride, L.pad)),
        env.xcand("matmul", lambda: xp.matmul(A, Bm)),
        env.xcand("bmm", lambda: xp.matmul(A, col3)),
        env.tcand("torch", torch_conv),
    ])
    flops = L.flops(N)
    rec: dict[str, Any] = {"layer": L.label, "shape": L.describe(), "gemm_MKN": [L.F, K, N * L_out],
                           "flops": flops}
    for name in CANDIDATES:
        rec[name] = {**stats[name].as_dict(), "gflops": flops / stats[name].median / 1e9}
    rec["conv_over_matmul"] = ratio(stats["conv"], stats["matmul"])
    rec["conv_over_torch"] = ratio(stats["conv"], stats["torch"])
    rec["im2col_share_of_conv"] = stats["im2col"].median / stats["conv"].median
    if L.label == TARGET_LAYER:
        r = rec["conv_over_matmul"]["median_ratio"]
        rec["target"] = {"max_conv_over_matmul": TARGET_RATIO, "met": bool(r <= TARGET_RATIO)}
    return rec


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for r in records:
        row = {"layer": r["layer"], "mkn": "x".join(map(str, r["gemm_MKN"])), "mflop": f"{r['flops'] / 1e6:.0f}"}
        for name in CANDIDATES:
            row[name] = tables.fmt_ms(r[name]["median"])
            row[name + "_gf"] = f"{r[name]['gflops']:.1f}"
        row["im2col"] = f"{row['im2col']} ({100 * r['im2col_share_of_conv']:.0f}%)"
        row["ratio"] = tables.fmt_ratio(r["conv_over_matmul"]["median_ratio"])
        row["tratio"] = tables.fmt_ratio(r["conv_over_torch"]["median_ratio"])
        if "target" in r:
            row["ratio"] += f" ({'meets' if r['target']['met'] else 'misses'} <= {TARGET_RATIO}x)"
        rows.append(row)
    return rows


COLUMNS = [("layer", "layer"), ("mkn", "GEMM MxKxN"), ("mflop", "MFLOP"), ("conv", "conv ms"),
           ("conv_gf", "GFLOP/s"), ("im2col", "im2col ms (% conv)"), ("matmul", "matmul ms"),
           ("matmul_gf", "GFLOP/s"), ("bmm", "bmm ms"), ("bmm_gf", "GFLOP/s"), ("ratio", "conv/matmul"),
           ("torch", "torch ms"), ("torch_gf", "GFLOP/s"), ("tratio", "conv/torch")]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, repeats=30, warmup=3)
    env = setup(parser.parse_args(argv))
    print(machine.describe(env), flush=True)
    rng = np.random.default_rng(env.args.seed)
    records = []
    for L in conv_layers():
        records.append(run_layer(env, L, rng))
        print(f"  done: {L.label}", flush=True)
    print()
    tables.print_table(table_rows(records), COLUMNS, title="conv2d forward vs a GEMM of the same size "
                                                      "(median ms; GFLOP/s from the median; float32)")
    write_json(env, "gemm", records)
    return 0


if __name__ == "__main__":
    process.relaunch_with_thread_env()
    raise SystemExit(main())
