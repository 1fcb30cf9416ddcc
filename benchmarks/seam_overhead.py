"""Cost the kernel seam adds to one op call: ``kernels.relu.forward(x)`` against calling the reference directly.

    python benchmarks/seam_overhead.py            # prints a table, writes benchmarks/results/seam_overhead.json

A 4-element array keeps the arithmetic negligible, so the difference is the dispatch itself (mode lookup,
candidate cache, cache wrapping).  Medians of interleaved repeats, in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from benchlib import machine
from benchlib.results import RESULTS_DIR, write_results

from xpcnn import kernels
from xpcnn.functional.activation import _relu


def per_call_us(fn, x, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn(x)
    return (time.perf_counter() - start) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 2000 calls: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "seam_overhead.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.number = 3, 2000

    x = np.ones(4, dtype=np.float32)

    def direct(a):
        y = _relu(a)
        return y, y

    rows = []
    for mode in ("auto", "reference"):
        seam, plain = [], []
        with kernels.using_kernels(mode):
            for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
                seam.append(per_call_us(kernels.relu.forward, x, args.number))
                plain.append(per_call_us(direct, x, args.number))
        rows.append({"mode": mode, "seam_us": statistics.median(seam), "direct_us": statistics.median(plain),
                     "added_us": statistics.median(s - p for s, p in zip(seam, plain, strict=True))})
    print(f"{'mode':<10} {'through seam':>13} {'direct':>9} {'added':>9}")
    for r in rows:
        print(f"{r['mode']:<10} {r['seam_us']:>10.3f} us {r['direct_us']:>6.3f} us {r['added_us']:>6.3f} us")
    write_results(args.out, "seam_overhead", args, machine.host_info(), rows,
                  {"repeats": args.repeats, "number": args.number})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
