"""Grouped/depthwise convolution and a ResNet-8 training step: xpcnn against PyTorch in the same process.

    python benchmarks/architectures.py              # prints tables, writes benchmarks/results/architectures.json
    python benchmarks/architectures.py --quick      # 2 repeats, batch 16: a smoke run

Cases, each forward + backward (``dx`` included) on float32 NumPy arrays, CPU, 1 and 2 threads
(``threadpoolctl`` for NumPy's BLAS, ``torch.set_num_threads`` for PyTorch):

* ``depthwise``: a 3x3 depthwise convolution (``groups = C``) through the kernel seam (the ``numba_cpu``
  depthwise kernel where Numba is installed), in xpcnn's reference tap form, in the grouped im2col +
  batched-matmul form (forced, to show why the tap form exists), and in PyTorch; the dense 3x3
  convolution of the same size (C times the arithmetic; seam and reference) as a yardstick.
* ``resnet8 step``: forward, softmax cross-entropy, backward and an SGD-Nesterov update of
  :func:`xpcnn.models.resnet8` on 1x28x28 images, against a PyTorch twin of the same network.

Candidates run interleaved (A, B, A, B, ...) so machine noise hits both; medians and the median of the
per-round ratios are reported.  Speed is never asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import machine
from benchlib.results import RESULTS_DIR, write_results
from threadpoolctl import threadpool_limits

import xpcnn
from xpcnn import functional as F
from xpcnn import optim
from xpcnn.functional import conv as Fc

TF = torch.nn.functional


def set_kernel_workers(n: int) -> None:
    """The numba_cpu kernels' thread count (they fix it from the BLAS limit once; this run changes it)."""
    try:
        from xpcnn.kernels.numba_cpu import threads
    except ImportError:
        return
    threads.set_workers(n)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                run_length: int = 1) -> dict[str, list[float]]:
    """Seconds per call for each candidate, timed in rounds A, B, C, A, B, C, ... (``run_length`` > 1: that
    many consecutive calls per candidate per turn, so one library's idle threads disturb only the first)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, repeats, run_length):
        for name, fn in fns.items():
            for _ in range(min(run_length, repeats - start)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def im2col_grouped_form() -> Iterator[None]:
    """Force the grouped im2col + batched-matmul form for depthwise convolutions (the tap form is the default)."""
    saved = Fc._is_depthwise
    Fc._is_depthwise = lambda C, W, groups: False  # type: ignore[assignment]
    try:
        yield
    finally:
        Fc._is_depthwise = saved  # type: ignore[assignment]


def depthwise_cases(N: int, C: int, H: int, rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    Wd = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    Wf = rng.standard_normal((C, C, 3, 3)).astype(np.float32)
    geometry = ((1, 1), (1, 1), (1, 1))
    xt, wdt, wft = (torch.tensor(a, requires_grad=True) for a in (x, Wd, Wf))

    def xpcnn_conv(W: np.ndarray, groups: int) -> Callable[[], Any]:
        def run() -> Any:
            y, cache = Fc._conv2d_forward(x, W, None, *geometry, groups)
            return Fc._conv2d_backward(y, cache)
        return run

    def grouped_form() -> Any:
        with im2col_grouped_form():
            return xpcnn_conv(Wd, C)()

    def fast_conv(W: np.ndarray, groups: int) -> Callable[[], Any]:
        def run() -> Any:  # through the seam: the numba_cpu kernels where installed (mode auto)
            y, cache = xpcnn.kernels.conv2d.forward(x, W, None, *geometry, groups=groups)
            return xpcnn.kernels.conv2d.backward(y, cache, True)
        return run

    def torch_conv(w: torch.Tensor, groups: int) -> Callable[[], Any]:
        def run() -> Any:
            xt.grad = w.grad = None
            y = TF.conv2d(xt, w, None, 1, 1, 1, groups)
            y.backward(y.detach())
        return run

    return {"xpcnn depthwise (kernel seam)": fast_conv(Wd, C), "xpcnn depthwise (tap form)": xpcnn_conv(Wd, C),
            "xpcnn depthwise (im2col form)": grouped_form, "torch depthwise": torch_conv(wdt, C),
            "xpcnn dense 3x3 (kernel seam)": fast_conv(Wf, 1), "xpcnn dense 3x3": xpcnn_conv(Wf, 1),
            "torch dense 3x3": torch_conv(wft, 1)}


class TorchResNet8(torch.nn.Module):
    """The same network as :func:`xpcnn.models.resnet8` (1x1 projection shortcuts, no conv biases)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def cb(cin: int, cout: int, k: int, s: int) -> list[torch.nn.Module]:
            return [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]

        self.stem = nn.Sequential(*cb(1, 16, 3, 1), nn.ReLU())
        self.bodies = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        for cin, cout, s in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
            self.bodies.append(nn.Sequential(*cb(cin, cout, 3, s), nn.ReLU(), *cb(cout, cout, 3, 1)))
            self.shortcuts.append(nn.Sequential(*cb(cin, cout, 1, s)) if s != 1 else nn.Identity())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for body, shortcut in zip(self.bodies, self.shortcuts, strict=True):
            h = TF.relu(body(h) + shortcut(h))
        return self.fc(h.mean(dim=(2, 3)))


def resnet8_cases(N: int, rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    x = rng.standard_normal((N, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, N)
    model = xpcnn.models.resnet8(rng=0)
    opt = optim.Nesterov(model.parameters(), lr=0.01, weight_decay=5e-4)
    net = TorchResNet8()
    topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert sum(p.numel() for p in net.parameters()) == model.num_params()
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)

    def xpcnn_step() -> None:
        loss, probs = F.softmax_cross_entropy(model.forward(x, train=True), labels)
        model.backward(F.softmax_cross_entropy_backward(probs, labels))
        opt.step()

    def torch_step() -> None:
        topt.zero_grad()
        TF.cross_entropy(net(xt), lt).backward()
        topt.step()

    return {"xpcnn resnet8 step": xpcnn_step, "torch resnet8 step": torch_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="batch of the depthwise case")
    parser.add_argument("--step-batch", type=int, default=128, help="batch of the ResNet-8 step")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--run-length", type=int, default=1,
                        help="consecutive calls per candidate per turn (default 1: A, B, C, A, ...)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up, small batches: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "architectures.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.batch, args.step_batch = 2, 1, 8, 16

    rng = np.random.default_rng(0)
    groups = {
        f"depthwise 3x3 x({args.batch},32,28,28)": depthwise_cases(args.batch, 32, 28, rng),
        f"depthwise 3x3 x({args.batch},128,14,14)": depthwise_cases(args.batch, 128, 14, rng),
        f"resnet8 step batch {args.step_batch} 1x28x28": resnet8_cases(args.step_batch, rng),
    }
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        set_kernel_workers(threads)
        with threadpool_limits(threads):
            for case, fns in groups.items():
                times = interleaved(fns, args.repeats, args.warmup, args.run_length)
                torch_name = next(n for n in fns if n.startswith("torch") and "dense" not in n)
                for name, ts in times.items():
                    peer = "torch dense 3x3" if "dense" in name else torch_name
                    ratios = [a / b for a, b in zip(ts, times[peer], strict=True)]
                    rows.append({"case": case, "candidate": name, "threads": threads,
                                 "median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
                                 "vs_torch": statistics.median(ratios) if not name.startswith("torch") else 1.0})
    print(f"{'case':<38} {'candidate':<30} {'thr':>3} {'median':>10} {'min':>10} {'x torch':>8}")
    for r in rows:
        print(f"{r['case']:<38} {r['candidate']:<30} {r['threads']:>3} {r['median_ms']:>7.1f} ms "
              f"{r['min_ms']:>7.1f} ms {r['vs_torch']:>7.2f}x")
    write_results(args.out, "architectures", args, machine.host_info(), rows,
                  {"repeats": args.repeats, "warmup": args.warmup, "kernels": xpcnn.kernels.active_sets(),
                   "note": "forward + backward (dx included), float32, CPU; vs_torch = median of per-round ratios"})
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
