"""The command-line flags every benchmark script shares, and the defaults that depend on other flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["finish_args", "make_parser", "x_device"]


def make_parser(description: str | None, *, repeats: int, warmup: int, quick_repeats: int = 5,
                quick_warmup: int = 1) -> argparse.ArgumentParser:
    """The flags every script shares; scripts add their own to the returned parser."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("numpy", "cupy", "torch"), default=None,
                   help="xpcnn backend (default: numpy, or cupy with --device cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device for torch (and for xpcnn's torch backend); default: cpu, or cuda with "
                        "--backend cupy")
    p.add_argument("--batch-size", type=int, default=128, help="N, the batch size (default 128)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed samples per candidate (default {repeats}; {quick_repeats} with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed warm-up calls per candidate (default {warmup}; {quick_warmup} with --quick)")
    p.add_argument("--quick", action="store_true", help="few repeats: a smoke run that the script works")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads for torch (torch.set_num_threads) and NumPy's BLAS (threadpoolctl); default 2")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="on CUDA, calls per sample are raised until a sample lasts this long (default 2 ms; "
                        "ignored on the CPU, where one sample is one call)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in torch's cuDNN/cuBLAS (default off: both sides compute in float32)")
    p.add_argument("--seed", type=int, default=0, help="seed for inputs, weights and batch order (default 0)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output path (default benchmarks/results/<name>-<backend>-<device-kind>.json)")
    p.set_defaults(_defaults=(repeats, warmup, quick_repeats, quick_warmup))
    return p


def x_device(args: argparse.Namespace) -> str:
    """Where xpcnn's arrays live: ``cuda`` for CuPy and for torch on CUDA, else ``cpu``."""
    return "cuda" if args.backend == "cupy" or (args.backend == "torch" and args.device == "cuda") else "cpu"


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other flags (--quick, --device/--backend); SystemExit on a bad mix."""
    import torch

    if hasattr(args, "_defaults"):
        repeats, warmup, q_repeats, q_warmup = args._defaults
        del args._defaults
        if args.repeats is None:
            args.repeats = q_repeats if args.quick else repeats
        if args.warmup is None:
            args.warmup = q_warmup if args.quick else warmup
    if args.repeats < 1 or args.warmup < 1 or args.batch_size < 1 or args.threads < 1:
        raise SystemExit("--repeats, --warmup, --batch-size and --threads must all be >= 1")
    if args.device is None:
        # CuPy implies torch on CUDA too, unless this torch is a CPU-only build
        args.device = "cuda" if args.backend == "cupy" and torch.cuda.is_available() else "cpu"
    if args.backend is None:
        args.backend = "cupy" if args.device == "cuda" else "numpy"
    if args.backend == "numpy" and args.device == "cuda":
        raise SystemExit("--backend numpy runs on the CPU; with --device cuda use --backend cupy or torch")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch reports no CUDA device (a CPU-only build of torch?); "
                         "to time xpcnn on CuPy against torch on the CPU, pass --backend cupy --device cpu")
    if args.backend == "cupy" and args.device == "cpu":
        print("warning: xpcnn runs on the GPU (CuPy) but torch on the CPU: the xpcnn/torch ratios compare "
              "different devices", file=sys.stderr)
    if args.min_sample_ms is None:
        args.min_sample_ms = 2.0 if "cuda" in (args.device, x_device(args)) else 0.0
    return args
