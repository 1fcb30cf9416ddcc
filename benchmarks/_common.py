"""Shared helpers for the benchmark scripts: flags, backends, timing, memory, tables, JSON.

Not part of the xpcnn package; the scripts import it as ``_common`` (they run as
``python benchmarks/<name>.py``, which puts this directory on ``sys.path``).

Timing model
------------
* Every comparison runs its candidates *interleaved* in one process: warm-up
  calls A, B, A, B, ..., then timed calls A, B, A, B, ...  Drift in the
  machine's load (other jobs, turbo, thermal) then hits both sides alike, and
  the per-round ratio ``A_i / B_i`` is available as a paired statistic.
* One sample = ``perf_counter`` around ``number`` calls, bracketed by a device
  synchronisation on CUDA (so it is the latency a caller sees, launch overhead
  included).  On CUDA the same calls are also bracketed by CUDA events of the
  library that runs them (``device_*`` fields in the JSON: GPU time on the
  stream).  ``number`` is 1 on the CPU; on CUDA it is calibrated during
  warm-up so that one sample lasts at least ``--min-sample-ms``.
* The garbage collector is off while timing (as in ``timeit``).
* Reported: median, min and IQR (75th - 25th percentile) over the repeats.
  Nothing here ever asserts on a time.
* Idle thread pools must not spin.  Interleaving OpenBLAS (NumPy) and OpenMP
  (torch) in one process on a small, shared machine is badly hurt by their
  spin-waiting: an idle pool's threads keep burning the cores the other library
  needs (measured here, 2 busy cores: a LeNet-5 step 145-185 ms for xpcnn and
  255-280 ms for torch with the defaults, 38-69 ms and 24-39 ms without
  spinning).  So, before NumPy and torch load, this module sets
  ``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` unless they are
  already set (``XPCNN_BENCH_THREAD_ENV=0`` leaves the environment alone).  The
  scripts therefore import this module before NumPy and torch.
* glibc malloc is tuned as ``xpcnn train`` tunes it (:func:`xpcnn.perf.tune_malloc`,
  recorded as ``malloc_tuning``; ``XPCNN_BENCH_MALLOC=0`` turns it off).  It applies to the
  whole process, so torch gets it too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: set before NumPy (OpenBLAS) and torch (libgomp) initialise their thread pools; see the module docstring
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
THREAD_ENV_APPLIED = os.environ.get("XPCNN_BENCH_THREAD_ENV", "1") != "0"
if THREAD_ENV_APPLIED:
    _late = [m for m in ("numpy", "torch") if m in sys.modules]
    if _late:
        print(f"warning: {', '.join(_late)} imported before benchmarks/_common.py: {THREAD_ENV} may not apply",
              file=sys.stderr)
    for _key, _value in THREAD_ENV.items():
        os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(REPO_ROOT))

import torch  # noqa: E402  (after the sys.path fix-up, like xpcnn)

import xpcnn  # noqa: E402
from xpcnn import backend as B  # noqa: E402

# Like `xpcnn train`, keep NumPy's (and torch's) large temporaries in the heap instead of fresh
# mmap-ed pages (xpcnn.perf); XPCNN_BENCH_MALLOC=0 measures without it.
try:
    from xpcnn.perf import tune_malloc  # noqa: E402
except ImportError:  # an xpcnn from before the setting existed
    tune_malloc = None
MALLOC_TUNING = tune_malloc() if tune_malloc and os.environ.get("XPCNN_BENCH_MALLOC", "1") != "0" else None

MiB = float(1 << 20)


@dataclass(frozen=True)
class ConvLayer:
    """A convolution of the benchmarked nets: x (N, C, H, H) * W (F, C, K, K), stride 1."""

    label: str
    C: int
    F: int
    K: int
    pad: int
    H: int
    first: bool  # the network's first layer: its input is the data, so no dx is needed

    @property
    def out(self) -> int:
        return self.H + 2 * self.pad - self.K + 1

    def flops(self, N: int) -> int:
        """Multiply-adds x 2 of the forward: ``2 * N * F * OH * OW * C * KH * KW``."""
        return 2 * N * self.F * self.out * self.out * self.C * self.K * self.K

    def describe(self) -> str:
        return (f"x(N,{self.C},{self.H},{self.H}) W({self.F},{self.C},{self.K},{self.K}) pad {self.pad}"
                + (" [no dx]" if self.first else ""))


def randn(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Host float32 normal numbers times ``scale``."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


#: LeNet-5's and the wide net's convolutions (xpcnn.models.lenet5 / wide_cnn)
CONV_LAYERS = (
    ConvLayer("lenet.conv1", 1, 6, 5, 2, 28, first=True),
    ConvLayer("lenet.conv2", 6, 16, 5, 0, 14, first=False),
    ConvLayer("wide.conv1", 1, 32, 3, 1, 28, first=True),
    ConvLayer("wide.conv2", 32, 64, 3, 1, 14, first=False),
)


# ============================================================================ command line


def make_parser(description: str, *, repeats: int, warmup: int, quick_repeats: int = 5,
                quick_warmup: int = 1) -> argparse.ArgumentParser:
    """The flags every script shares; scripts add their own to the returned parser."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other flags (--quick, --device/--backend)."""
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


def x_device(args: argparse.Namespace) -> str:
    """Where xpcnn's arrays live: ``cuda`` for CuPy and for torch on CUDA, else ``cpu``."""
    return "cuda" if args.backend == "cupy" or (args.backend == "torch" and args.device == "cuda") else "cpu"


# ============================================================================ clocks


class Clock:
    """Times ``number`` calls of a function on the CPU: ``perf_counter`` only."""

    kind = "cpu"

    def sync(self) -> None:
        pass

    def measure(self, fn: Callable[[], Any], number: int) -> tuple[float, float | None]:
        """Returns ``(wall seconds, device seconds or None)`` for ``number`` calls."""
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - t0, None


class _CudaClock(Clock):
    """Synchronise the device before and after; also bracket the calls with CUDA events."""

    kind = "cuda"

    def _events(self) -> tuple[Any, Any]:  # pragma: no cover - needs a GPU
        raise NotImplementedError

    def _elapsed_s(self, start: Any, end: Any) -> float:  # pragma: no cover - needs a GPU
        raise NotImplementedError

    def measure(self, fn: Callable[[], Any], number: int) -> tuple[float, float | None]:
        start, end = self._events()
        self.sync()
        t0 = time.perf_counter()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        self.sync()
        wall = time.perf_counter() - t0
        return wall, self._elapsed_s(start, end)


class CupyClock(_CudaClock):
    def __init__(self) -> None:
        import cupy

        self._cupy = cupy

    def sync(self) -> None:
        self._cupy.cuda.Device().synchronize()

    def _events(self):
        return self._cupy.cuda.Event(), self._cupy.cuda.Event()

    def _elapsed_s(self, start, end):
        return self._cupy.cuda.get_elapsed_time(start, end) / 1e3


class TorchCudaClock(_CudaClock):
    def sync(self) -> None:
        torch.cuda.synchronize()

    def _events(self):
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _elapsed_s(self, start, end):
        return start.elapsed_time(end) / 1e3


# ============================================================================ statistics and comparison


@dataclass
class Stats:
    """Seconds per call over the timed repeats (``number`` calls per sample)."""

    samples: list[float]
    number: int = 1
    device_samples: list[float] | None = None

    @staticmethod
    def _summary(values: Sequence[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        return {"median": float(med), "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
                "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}

    @property
    def median(self) -> float:
        return self._summary(self.samples)["median"]

    @property
    def min(self) -> float:
        return float(min(self.samples))

    @property
    def iqr(self) -> float:
        return self._summary(self.samples)["iqr"]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": "s", **self._summary(self.samples), "repeats": len(self.samples),
                               "calls_per_sample": self.number, "samples": self.samples}
        if self.device_samples is not None:
            out["device"] = {**self._summary(self.device_samples), "samples": self.device_samples}
        return out


@dataclass
class Candidate:
    """One function to time, with the clock of the library that runs it."""

    name: str
    fn: Callable[[], Any]
    clock: Clock


def compare(candidates: Sequence[Candidate], *, repeats: int, warmup: int, min_sample_s: float = 0.0,
            calibrate: bool = True) -> dict[str, Stats]:
    """Time the candidates interleaved (A, B, A, B, ...) and return their :class:`Stats` by name.

    ``warmup`` untimed rounds come first; on CUDA (``min_sample_s > 0`` and
    ``calibrate``) the last warm-up call sets how many calls one sample makes.
    Pass ``calibrate=False`` for stateful functions (training steps) that must
    run exactly once per sample.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    last = {c.name: 0.0 for c in candidates}
    for _ in range(max(1, warmup)):
        for c in candidates:
            last[c.name], _ = c.clock.measure(c.fn, 1)
    number = {c.name: 1 for c in candidates}
    if calibrate and min_sample_s > 0:
        for c in candidates:
            number[c.name] = int(min(10_000, max(1, math.ceil(min_sample_s / max(last[c.name], 1e-9)))))
    walls: dict[str, list[float]] = {n: [] for n in names}
    devs: dict[str, list[float]] = {n: [] for n in names}
    with gc_disabled():
        for _ in range(repeats):
            for c in candidates:
                wall, dev = c.clock.measure(c.fn, number[c.name])
                walls[c.name].append(wall / number[c.name])
                if dev is not None:
                    devs[c.name].append(dev / number[c.name])
    return {n: Stats(walls[n], number[n], devs[n] or None) for n in names}


def ratio(a: Stats, b: Stats) -> dict[str, float]:
    """``a / b``: of the medians, and the median of the per-round (paired) ratios."""
    paired = [x / y for x, y in zip(a.samples, b.samples) if y > 0]
    return {"median_ratio": a.median / b.median if b.median > 0 else float("nan"),
            "paired_median_ratio": float(np.median(paired)) if paired else float("nan")}


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ============================================================================ memory


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (kineto prints start/stop lines there from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_tracemalloc(fn: Callable[[], Any]) -> int:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


def _peak_torch_cpu_profiler(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # "[memory]" events carry signed byte counts (+alloc, -free); the peak of their running sum.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += int(e.nbytes())
        peak = max(peak, current)
    return peak


def _peak_torch_cuda(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _peak_cupy(fn: Callable[[], Any]) -> int:
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        """Running sum of bytes handed out by / returned to CuPy's memory pool, and its maximum."""

        name = "xpcnn_bench_peak"

        def __init__(self) -> None:
            self.current = self.peak = 0

        def malloc_postprocess(self, **kw: Any) -> None:
            self.current += kw["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw: Any) -> None:
            self.current -= kw["mem_size"]

    cupy.cuda.Device().synchronize()
    hook = PeakHook()
    with hook:
        fn()
        cupy.cuda.Device().synchronize()
    return hook.peak


#: how each library's peak is measured (shown in the tables and the JSON)
MEMORY_METHODS = {
    ("numpy", "cpu"): "tracemalloc (NumPy reports its buffers to it)",
    ("torch", "cpu"): "torch.profiler profile_memory (peak of the running sum of [memory] events); "
                      "tracemalloc does not see torch's CPU allocator",
    ("torch", "cuda"): "torch.cuda.max_memory_allocated - memory_allocated before",
    ("cupy", "cuda"): "CuPy memory-pool hook (peak of bytes in use from the pool)",
}


def peak_bytes(fn: Callable[[], Any], lib: str, device: str) -> int | None:
    """Peak bytes allocated (above what existed before) during one call of ``fn``; None if unavailable."""
    try:
        if lib == "numpy":
            return _peak_tracemalloc(fn)
        if lib == "torch":
            return _peak_torch_cuda(fn) if device == "cuda" else _peak_torch_cpu_profiler(fn)
        if lib == "cupy":
            return _peak_cupy(fn)
    except Exception as exc:  # a profiler API that changed must not kill the timing run
        print(f"warning: peak-memory measurement for {lib}/{device} failed: {exc!r}", file=sys.stderr)
    return None


# ============================================================================ environment


@dataclass
class Env:
    """The resolved run: xpcnn backend, torch device, clocks, thread limits."""

    args: argparse.Namespace
    be: B.Backend
    torch_device: torch.device
    x_clock: Clock
    t_clock: Clock
    _limits: Any = field(default=None, repr=False)

    @property
    def lib(self) -> str:
        """The library behind xpcnn's arrays: numpy, cupy or torch."""
        return self.be.name

    @property
    def xp(self) -> Any:
        return self.be.xp

    @property
    def x_device(self) -> str:
        """``cpu`` or ``cuda``: where xpcnn's arrays live."""
        return x_device(self.args)

    @property
    def device_kind(self) -> str:
        """``cpu`` or ``cuda-<gpu name>`` (plus ``-torch-cpu`` when torch is elsewhere); used in file names."""
        kind = "cpu" if self.x_device == "cpu" else "cuda-" + _slug(gpu_name() or "unknown")
        return kind if self.x_device == self.args.device else f"{kind}-torch-{self.args.device}"

    def x(self, host: np.ndarray) -> Any:
        """A host array copied onto xpcnn's backend (dtype kept)."""
        return B.asarray(host, backend=self.be)

    def t(self, host: np.ndarray, grad: bool = False) -> torch.Tensor:
        """A host array copied into a torch tensor on the torch device."""
        return torch.tensor(np.ascontiguousarray(host), device=self.torch_device, requires_grad=grad)

    def xcand(self, name: str, fn: Callable[[], Any]) -> Candidate:
        return Candidate(name, fn, self.x_clock)

    def tcand(self, name: str, fn: Callable[[], Any]) -> Candidate:
        return Candidate(name, fn, self.t_clock)

    def x_peak(self, fn: Callable[[], Any]) -> int | None:
        return peak_bytes(fn, self.lib, self.x_device)

    def t_peak(self, fn: Callable[[], Any]) -> int | None:
        return peak_bytes(fn, "torch", self.args.device)

    def compare(self, candidates: Sequence[Candidate], calibrate: bool = True) -> dict[str, Stats]:
        return compare(candidates, repeats=self.args.repeats, warmup=self.args.warmup,
                       min_sample_s=self.args.min_sample_ms / 1e3, calibrate=calibrate)

    def memory_methods(self) -> dict[str, str]:
        return {"xpcnn": MEMORY_METHODS.get((self.lib, self.x_device), "n/a"),
                "torch": MEMORY_METHODS.get(("torch", self.args.device), "n/a")}


def setup(args: argparse.Namespace) -> Env:
    """Resolve backend/device, pin thread counts, configure TF32; returns the :class:`Env`."""
    args = finish_args(args)
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=args.threads, user_api="blas")  # kept alive for the whole run
    torch.set_num_threads(args.threads)
    spec = {"numpy": "numpy", "cupy": "cupy:0", "torch": f"torch:{args.device}"}[args.backend]
    try:
        be = B.set_backend(spec)
    except B.BackendError as exc:
        raise SystemExit(f"cannot use xpcnn backend {spec!r}: {exc}") from None
    t_clock: Clock = Clock()
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        t_clock = TorchCudaClock()
    x_clock = CupyClock() if args.backend == "cupy" else t_clock
    return Env(args, be, torch.device(args.device), x_clock, t_clock, limits)


# ============================================================================ machine details


def _slug(text: str) -> str:
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
    """The name of CUDA device 0, from torch or else from CuPy (when either can see it)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
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


def machine_info(env: Env) -> dict[str, Any]:
    """Everything that explains a number: hardware, thread counts, BLAS, versions, settings, load."""
    from threadpoolctl import threadpool_info

    args = env.args
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_pressure": _read("/proc/pressure/cpu"),
        "threads_requested": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "threadpools": [{k: lib.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                                  "num_threads", "threading_layer", "architecture")}
                        for lib in threadpool_info()],
        "versions": {name: _version(dist) for name, dist in (
            ("xpcnn", "xpcnn"), ("numpy", "numpy"), ("torch", "torch"), ("array_api_compat", "array-api-compat"),
            ("threadpoolctl", "threadpoolctl"), ("cupy", "cupy"), ("cupy-cuda12x", "cupy-cuda12x"),
            ("cupy-cuda13x", "cupy-cuda13x"))},
        "git_revision": _git_revision(),
        "thread_env_applied": THREAD_ENV_APPLIED,
        "malloc_tuning": MALLOC_TUNING,
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MALLOC_", "OMP_", "OPENBLAS_", "MKL_", "XPCNN_", "CUPY_", "CUDA_VISIBLE"))},
        "xpcnn_backend": env.be.spec,
        "xpcnn_device": str(env.be.device),
        "torch_device": str(env.torch_device),
        "device_kind": env.device_kind,
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "timing": {"clock": "time.perf_counter" + (" + device synchronize; CUDA events for device_*"
                                                   if "cuda" in (args.device, env.x_device) else ""),
                   "interleaved": True, "gc_disabled": True, "repeats": args.repeats, "warmup": args.warmup,
                   "min_sample_ms": args.min_sample_ms},
    }
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
    info = machine_info(env)
    blas = ", ".join(f"{t['internal_api']} {t['version']} ({t['num_threads']} thr)"
                     for t in info["threadpools"] if t["user_api"] == "blas") or "none found"
    dev = info.get("gpu", {}).get("name", info["cpu_model"])
    dev = dev if env.x_device == env.args.device else f"xpcnn on {env.x_device}, torch on {env.args.device}, {dev}"
    load = info["load_average_1_5_15"]
    return (f"xpcnn backend {info['xpcnn_backend']} vs torch on {info['torch_device']} | {dev}\n"
            f"CPU {info['cpu_model']}, {info['cpu_count']} cores, load {load[0]:.2f} | threads: torch "
            f"{info['torch_num_threads']}, BLAS {blas} | torch {info['versions']['torch']}, numpy "
            f"{info['versions']['numpy']} | batch {env.args.batch_size}, {env.args.repeats} repeats after "
            f"{env.args.warmup} warm-up, interleaved")


# ============================================================================ output


def fmt_ms(seconds: float | None, digits: int = 3) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.{digits}g}" if ms >= 1 else f"{ms:.{digits}f}"


def fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MiB:.1f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x"


#: the columns :func:`timing_cells` fills: xpcnn and torch median / min / IQR, and their ratio
TIMING_COLUMNS = [("x", "xpcnn ms"), ("xmin", "min"), ("xiqr", "IQR"), ("t", "torch ms"), ("tmin", "min"),
                  ("tiqr", "IQR"), ("ratio", "xpcnn/torch")]


def timing_cells(rec: dict[str, Any]) -> dict[str, str]:
    """Table cells for a record with ``xpcnn`` / ``torch`` :meth:`Stats.as_dict` and a ``median_ratio``."""
    x, t = rec["xpcnn"], rec["torch"]
    return {"x": fmt_ms(x["median"]), "xmin": fmt_ms(x["min"]), "xiqr": fmt_ms(x["iqr"]),
            "t": fmt_ms(t["median"]), "tmin": fmt_ms(t["min"]), "tiqr": fmt_ms(t["iqr"]),
            "ratio": fmt_ratio(rec["median_ratio"])}


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """Print ``rows`` (dicts of already-formatted values) under ``columns`` = [(key, header), ...]."""
    cells = [[str(h) for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def output_path(env: Env, name: str) -> Path:
    if env.args.out is not None:
        return env.args.out
    return RESULTS_DIR / f"{name}-{env.args.backend}-{env.device_kind}.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(env: Env, name: str, results: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"benchmark", "argv", "args", "machine", "results", ...}`` atomically; returns the path."""
    path = output_path(env, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = {k: v for k, v in vars(env.args).items() if not k.startswith("_")}
    doc = {"benchmark": name, "argv": sys.argv, "args": args, "machine": machine_info(env),
           "memory_methods": env.memory_methods(), **(extra or {}), "results": results}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


__all__ = [
    "B", "CONV_LAYERS", "Candidate", "Clock", "ConvLayer", "Env", "MiB", "Stats", "TIMING_COLUMNS", "compare",
    "describe", "fmt_mib", "fmt_ms", "fmt_ratio", "gc_disabled", "machine_info", "make_parser", "peak_bytes",
    "print_table", "randn", "ratio", "setup", "timing_cells", "torch", "write_json", "xpcnn",
]
