"""Models in and out of xpcnn: conversion differences, onnxruntime vs ``predict`` speed, safetensors vs npz.

    python benchmarks/interop.py              # LeNet-5 and the BN net, 1 thread everywhere
    python benchmarks/interop.py --quick      # few repeats

For each model (``lenet5``, ``bn``, and for the conversion also ``resnet8``; batch-norm running
statistics set away from their initial values, as after training), on the first 512 real MNIST test
images:

* **conversion**: ``max |a - b|`` and ``max |a - b| / max |b|`` between the logits of xpcnn's
  ``predict`` and of ``to_torch(model)`` (float32 and float64), of ``from_torch(to_torch(model))``,
  and of the exported ONNX file in onnxruntime (float32);
* **speed**: onnxruntime (``CPUExecutionProvider``, ``--threads`` intra-op and 1 inter-op thread) against
  ``model.predict`` (NumPy, BLAS limited to ``--threads``) and the torch twin (``no_grad``), at
  batch 1, 64 and 512, interleaved, medians;
* **files**: ``save_safetensors`` against ``xpcnn.checkpoint.save`` (npz) in bytes, and the time to
  rebuild the model from each (``load_safetensors(path)`` / ``checkpoint.load_model(path)``) and to
  read the raw arrays (``safetensors.numpy.load_file`` / ``numpy.load``), interleaved, medians.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from benchlib import machine, process, tables
from benchlib.results import RESULTS_DIR, write_results
from benchlib.timing import Candidate, Clock, compare, ratio
from safetensors.numpy import load_file

import xpcnn
from xpcnn import backend as B
from xpcnn import checkpoint, models
from xpcnn.interop import export_onnx, from_torch, load_safetensors, save_safetensors, to_torch

MODELS = ("lenet5", "bn")
CONVERSION_MODELS = ("lenet5", "bn", "resnet8")  # resnet8: Residual, GlobalAvgPool2D, nested Sequential
BATCHES = (1, 64, 512)


def build(name: str, dtype: str = "float32") -> xpcnn.Sequential:
    """The model with seeded weights and, for batch norm, running statistics away from 0 and 1."""
    model = models.build(name, rng=0, dtype=dtype)
    state = {}
    for key, value in model.state_dict().items():  # nested layers included (resnet8's blocks)
        n = value.shape[0]
        if key.endswith("running_mean"):
            state[key] = np.linspace(-0.3, 0.3, n, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = np.linspace(0.6, 1.8, n, dtype=dtype)
        else:
            state[key] = B.to_numpy(value)
    model.load_state_dict(state)
    return model


def mnist_test(n: int) -> np.ndarray:
    ds = xpcnn.datasets.load_mnist(download=False, progress=False)
    return ((xpcnn.datasets.to_float(ds.x_test[:n]) - 0.1307) / 0.3081).astype(np.float32)


def diff(got: Any, want: Any) -> dict[str, float]:
    a = np.asarray(B.to_numpy(got), np.float64)
    b = np.asarray(B.to_numpy(want), np.float64)
    return {"max_abs": float(np.abs(a - b).max()), "max_rel": float(np.abs(a - b).max() / np.abs(b).max())}


def torch_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


THREADS = {"n": 1}  # set from --threads in main


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS["n"]
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def conversion(name: str, x: np.ndarray, workdir: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"model": name, "images": int(x.shape[0])}
    for dtype in ("float32", "float64"):
        model = build(name, dtype)
        xs = x.astype(dtype)
        want = model.predict(xs)
        net = to_torch(model)
        rec[f"to_torch_{dtype}"] = diff(torch_logits(net, xs), want)
        rec[f"from_torch_{dtype}"] = diff(from_torch(net).predict(xs), want)
    model = build(name)
    path = workdir / f"{name}.onnx"
    export_onnx(model, path, (1, *x.shape[1:]))
    rec["onnxruntime_float32"] = diff(session(path).run(["logits"], {"input": x})[0], model.predict(x))
    return rec


def speed(name: str, x: np.ndarray, workdir: Path, repeats: int, warmup: int) -> list[dict[str, Any]]:
    model = build(name)
    net = to_torch(model)
    path = workdir / f"{name}.onnx"
    export_onnx(model, path, (1, *x.shape[1:]))
    sess = session(path)
    clock = Clock()
    out = []
    for batch in BATCHES:
        xb = np.ascontiguousarray(x[:batch])
        tb = torch.from_numpy(xb)

        def run_torch(tb: torch.Tensor = tb) -> Any:
            with torch.no_grad():
                return net(tb)

        stats = compare([Candidate("onnxruntime", lambda xb=xb: sess.run(["logits"], {"input": xb}), clock),
                         Candidate("predict", lambda xb=xb: model.predict(xb, batch_size=512), clock),
                         Candidate("torch", run_torch, clock)], repeats=repeats, warmup=warmup)
        out.append({"model": name, "batch": batch, **{k: v.as_dict() for k, v in stats.items()},
                    "predict_over_onnxruntime": ratio(stats["predict"], stats["onnxruntime"]),
                    "torch_over_onnxruntime": ratio(stats["torch"], stats["onnxruntime"])})
    return out


def files(name: str, workdir: Path, repeats: int, warmup: int) -> dict[str, Any]:
    model = build(name)
    st, npz = workdir / f"{name}.safetensors", workdir / f"{name}.npz"
    save_safetensors(model, st)
    checkpoint.save(npz, model)
    clock = Clock()

    def raw_npz() -> dict[str, np.ndarray]:
        with np.load(npz, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    stats = compare([Candidate("safetensors_model", lambda: load_safetensors(st), clock),
                     Candidate("npz_model", lambda: checkpoint.load_model(npz), clock),
                     Candidate("safetensors_arrays", lambda: load_file(str(st)), clock),
                     Candidate("npz_arrays", raw_npz, clock)], repeats=repeats, warmup=warmup)
    return {"model": name, "weights_bytes": sum(B.to_numpy(v).nbytes for v in model.state_dict().values()),
            "safetensors_bytes": st.stat().st_size, "npz_bytes": npz.stat().st_size,
            **{k: v.as_dict() for k, v in stats.items()},
            "npz_over_safetensors_model": ratio(stats["npz_model"], stats["safetensors_model"]),
            "npz_over_safetensors_arrays": ratio(stats["npz_arrays"], stats["safetensors_arrays"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per candidate (default 30; 5 quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per candidate (default 3; 1 quick)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="threads for NumPy's BLAS, torch, onnxruntime (1)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "interop-cpu.json")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 30)
    args.warmup = args.warmup or (1 if args.quick else 3)
    THREADS["n"] = args.threads
    malloc = process.tune_malloc()
    limits = process.limit_threads(args.threads)  # noqa: F841  (kept alive for the whole run)
    x = mnist_test(max(BATCHES))
    records: dict[str, list[dict[str, Any]]] = {"conversion": [], "speed": [], "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in CONVERSION_MODELS:
            records["conversion"].append(conversion(name, x, work))
            if name in MODELS:
                records["speed"] += speed(name, x, work, args.repeats, args.warmup)
                records["files"].append(files(name, work, args.repeats, args.warmup))
            print(f"  done: {name}", flush=True)
    print()
    tables.print_table([{"model": r["model"], **{k: f"{r[k]['max_abs']:.1e} / {r[k]['max_rel']:.1e}" for k in (
        "to_torch_float32", "to_torch_float64", "from_torch_float32", "from_torch_float64", "onnxruntime_float32")}}
        for r in records["conversion"]],
        [("model", "model"), ("to_torch_float32", "to_torch f32"), ("to_torch_float64", "to_torch f64"),
         ("from_torch_float32", "from_torch f32"), ("from_torch_float64", "from_torch f64"),
         ("onnxruntime_float32", "onnxruntime f32")],
        title=f"logits vs xpcnn predict on {x.shape[0]} MNIST test images: max |diff| / (max |diff| / max |logit|)")
    print()
    tables.print_table([{"model": r["model"], "batch": r["batch"], "ort": tables.fmt_ms(r["onnxruntime"]["median"]),
                         "pred": tables.fmt_ms(r["predict"]["median"]), "torch": tables.fmt_ms(r["torch"]["median"]),
                         "r": tables.fmt_ratio(r["predict_over_onnxruntime"]["median_ratio"]),
                         "rt": tables.fmt_ratio(r["torch_over_onnxruntime"]["median_ratio"])}
                        for r in records["speed"]],
                       [("model", "model"), ("batch", "batch"), ("ort", "onnxruntime ms"), ("pred", "predict ms"),
                        ("torch", "torch ms"), ("r", "predict/ort"), ("rt", "torch/ort")],
                       title=f"inference, {args.threads} thread(s), medians of {args.repeats} interleaved repeats")
    print()
    tables.print_table([{"model": r["model"], "st": f"{r['safetensors_bytes']:,}", "npz": f"{r['npz_bytes']:,}",
                         "stm": tables.fmt_ms(r["safetensors_model"]["median"]),
                         "npm": tables.fmt_ms(r["npz_model"]["median"]),
                         "rm": tables.fmt_ratio(r["npz_over_safetensors_model"]["median_ratio"]),
                         "sta": tables.fmt_ms(r["safetensors_arrays"]["median"]),
                         "npa": tables.fmt_ms(r["npz_arrays"]["median"]),
                         "ra": tables.fmt_ratio(r["npz_over_safetensors_arrays"]["median_ratio"])}
                        for r in records["files"]],
                       [("model", "model"), ("st", "safetensors bytes"), ("npz", "npz bytes"),
                        ("stm", "load model: safetensors ms"), ("npm", "npz ms"), ("rm", "npz/st"),
                        ("sta", "read arrays: safetensors ms"), ("npa", "npz ms"), ("ra", "npz/st")],
                       title="weights files: size, and time to rebuild the model / read the arrays (medians)")
    info = machine.host_info()
    info.update(malloc_tuning=malloc, threads=args.threads,
                onnxruntime_threads={"intra_op": args.threads, "inter_op": 1})
    write_results(args.out, "interop", args, info, records)
    return 0


if __name__ == "__main__":
    process.relaunch_with_thread_env()
    raise SystemExit(main())
