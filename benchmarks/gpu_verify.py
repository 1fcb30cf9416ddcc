"""One-shot verification of the CuPy path on a lent GPU (an H200): correctness, speed, syncs, the gpu tests.

One call must fit in a few device-minutes, so the script runs its stages in order under a time
budget (``--budget-s``, default 330 s), writes the JSON after every stage, and ``--stages`` (or
``--failed``) reruns only some of them, merging into the same file.  Stages:

==========  ============================================================================================
env         CuPy, CUDA runtime and driver, torch, NumPy versions; GPU name, SM/memory clocks (nvidia-smi)
roofline    host<->device copy bandwidth (pageable and pinned); SGEMM ceiling, TF32 off and on
calls       host microseconds per CuPy call (elementwise, reduction, matmul, an xpcnn conv forward)
parity      NumPy vs CuPy per op, forward and backward (relative to the largest reference magnitude:
            float64 <= 1e-12, float32 <= 1e-5 with TF32 off); TF32 reaching the conv GEMM (on: ~1e-3);
            20 LeNet-5 steps (float32 weights within 1e-5); 2 epochs compared by accuracy (0.2 points)
kernels     the CUDA kernel set against the reference ops (:func:`xpcnn.kernels.cuda.verify.run`:
            exact or 1e-5, determinism, microseconds per call); the set itself is opt-in
            (``XPCNN_CUDA_KERNELS=1``), so rerun ``--stages speed,profile`` with it for its speed
speed       training step and epoch time, xpcnn (CuPy, data on the device) vs PyTorch CUDA eager,
            batch 128 and 1024, medians of interleaved repeats
profile     CUDA kernel launches and device-to-host copies per training step (torch.profiler/CUPTI
            sees CuPy's kernels too), xpcnn and PyTorch
pytest      the ``gpu`` test lane (``pytest -m gpu``), last
==========  ============================================================================================

Running it on the device machine (Python 3.12, CuPy 14.2 cuda13x, torch 2.11, NumPy 2.5, no
internet, no array-api-compat): the project runs from ``PYTHONPATH`` (an offline ``pip install -e .``
fails in build isolation).  Carry these pure-Python wheels, unpacked into an ignored folder::

    pip download --no-deps -d .gpu_wheels array-api-compat==1.16.0 tqdm array-api-strict==2.6.1 \\
        pytest pluggy iniconfig packaging hypothesis sortedcontainers attrs
    pip install --no-deps --target .gpu_site .gpu_wheels/*.whl

then ``run`` with ``carry=[".gpu_site"]`` and the command::

    PYTHONPATH=$PWD:$PWD/.gpu_site python benchmarks/gpu_verify.py --out $OUT/gpu_verify.json

and, for stages that failed, ``... --failed --out <the same file>`` (the file is carried back
under ``$OUT``; copy it into the tree before a rerun).  ``--dry-run`` runs every stage on the CPU
with NumPy as the host and array-api-strict's ``device1`` as the device, tiny sizes, no CuPy:
CI runs it (tests/test_device_gpu_verify.py) so this script cannot rot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from xpcnn import backend as B  # noqa: E402
from xpcnn import kernels, models, optim, train  # noqa: E402
from xpcnn import layers as XL  # noqa: E402
from xpcnn.losses import SoftmaxCrossEntropy  # noqa: E402

STAGES = ("env", "roofline", "calls", "parity", "kernels", "speed", "profile", "pytest")
DEFAULT_OUT = HERE / "results" / "gpu_verify.json"
#: Tolerances, relative to the largest reference magnitude.
TOL = {"float64": 1e-12, "float32": 1e-5}


class Skip(Exception):
    """A stage (or part) that cannot run here; recorded with the reason, not a failure."""


class Ctx:
    """What the stages share: host and device backends, sizes, the budget clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = bool(args.dry_run)
        self.host = B.resolve("numpy")
        self.device = B.resolve("array_api_strict:device1" if self.dry else "cupy")
        self.deadline = time.monotonic() + args.budget_s
        self.scale = 0.02 if self.dry else 1.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float) -> None:
        if self.left() < seconds:
            raise Skip(f"budget: {self.left():.0f}s left, this needs about {seconds:.0f}s")

    def sync(self) -> None:
        if not self.dry:
            import cupy

            cupy.cuda.Device().synchronize()

    def n(self, full: int, least: int = 1) -> int:
        return max(least, int(full * self.scale))


# ----------------------------------------------------------------------------------------- env

def stage_env(ctx: Ctx) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "platform": platform.platform(), "dry_run": ctx.dry}
    for mod in ("array_api_compat", "array_api_strict", "tqdm", "pytest", "hypothesis", "torch", "cupy"):
        try:
            info[mod] = getattr(importlib.import_module(mod), "__version__", "present")
        except ImportError as exc:
            info[mod] = f"missing: {exc}"
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:
        pass
    if ctx.dry:
        info["device"] = str(ctx.device.device)
        return info
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    info.update(cuda_runtime=rt.runtimeGetVersion(), cuda_driver=rt.driverGetVersion(),
                gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                sm_count=props["multiProcessorCount"], memory_gib=props["totalGlobalMem"] / 2**30,
                compute_capability=f"{props['major']}.{props['minor']}",
                cupy_tf32_env=os.environ.get("CUPY_TF32"), active_kernel_sets=_kernel_sets(ctx))
    for key in ("clockRate", "memoryClockRate"):  # kHz; absent from CUDA 13's properties
        if key in props:
            info[f"{key}_mhz"] = props[key] / 1000
    info["nvidia_smi"] = _nvidia_smi()
    return info


def _kernel_sets(ctx: Ctx) -> Any:
    from xpcnn import kernels

    try:
        with B.using(ctx.device):
            return str(kernels.active_sets())
    except Exception as exc:  # report, do not fail the stage
        return f"unknown: {exc}"


def _nvidia_smi() -> Any:
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,temperature.gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"
    return dict(zip(query.split(","), [v.strip() for v in out.stdout.strip().split(",")], strict=False))


# ------------------------------------------------------------------------------------ roofline

def _time(fn: Callable[[], Any], ctx: Ctx, repeats: int = 5) -> float:
    """Median seconds of ``fn`` (synchronised before and after each run)."""
    fn()
    ctx.sync()
    times = []
    for _ in range(repeats):
        ctx.sync()
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def stage_roofline(ctx: Ctx) -> dict[str, Any]:
    nbytes = ctx.n(1 << 28, 1 << 16)  # 256 MiB
    host = np.ones(nbytes // 4, np.float32)
    out: dict[str, Any] = {"copy_bytes": int(host.nbytes)}
    dev = B.asarray(host, backend=ctx.device)
    out["h2d_pageable_gbs"] = host.nbytes / _time(lambda: B.asarray(host, backend=ctx.device), ctx) / 1e9
    out["d2h_gbs"] = host.nbytes / _time(lambda: B.to_numpy(dev), ctx) / 1e9
    if not ctx.dry:
        import cupy
        import cupyx

        pinned = cupyx.empty_pinned(host.shape, host.dtype)
        pinned[...] = host
        target = cupy.empty_like(dev)
        out["h2d_pinned_gbs"] = host.nbytes / _time(lambda: target.set(pinned), ctx) / 1e9
        out["d2h_pinned_gbs"] = host.nbytes / _time(lambda: target.get(out=pinned), ctx) / 1e9
        out["d2d_gbs"] = 2 * host.nbytes / _time(lambda: cupy.copyto(target, dev), ctx) / 1e9
    n = ctx.n(8192, 64)
    xp = ctx.device.xp
    a = B.asarray(np.random.default_rng(0).standard_normal((n, n)), "float32", backend=ctx.device)
    for label, tf32 in (("sgemm_tflops", False), ("sgemm_tf32_tflops", True)):
        if ctx.dry and tf32:
            continue
        if not ctx.dry:
            B.set_cupy_tf32(tf32)
        out[label] = 2 * n**3 / _time(lambda: xp.matmul(a, a), ctx) / 1e12
    if not ctx.dry:
        B.set_cupy_tf32(False)
    out["sgemm_n"] = n
    return out


# --------------------------------------------------------------------------------------- calls

def stage_calls(ctx: Ctx) -> dict[str, Any]:
    """Host time per call: ``calls`` launches back to back, one sync at the end, wall / calls."""
    xp = ctx.device.xp
    calls = ctx.n(2000, 50)
    small = B.asarray(np.ones(16), "float32", backend=ctx.device)
    mat = B.asarray(np.ones((64, 64)), "float32", backend=ctx.device)
    x = B.asarray(np.random.default_rng(0).standard_normal((128, 6, 14, 14)), "float32", backend=ctx.device)
    conv = XL.Conv2D(6, 16, 5, rng=0).to(ctx.device)
    cases = {"elementwise_add": lambda: small + small, "sum": lambda: xp.sum(small),
             "matmul_64": lambda: xp.matmul(mat, mat), "xpcnn_conv2d_forward_b128": lambda: conv.forward(x)}
    out = {}
    with B.using(ctx.device):
        for name, fn in cases.items():
            n = calls if not name.startswith("xpcnn") else max(10, calls // 20)
            fn()
            ctx.sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            host = time.perf_counter() - t0
            ctx.sync()
            out[f"{name}_host_us"] = 1e6 * host / n
            out[f"{name}_wall_us"] = 1e6 * (time.perf_counter() - t0) / n
    return out


# -------------------------------------------------------------------------------------- parity

def _rel(got: Any, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    return float(np.max(np.abs(np.asarray(B.to_numpy(got), np.float64) - ref)) / scale) if ref.size else 0.0


def _layer_cases(dtype: str) -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    return [
        ("conv2d_3x3_pad1", lambda: XL.Conv2D(3, 8, 3, padding=1, rng=0, dtype=dtype), (16, 3, 12, 12)),
        ("conv2d_5x5_stride2", lambda: XL.Conv2D(4, 6, 5, stride=2, rng=1, dtype=dtype), (8, 4, 15, 15)),
        ("max_pool2d", lambda: XL.MaxPool2D(2), (8, 4, 10, 10)),
        ("max_pool2d_3s2_ceil", lambda: XL.MaxPool2D(3, 2, ceil_mode=True), (8, 4, 11, 11)),
        ("avg_pool2d", lambda: XL.AvgPool2D(2), (8, 4, 10, 10)),
        ("dense", lambda: XL.Dense(48, 20, rng=2, dtype=dtype), (32, 48)),
        ("relu", lambda: XL.ReLU(), (32, 48)),
        ("sigmoid", lambda: XL.Sigmoid(), (32, 48)),
        ("tanh", lambda: XL.Tanh(), (32, 48)),
        ("batch_norm2d", lambda: XL.BatchNorm2D(4, dtype=dtype), (8, 4, 6, 6)),
    ]


def _run_layer(make: Callable[[], Any], be: B.Backend, x: np.ndarray, dout: np.ndarray, dtype: str) -> dict[str, Any]:
    with B.using(be):
        layer = make()
        y = layer.forward(B.asarray(x, dtype), train=True)
        dx = layer.backward(B.asarray(dout, dtype))
        out = {"y": B.to_numpy(y)}
        if dx is not None:
            out["dx"] = B.to_numpy(dx)
        out.update({f"d{k}": B.to_numpy(v) for k, v in layer.grads.items()})
        return out


def _op_parity(ctx: Ctx) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    worst = {"float64": 0.0, "float32": 0.0}
    for dtype in ("float64", "float32"):
        for name, make, shape in _layer_cases(dtype):
            x = rng.standard_normal(shape)
            with B.using(ctx.host):
                y_shape = tuple(make().forward(B.asarray(x, dtype)).shape)
            dout = rng.standard_normal(y_shape)
            with kernels.using_kernels("reference"):  # the oracle: NumPy's reference kernels
                ref = _run_layer(make, ctx.host, x, dout, dtype)
            got = _run_layer(make, ctx.device, x, dout, dtype)
            errs = {k: _rel(got[k], v) for k, v in ref.items()}
            results[f"{name}/{dtype}"] = errs
            worst[dtype] = max(worst[dtype], *errs.values())
        logits = rng.standard_normal((64, 10))
        labels = rng.integers(0, 10, 64)
        ce = {}
        for be in (ctx.host, ctx.device):
            with B.using(be):
                loss = SoftmaxCrossEntropy()
                value = loss.forward(B.asarray(logits, dtype), B.asarray(labels, "int64"))
                ce[be.spec] = (B.to_numpy(value), B.to_numpy(loss.backward()))
        errs = {"loss": _rel(ce[ctx.device.spec][0], ce[ctx.host.spec][0]),
                "dlogits": _rel(ce[ctx.device.spec][1], ce[ctx.host.spec][1])}
        results[f"softmax_cross_entropy/{dtype}"] = errs
        worst[dtype] = max(worst[dtype], *errs.values())
    return {"ops": results, "worst": worst,
            "ok": all(worst[d] <= TOL[d] for d in worst)}


def _tf32_reaches_conv(ctx: Ctx) -> dict[str, Any]:
    """The conv's and dense's float32 error against float64, TF32 off (~1e-7) and on (~1e-4..1e-3).

    With TF32 reaching a GEMM its error grows by orders of magnitude; the dry run computes only "off".
    """
    from xpcnn.model import Sequential

    rng = np.random.default_rng(1)
    x, xd = rng.standard_normal((32, 16, 14, 14)), rng.standard_normal((256, 400))

    def net(dtype: str) -> Sequential:
        return Sequential(XL.Conv2D(16, 32, 5, rng=0, dtype=dtype))

    with B.using(ctx.host):
        conv64, dense64 = net("float64"), Sequential(XL.Dense(400, 64, rng=0, dtype="float64"))
        ref = B.to_numpy(conv64.forward(B.asarray(x, "float64")))
        dense_ref = B.to_numpy(dense64.forward(B.asarray(xd, "float64")))
        weights = {k: B.to_numpy(v).astype(np.float32) for k, v in conv64.state_dict().items()}
        dense_w = {k: B.to_numpy(v).astype(np.float32) for k, v in dense64.state_dict().items()}
    out: dict[str, Any] = {}
    with B.using(ctx.device):
        conv32, dense32 = net("float32"), Sequential(XL.Dense(400, 64, rng=0))
        conv32.load_state_dict(weights)
        dense32.load_state_dict(dense_w)
        for mode in ((False,) if ctx.dry else (False, True)):
            if not ctx.dry:
                B.set_cupy_tf32(mode)
            tag = "on" if mode else "off"
            out[f"conv_err_tf32_{tag}"] = _rel(conv32.forward(B.asarray(x, "float32")), ref)
            out[f"dense_err_tf32_{tag}"] = _rel(dense32.forward(B.asarray(xd, "float32")), dense_ref)
        if not ctx.dry:
            B.set_cupy_tf32(False)
    if "conv_err_tf32_on" in out:
        out["conv_uses_tf32"] = out["conv_err_tf32_on"] > 10 * max(out["conv_err_tf32_off"], 1e-9)
        out["dense_uses_tf32"] = out["dense_err_tf32_on"] > 10 * max(out["dense_err_tf32_off"], 1e-9)
    out["ok"] = out["conv_err_tf32_off"] <= TOL["float32"] and out["dense_err_tf32_off"] <= TOL["float32"]
    return out


def _mnist(ctx: Ctx, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    from xpcnn.datasets import load_mnist, standardize, to_float

    ds = load_mnist(progress=False)
    x_train, mean, std = standardize(to_float(ds.x_train[:n_train]))
    x_test, _, _ = standardize(to_float(ds.x_test[:n_test]), mean, std)
    return x_train, ds.y_train[:n_train].astype(np.int64), x_test, ds.y_test[:n_test].astype(np.int64)


def _lenet_steps(be: B.Backend, x: np.ndarray, y: np.ndarray, steps: int, batch: int) -> dict[str, np.ndarray]:
    with B.using(be):
        model = models.lenet5(rng=0)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        trainer = train.Trainer(model, opt, SoftmaxCrossEntropy(), train.BatchIterator(x[:batch], y[:batch], batch))
        for i in range(steps):
            lo = (i * batch) % (x.shape[0] - batch + 1)
            trainer.step(B.asarray(x[lo:lo + batch]), B.asarray(y[lo:lo + batch]), i + 1)
        return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def stage_parity(ctx: Ctx) -> dict[str, Any]:
    if not ctx.dry:
        B.set_cupy_tf32(False)
    # CuPy reads CUPY_TF32 itself for 2-D GEMMs: with it set, float32 parity cannot reach 1e-5
    out: dict[str, Any] = {"tolerances": TOL, "cupy_tf32_env": os.environ.get("CUPY_TF32"), "ops": _op_parity(ctx)}
    out["tf32"] = _tf32_reaches_conv(ctx)
    x, y, xt, yt = _mnist(ctx, 128 if ctx.dry else 10000, 128 if ctx.dry else 10000)
    steps = 20 if not ctx.dry else 3
    with kernels.using_kernels("reference"):  # the oracle: NumPy's reference kernels, not a CPU fast set
        ref = _lenet_steps(ctx.host, x, y, steps, 16 if ctx.dry else 64)
    got = _lenet_steps(ctx.device, x, y, steps, 16 if ctx.dry else 64)
    worst = max(_rel(got[k], v) for k, v in ref.items())
    out["lenet5_steps"] = {"steps": steps, "worst_weight_err": worst, "ok": worst <= TOL["float32"]}
    ctx.need(60 if not ctx.dry else 1)
    acc = {}
    for be, on_device in ((ctx.host, False), (ctx.device, True)):
        with B.using(be):
            model = models.lenet5(rng=0)
            t0 = time.perf_counter()
            train.fit(model, optim.Adam(model.parameters(), lr=1e-3), (x, y), epochs=2,
                      batch_size=32 if ctx.dry else 128, seed=0,
                      on_device=on_device, progress=False, log=None)
            acc[be.spec] = {"accuracy": train.evaluate(model, (xt, yt), on_device=on_device)["accuracy"],
                            "fit_s": time.perf_counter() - t0}
    gap = 100 * abs(acc[ctx.device.spec]["accuracy"] - acc[ctx.host.spec]["accuracy"])
    out["two_epochs"] = {"train_samples": int(x.shape[0]), **acc, "gap_points": gap, "ok": gap <= 0.2}
    out["ok"] = bool(out["ops"]["ok"] and out["tf32"]["ok"] and out["lenet5_steps"]["ok"] and out["two_epochs"]["ok"])
    return out


# ------------------------------------------------------------------------------------- kernels

def stage_kernels(ctx: Ctx) -> dict[str, Any]:
    if ctx.dry:
        raise Skip("dry run: the CUDA set's stage runs dry on its CPU stand-in in tests/test_cuda_verify.py")
    import cupy

    from xpcnn.kernels.cuda import verify

    B.set_cupy_tf32(False)
    result = verify.run(cupy)
    result["xpcnn_cuda_kernels_env"] = os.environ.get("XPCNN_CUDA_KERNELS")
    return result


# --------------------------------------------------------------------------------------- speed

def _torch_device(ctx: Ctx) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Skip(f"torch is not installed: {exc}") from exc
    if ctx.dry:
        torch.set_num_threads(1)  # a busy CI machine: torch's thread pool only adds waiting
        return torch, torch.device("cpu")
    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, torch.device("cuda")


def _torch_sync(torch: Any, dev: Any) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _steppers(ctx: Ctx, batch: int, x: np.ndarray, y: np.ndarray) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """One training step each, xpcnn on the device backend and its PyTorch twin, data already on the device."""
    torch, tdev = _torch_device(ctx)
    from benchlib.twins import torch_twin

    with B.using(ctx.device):
        model = models.lenet5(rng=0)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        loader = train.BatchIterator(x, y, batch, rng=0, on_device=True)
        trainer = train.Trainer(model, opt, SoftmaxCrossEntropy(), loader)
        xb, yb = next(iter(loader))
    net = torch_twin(model, tdev)
    topt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx = torch.from_numpy(x[:batch]).to(tdev)
    ty = torch.from_numpy(y[:batch]).to(tdev)
    lossf = torch.nn.CrossEntropyLoss()

    def xstep() -> Any:
        with B.using(ctx.device):
            return trainer.step(xb, yb, 2)

    def tstep() -> Any:
        topt.zero_grad(set_to_none=True)
        loss = lossf(net(tx), ty)
        loss.backward()
        topt.step()
        return loss

    return xstep, tstep


def _interleaved(ctx: Ctx, fns: dict[str, Callable[[], Any]], repeats: int, inner: int) -> dict[str, float]:
    torch, tdev = _torch_device(ctx)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            ctx.sync()
            _torch_sync(torch, tdev)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            ctx.sync()
            _torch_sync(torch, tdev)
            times[name].append((time.perf_counter() - t0) / inner)
    return {f"{k}_ms": 1e3 * float(np.median(v)) for k, v in times.items()}


def stage_speed(ctx: Ctx) -> dict[str, Any]:
    x, y, _, _ = _mnist(ctx, 64 if ctx.dry else 60000, 1)
    out: dict[str, Any] = {}
    for batch in (128, 1024):
        b = 8 if ctx.dry else batch
        ctx.need(20 if not ctx.dry else 1)
        xstep, tstep = _steppers(ctx, b, x, y)
        res = _interleaved(ctx, {"xpcnn_step": xstep, "torch_step": tstep}, repeats=7 if not ctx.dry else 1,
                           inner=20 if not ctx.dry else 1)
        res["ratio_xpcnn_over_torch"] = res["xpcnn_step_ms"] / res["torch_step_ms"]
        out[f"batch{batch}"] = res
    ctx.need(60 if not ctx.dry else 1)
    torch, tdev = _torch_device(ctx)
    from benchlib.twins import torch_twin

    epoch = {}
    bs = 16 if ctx.dry else 128
    with B.using(ctx.device):
        model = models.lenet5(rng=0)
        t0 = time.perf_counter()
        train.fit(model, optim.Adam(model.parameters(), lr=1e-3), (x, y), epochs=1, batch_size=bs, seed=0,
                  on_device=True, progress=False, log=None)
        ctx.sync()
        epoch["xpcnn_epoch_s"] = time.perf_counter() - t0
    net = torch_twin(models.lenet5(rng=0), tdev)
    topt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
    lossf = torch.nn.CrossEntropyLoss()
    gen = torch.Generator(device="cpu").manual_seed(0)
    _torch_sync(torch, tdev)
    t0 = time.perf_counter()
    order = torch.randperm(tx.shape[0], generator=gen).to(tdev)
    total = torch.zeros((), device=tdev)
    for i in range(0, tx.shape[0], bs):
        idx = order[i:i + bs]
        topt.zero_grad(set_to_none=True)
        loss = lossf(net(tx[idx]), ty[idx])
        loss.backward()
        topt.step()
        total += loss.detach()
    float(total)
    epoch["torch_epoch_s"] = time.perf_counter() - t0
    epoch["ratio_xpcnn_over_torch"] = epoch["xpcnn_epoch_s"] / epoch["torch_epoch_s"]
    out[f"epoch_batch{bs}"] = {"samples": int(x.shape[0]), **epoch}
    return out


# ------------------------------------------------------------------------------------- profile

def stage_profile(ctx: Ctx) -> dict[str, Any]:
    torch, tdev = _torch_device(ctx)
    from torch.profiler import ProfilerActivity, profile

    x, y, _, _ = _mnist(ctx, 64 if ctx.dry else 4096, 1)
    steps = 10 if not ctx.dry else 2
    xstep, tstep = _steppers(ctx, 8 if ctx.dry else 128, x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tdev.type == "cuda" else [])
    out = {}
    for name, fn in (("xpcnn", xstep), ("torch", tstep)):
        fn()
        ctx.sync()
        _torch_sync(torch, tdev)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            ctx.sync()
            _torch_sync(torch, tdev)
        kernels = dtoh = htod = 0
        for ev in prof.events():
            kind = str(getattr(ev, "device_type", ""))
            label = ev.name.lower()
            if "cuda" in kind.lower():
                if "memcpy" in label and "dtoh" in label.replace(" ", "").replace("devicetohost", "dtoh"):
                    dtoh += 1
                elif "memcpy" in label and "htod" in label.replace(" ", "").replace("hosttodevice", "htod"):
                    htod += 1
                elif "memcpy" not in label and "memset" not in label:
                    kernels += 1
        out[name] = {"steps": steps, "kernels_per_step": kernels / steps, "dtoh_per_step": dtoh / steps,
                     "htod_per_step": htod / steps, "events": len(prof.events())}
    return out


# -------------------------------------------------------------------------------------- pytest

def stage_pytest(ctx: Ctx) -> dict[str, Any]:
    if ctx.dry:
        raise Skip("dry run: the gpu lane needs CuPy and a GPU (and would recurse into this test)")
    ctx.need(30)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-x", str(ROOT / "tests")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, ctx.left() - 5), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        return {"ok": False, "error": "timeout", "tail": str(exc.stdout or "")[-3000:]}
    return {"ok": done.returncode == 0, "returncode": done.returncode,
            "tail": (done.stdout + done.stderr)[-3000:]}


# ---------------------------------------------------------------------------------------- main

RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "env": stage_env, "roofline": stage_roofline, "calls": stage_calls, "parity": stage_parity,
    "kernels": stage_kernels,
    "speed": stage_speed, "profile": stage_profile, "pytest": stage_pytest,
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else str(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list, in this order: {','.join(STAGES)}")
    p.add_argument("--failed", action="store_true", help="run only the stages not 'ok' in the existing --out file")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (merged), default {DEFAULT_OUT}")
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting stages past this (default 330)")
    p.add_argument("--dry-run", action="store_true", help="CPU only: NumPy vs array-api-strict device1, tiny sizes")
    args = p.parse_args(argv)
    unknown = sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; expected some of {', '.join(STAGES)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.setdefault("stages", {})
    wanted = [s for s in STAGES if s in args.stages.split(",")]
    if args.failed:
        wanted = [s for s in wanted if doc["stages"].get(s, {}).get("status") != "ok"]
    ctx = Ctx(args)
    for name in wanted:
        t0 = time.perf_counter()
        try:
            ctx.need(5)
            record: dict[str, Any] = {"status": "ok", "result": RUNNERS[name](ctx)}
            if isinstance(record["result"], dict) and record["result"].get("ok") is False:
                record["status"] = "mismatch"
        except Skip as exc:
            record = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # record and go on: one broken stage must not cost the others
            record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        record["seconds"] = time.perf_counter() - t0
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc["stages"][name] = record
        _write(args.out, doc)
        print(f"{name:9s} {record['status']:9s} {record['seconds']:6.1f}s  "
              f"{record.get('reason') or record.get('error') or ''}", flush=True)
    return doc


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any(r["status"] in ("error", "mismatch") for r in result["stages"].values()) else 0)
