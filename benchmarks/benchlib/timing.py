"""Clocks, interleaved timing and the statistics reported (median, min, IQR); never an assertion on a time.

* Every comparison runs its candidates *interleaved* in one process: warm-up calls A, B, A, B, ..., then
  timed calls A, B, A, B, ...  Drift in the machine's load hits both sides alike, and the per-round ratio
  ``A_i / B_i`` is available as a paired statistic.
* One sample = ``perf_counter`` around ``number`` calls, bracketed by a device synchronisation on CUDA
  (the latency a caller sees, launch overhead included); on CUDA the calls are also bracketed by CUDA
  events of the library that runs them (``device`` statistics: GPU time on the stream).  ``number`` is 1
  on the CPU; on CUDA it is calibrated during warm-up so that one sample lasts at least ``min_sample_s``.
* The garbage collector is off while timing (as in ``timeit``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Candidate", "Clock", "CupyClock", "Stats", "TorchCudaClock", "compare", "gc_disabled", "ratio"]


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

    def _events(self) -> tuple[Any, Any]:
        return self._cupy.cuda.Event(), self._cupy.cuda.Event()

    def _elapsed_s(self, start: Any, end: Any) -> float:
        return float(self._cupy.cuda.get_elapsed_time(start, end)) / 1e3


class TorchCudaClock(_CudaClock):
    def __init__(self) -> None:
        import torch

        self._torch = torch

    def sync(self) -> None:
        self._torch.cuda.synchronize()

    def _events(self) -> tuple[Any, Any]:
        return self._torch.cuda.Event(enable_timing=True), self._torch.cuda.Event(enable_timing=True)

    def _elapsed_s(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) / 1e3


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


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """Collect once, then keep the garbage collector off inside the block."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compare(candidates: Sequence[Candidate], *, repeats: int, warmup: int, min_sample_s: float = 0.0,
            calibrate: bool = True, run_length: int = 1) -> dict[str, Stats]:
    """Time the candidates interleaved (A, B, A, B, ...) and return their :class:`Stats` by name.

    ``warmup`` untimed rounds come first; on CUDA (``min_sample_s > 0`` and ``calibrate``) the last
    warm-up call sets how many calls one sample makes.  Pass ``calibrate=False`` for stateful functions
    (training steps) that must run exactly once per sample.  ``run_length`` > 1 times that many
    consecutive samples of a candidate per turn (A, A, A, B, B, B, ...; ``repeats`` samples in all):
    libraries whose idle threads keep spinning after a call (PyTorch's OpenMP pool) then slow the other
    candidate only at the first sample of its turn, not at every one.
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
        for start in range(0, repeats, run_length):
            for c in candidates:
                for _ in range(min(run_length, repeats - start)):
                    wall, dev = c.clock.measure(c.fn, number[c.name])
                    walls[c.name].append(wall / number[c.name])
                    if dev is not None:
                        devs[c.name].append(dev / number[c.name])
    return {n: Stats(walls[n], number[n], devs[n] or None) for n in names}


def ratio(a: Stats, b: Stats) -> dict[str, float]:
    """``a / b``: of the medians, and the median of the per-round (paired) ratios."""
    paired = [x / y for x, y in zip(a.samples, b.samples, strict=False) if y > 0]
    return {"median_ratio": a.median / b.median if b.median > 0 else float("nan"),
            "paired_median_ratio": float(np.median(paired)) if paired else float("nan")}
