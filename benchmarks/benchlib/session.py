"""The resolved benchmark run (:class:`Env`) and :func:`setup`, which applies the process settings once."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xpcnn import backend as B

from . import machine, memory, process
from .options import finish_args, x_device
from .timing import Candidate, Clock, CupyClock, Stats, TorchCudaClock, compare

__all__ = ["Env", "setup"]


@dataclass
class Env:
    """The resolved run: xpcnn backend, torch device, clocks, thread limits, process settings."""

    args: argparse.Namespace
    be: B.Backend
    torch_device: torch.device
    x_clock: Clock
    t_clock: Clock
    malloc_tuning: dict[str, int] | None = None
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
        kind = "cpu" if self.x_device == "cpu" else "cuda-" + machine.slug(machine.gpu_name() or "unknown")
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
        return memory.peak_bytes(fn, self.lib, self.x_device)

    def t_peak(self, fn: Callable[[], Any]) -> int | None:
        return memory.peak_bytes(fn, "torch", self.args.device)

    def compare(self, candidates: Sequence[Candidate], calibrate: bool = True, run_length: int = 1) -> dict[str, Stats]:
        return compare(candidates, repeats=self.args.repeats, warmup=self.args.warmup,
                       min_sample_s=self.args.min_sample_ms / 1e3, calibrate=calibrate, run_length=run_length)

    def memory_methods(self) -> dict[str, str]:
        return {"xpcnn": memory.MEMORY_METHODS.get((self.lib, self.x_device), "n/a"),
                "torch": memory.MEMORY_METHODS.get(("torch", self.args.device), "n/a")}

    def machine_info(self) -> dict[str, Any]:
        """:func:`machine.run_info` for this run."""
        return machine.run_info(self)


def setup(args: argparse.Namespace) -> Env:
    """Resolve backend/device, tune malloc, pin thread counts, configure TF32; returns the :class:`Env`."""
    args = finish_args(args)
    malloc = process.tune_malloc()
    limits = process.limit_threads(args.threads)  # kept alive (in the Env) for the whole run
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
    return Env(args, be, torch.device(args.device), x_clock, t_clock, malloc, limits)
