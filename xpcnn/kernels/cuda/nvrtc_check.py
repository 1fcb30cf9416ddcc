"""Compile the CUDA sources with NVRTC for the GPUs we target, without a GPU, and read ptxas' report.

Needs the pip packages ``cuda-bindings`` (13.x) and ``nvidia-cuda-nvrtc`` (13.x) (the ``nvrtc`` extra of
xpcnn); no driver or device.  Each source is compiled to a cubin for every architecture in
:data:`ARCHS` with the kernel set's own :data:`~xpcnn.kernels.cuda.NVRTC_OPTIONS` plus
``--ptxas-options=-v``, whose log gives every kernel's registers and spill stores/loads.

    python -m xpcnn.kernels.cuda.nvrtc_check        # a table; exit status 1 on an error or a spill
"""

from __future__ import annotations

import ctypes
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import NVRTC_OPTIONS, SOURCES, source

__all__ = ["ARCHS", "CompileResult", "KernelReport", "NvrtcUnavailable", "compile_source", "load_nvrtc"]

#: A100 (sm_80) and H100/H200 (sm_90)
ARCHS: tuple[str, ...] = ("sm_80", "sm_90")


class NvrtcUnavailable(RuntimeError):
    """``cuda-bindings`` or the NVRTC library is not installed."""


@dataclass(frozen=True)
class KernelReport:
    """ptxas' figures for one kernel: registers, spill stores and loads (bytes), stack frame (bytes)."""

    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int


@dataclass
class CompileResult:
    """One source compiled for one architecture."""

    source: str
    arch: str
    ok: bool
    seconds: float
    log: str
    cubin_bytes: int = 0
    kernels: list[KernelReport] = field(default_factory=list)
    cpu_seconds: float = 0.0  # process CPU time: what the compile costs on a machine that is not shared

    @property
    def spills(self) -> list[KernelReport]:
        return [k for k in self.kernels if k.spill_stores or k.spill_loads]


def load_nvrtc() -> Any:
    """``cuda.bindings.nvrtc`` with its library loaded; raises :class:`NvrtcUnavailable` if absent."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NvrtcUnavailable(f"cuda-bindings is not installed ({exc}); pip install 'xpcnn[nvrtc]'") from exc
    try:
        nvrtc.nvrtcVersion()
    except Exception:
        # the library may sit in the nvidia-cuda-nvrtc wheel beside an install made with --target
        _preload_from_wheel()
        try:
            nvrtc.nvrtcVersion()
        except Exception as exc:
            raise NvrtcUnavailable(f"the NVRTC library cannot be loaded ({type(exc).__name__}: {exc}); "
                                   "pip install 'nvidia-cuda-nvrtc>=13,<14'") from exc
    return nvrtc


def _preload_from_wheel() -> None:
    for entry in sys.path:
        for lib in sorted(Path(entry).glob("nvidia/cu*/lib/libnvrtc.so*")) + sorted(
                Path(entry).glob("nvidia/cuda_nvrtc/lib/libnvrtc.so*")):
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


_FUNC = re.compile(r"Compiling entry function '(\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> list[KernelReport]:
    """Per-kernel figures from a ``--ptxas-options=-v`` log."""
    reports, name, stack, stores, loads = [], None, 0, 0, 0
    for line in log.splitlines():
        if m := _FUNC.search(line):
            name = m.group(1)
        elif (m := _SPILL.search(line)) and name:
            stack, stores, loads = (int(v) for v in m.groups())
        elif (m := _REGS.search(line)) and name:
            reports.append(KernelReport(name, int(m.group(1)), stores, loads, stack))
            name = None
    return reports


def _check(result: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    err = result[0]
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1:]


def compile_source(name: str, arch: str, nvrtc: Any = None) -> CompileResult:
    """Compile package source ``name`` for ``arch`` (``"sm_90"``) to a cubin; never raises on a compile error."""
    nv = nvrtc or load_nvrtc()
    text = source(name)
    start, cpu_start = time.perf_counter(), time.process_time()
    (prog,) = _check(nv.nvrtcCreateProgram(text.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in (*NVRTC_OPTIONS, f"--gpu-architecture={arch}", "--ptxas-options=-v")]
        (err,) = nv.nvrtcCompileProgram(prog, len(opts), opts)
        (size,) = _check(nv.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = b" " * size
        _check(nv.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.rstrip(b"\0 ").decode(errors="replace")
        ok = int(err) == 0
        cubin = _check(nv.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")[0] if ok else 0
    finally:
        nv.nvrtcDestroyProgram(prog)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return CompileResult(name, arch, ok, seconds, log, int(cubin), parse_ptxas(log) if ok else [], cpu)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="compile the CUDA sources with NVRTC; exit 1 on an error or spill")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    nv = load_nvrtc()
    records = []
    (major, minor) = _check(nv.nvrtcVersion(), "nvrtcVersion")
    print(f"NVRTC {major}.{minor}; options {' '.join(NVRTC_OPTIONS)} --ptxas-options=-v")
    print(f"{'source':<10} {'arch':<6} {'ok':<3} {'wall s':>7} {'cpu s':>6} {'kernels':>7} {'max regs':>8} "
          f"{'spills':>6}")
    bad = 0
    for name in SOURCES:
        for arch in ARCHS:
            r = compile_source(name, arch, nv)
            records.append({"source": name, "arch": arch, "ok": r.ok, "seconds": r.seconds,
                            "cpu_seconds": r.cpu_seconds, "cubin_bytes": r.cubin_bytes,
                            "kernels": [vars(k) for k in r.kernels]})
            regs = max((k.registers for k in r.kernels), default=0)
            print(f"{name:<10} {arch:<6} {'yes' if r.ok else 'NO':<3} {r.seconds:7.3f} {r.cpu_seconds:6.3f} "
                  f"{len(r.kernels):7d} {regs:8d} {len(r.spills):6d}")
            if not r.ok or r.spills:
                bad += 1
                print(r.log)
    if args.json:
        Path(args.json).write_text(json.dumps({"nvrtc": f"{major}.{minor}", "options": list(NVRTC_OPTIONS),
                                               "results": records}, indent=1) + "\n", encoding="utf-8")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
