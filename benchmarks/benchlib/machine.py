"""What explains a number: hardware, thread pools, library versions, settings and machine load."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import process

if TYPE_CHECKING:
    from .session import Env

__all__ = ["cpu_model", "describe", "gpu_name", "host_info", "run_info", "slug"]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: distributions whose versions are recorded (name in the JSON -> distribution)
VERSIONS = (("xpcnn", "xpcnn"), ("numpy", "numpy"), ("torch", "torch"), ("array_api_compat", "array-api-compat"),
            ("threadpoolctl", "threadpoolctl"), ("cupy", "cupy"), ("cupy-cuda12x", "cupy-cuda12x"),
            ("cupy-cuda13x", "cupy-cuda13x"), ("numba", "numba"), ("onnx", "onnx"),
            ("onnxruntime", "onnxruntime"), ("safetensors", "safetensors"))


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB"`` -> ``"nvidia-h100-80gb"`` (for file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The name of CUDA device 0, from torch or else from CuPy (when either is loaded and can see it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    if "cupy" in sys.modules:
        name = sys.modules["cupy"].cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def host_info() -> dict[str, Any]:
    """The machine and process, independent of any backend choice."""
    try:
        from threadpoolctl import threadpool_info

        pools = [{k: lib.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                          "threading_layer", "architecture")} for lib in threadpool_info()]
    except ImportError:
        pools = []
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_pressure": _read("/proc/pressure/cpu"),
        "threadpools": pools,
        "versions": {name: _version(dist) for name, dist in VERSIONS},
        "git_revision": _git_revision(),
        "thread_env_applied": process.thread_env_applied(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MALLOC_", "OMP_", "OPENBLAS_", "MKL_", "XPCNN_", "CUPY_", "CUDA_VISIBLE"))},
    }


def run_info(env: Env) -> dict[str, Any]:
    """:func:`host_info` plus the run's backend, devices, thread counts, timing settings and GPU details."""
    import torch

    args = env.args
    info = host_info()
    info.update({
        "threads_requested": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "malloc_tuning": env.malloc_tuning,
        "xpcnn_backend": env.be.spec,
        "xpcnn_device": str(env.be.device),
        "torch_device": str(env.torch_device),
        "device_kind": env.device_kind,
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "timing": {"clock": "time.perf_counter" + (" + device synchronize; CUDA events for device_*"
                                                   if "cuda" in (args.device, env.x_device) else ""),
                   "interleaved": True, "gc_disabled": True, "repeats": args.repeats, "warmup": args.warmup,
                   "min_sample_ms": args.min_sample_ms},
    })
    if "cuda" in (args.device, env.x_device):
        info["gpu"] = {"name": gpu_name()}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"].update(total_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                           torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                           tf32=bool(args.tf32), cudnn_benchmark=torch.backends.cudnn.benchmark)
    if env.lib == "cupy":
        import cupy

        info["gpu"].update(cupy_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                           cupy_driver=cupy.cuda.runtime.driverGetVersion(), cupy=cupy.__version__)
    return info


def describe(env: Env) -> str:
    """A one-paragraph header for the printed output."""
    info = run_info(env)
    blas = ", ".join(f"{t['internal_api']} {t['version']} ({t['num_threads']} thr)"
                     for t in info["threadpools"] if t["user_api"] == "blas") or "none found"
    dev = info.get("gpu", {}).get("name", info["cpu_model"])
    dev = dev if env.x_device == env.args.device else f"xpcnn on {env.x_device}, torch on {env.args.device}, {dev}"
    load = info["load_average_1_5_15"] or [float("nan")]
    return (f"xpcnn backend {info['xpcnn_backend']} vs torch on {info['torch_device']} | {dev}\n"
            f"CPU {info['cpu_model']}, {info['cpu_count']} cores, load {load[0]:.2f} | threads: torch "
            f"{info['torch_num_threads']}, BLAS {blas} | torch {info['versions']['torch']}, numpy "
            f"{info['versions']['numpy']} | batch {env.args.batch_size}, {env.args.repeats} repeats after "
            f"{env.args.warmup} warm-up, interleaved")
