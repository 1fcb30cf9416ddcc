"""Peak bytes allocated during one call, measured the way each library allows."""

from __future__ import annotations

import contextlib
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MEMORY_METHODS", "peak_bytes"]

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
    import torch

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

