"""Run the package's CUDA kernels on the CPU: compile each ``.cu`` with the host C++ compiler and a shim.

:func:`load` compiles one source with ``g++ -include shim.h`` (``-ffp-contract=off``: no fused
multiply-add contraction, so float arithmetic rounds like the GPU's with ``--fmad=false``) plus a
generated launcher per ``extern "C" __global__`` kernel, and returns a :class:`CpuModule` whose
kernels are called like CuPy's: ``kernel(grid, block, args)``.  Kernels that call ``__syncthreads``
run one OS thread per CUDA thread with a barrier; the others run their threads in a loop.

Libraries are cached under ``$XPCNN_CUDA_SHIM_CACHE`` (default: a folder in the temp directory),
keyed by a hash of the sources and flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import SOURCE_DIR, source

__all__ = ["CpuKernel", "CpuModule", "Param", "ShimError", "compiler", "kernels_in", "load"]

CXX_FLAGS = ("-std=c++20", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-pthread")

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)')

_CTYPES = {
    "float*": ctypes.c_void_p, "int*": ctypes.c_void_p, "double*": ctypes.c_void_p, "long long*": ctypes.c_void_p,
    "unsigned char*": ctypes.c_void_p, "int": ctypes.c_int, "long long": ctypes.c_longlong,
    "float": ctypes.c_float, "double": ctypes.c_double,
}


class ShimError(RuntimeError):
    """No host compiler, or a source that does not compile on the host."""


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its C type (qualifiers dropped, ``float*``) and name."""

    ctype: str
    name: str


def kernels_in(text: str) -> dict[str, tuple[tuple[Param, ...], bool]]:
    """``{kernel name: (parameters, cooperative)}`` for every ``extern "C" __global__`` kernel in ``text``.

    ``cooperative``: the kernel (or a device function it calls) uses ``__syncthreads``; decided per
    source file, which is exact for this package (loss.cu is the only such file).
    """
    cooperative = "__syncthreads" in _strip_comments(text)
    found = {}
    for match in _KERNEL.finditer(text):
        params = []
        for raw in match.group(2).split(","):
            words = raw.replace("__restrict__", " ").replace("const ", " ").replace("*", " * ").split()
            name = words[-1]
            ctype = " ".join(w for w in words[:-1] if w != "*") + ("*" if "*" in words else "")
            if ctype not in _CTYPES:
                raise ShimError(f"kernel {match.group(1)}: parameter type {ctype!r} is not supported by the shim")
            params.append(Param(ctype, name))
        found[match.group(1)] = (tuple(params), cooperative)
    return found


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def compiler() -> str | None:
    """The host C++ compiler (``$CXX`` or ``g++``), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def _launchers(kernels: dict[str, tuple[tuple[Param, ...], bool]]) -> str:
    out = []
    for name, (params, cooperative) in kernels.items():
        decl = ", ".join(f"{p.ctype} {p.name}" for p in params)
        args = ", ".join(p.name for p in params)
        out.append(f'extern "C" void shim_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
                   f'unsigned bz{", " if decl else ""}{decl}) {{\n'
                   f'    shim_launch(shim_dim3{{gx, gy, gz}}, shim_dim3{{bx, by, bz}}, {str(cooperative).lower()}, '
                   f'[&] {{ {name}({args}); }});\n}}\n')
    return "\n".join(out)


def _cache_dir() -> Path:
    path = Path(os.environ.get("XPCNN_CUDA_SHIM_CACHE") or Path(tempfile.gettempdir()) / "xpcnn-cuda-shim")
    path.mkdir(parents=True, exist_ok=True)
    return path


class CpuKernel:
    """One kernel of a :class:`CpuModule`: ``kernel(grid, block, args)`` like ``cupy.RawKernel``.

    ``args`` holds NumPy arrays (or objects with ``__array_interface__``/a ``ptr`` attribute, passed by
    address), ``None`` (a null pointer) and scalars (converted to the parameter's C type).
    """

    def __init__(self, fn: Any, name: str, params: tuple[Param, ...], cooperative: bool) -> None:
        self.name, self.params, self.cooperative = name, params, cooperative
        fn.argtypes = [ctypes.c_uint] * 6 + [_CTYPES[p.ctype] for p in params]
        fn.restype = None
        self._fn = fn

    def __call__(self, grid: Sequence[int] | int, block: Sequence[int] | int, args: Sequence[Any]) -> None:
        if len(args) != len(self.params):
            raise TypeError(f"kernel {self.name} takes {len(self.params)} arguments, got {len(args)}")
        g = (*_dims(grid), 1, 1)[:3]
        b = (*_dims(block), 1, 1)[:3]
        values: list[Any] = []
        for p, a in zip(self.params, args, strict=True):
            if p.ctype.endswith("*"):
                values.append(None if a is None else _address(a))
            else:
                values.append(_CTYPES[p.ctype](a.item() if isinstance(a, np.generic) else a))
        self._fn(*(int(v) for v in g), *(int(v) for v in b), *values)


def _dims(d: Sequence[int] | int) -> tuple[int, ...]:
    return tuple(int(v) for v in d) if isinstance(d, (tuple, list)) else (int(d),)  # type: ignore[arg-type]


def _address(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    ptr = getattr(a, "ptr", None)
    if ptr is not None:
        return int(ptr)
    if isinstance(a, (int, np.integer)):  # an address given as a number (0 for a null pointer)
        return int(a)
    raise TypeError(f"cannot pass {type(a).__name__} as a pointer argument")


class CpuModule:
    """The kernels of one CUDA source compiled for the CPU; ``get_function(name)`` like ``cupy.RawModule``."""

    def __init__(self, path: Path, kernels: dict[str, tuple[tuple[Param, ...], bool]]) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self._kernels = {name: CpuKernel(getattr(self._lib, f"shim_{name}"), name, params, coop)
                         for name, (params, coop) in kernels.items()}

    def get_function(self, name: str) -> CpuKernel:
        try:
            return self._kernels[name]
        except KeyError:
            raise ShimError(f"{self.path.name} has no kernel {name!r}; it has {sorted(self._kernels)}") from None


_LOADED: dict[str, CpuModule] = {}


def load(name: str | None = None, code: str | None = None) -> CpuModule:
    """Compile the package source ``name`` (or the text ``code``) for the CPU and load it (cached)."""
    text = source(name) if name is not None else code
    if text is None:
        raise ValueError("give a source name or code")
    cxx = compiler()
    if cxx is None:
        raise ShimError("no host C++ compiler (g++ or $CXX) to run the CUDA kernels on the CPU")
    kernels = kernels_in(text)
    shim = (SOURCE_DIR / "shim.h").read_text(encoding="utf-8")
    full = text + "\n\n// ---- generated launchers ----\n" + _launchers(kernels)
    key = hashlib.sha256("\0".join((shim, full, cxx, *CXX_FLAGS)).encode()).hexdigest()[:20]
    if key in _LOADED:
        return _LOADED[key]
    lib = _cache_dir() / f"{key}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "kernels.cpp"
            src.write_text(full, encoding="utf-8")
            out = Path(tmp) / "kernels.so"
            cmd = [cxx, *CXX_FLAGS, "-include", str(SOURCE_DIR / "shim.h"), "-o", str(out), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ShimError(f"host compile of {name or 'code'} failed:\n{proc.stderr[-4000:]}")
            os.replace(out, lib)  # atomic: parallel test workers never load a half-written library
    module = _LOADED[key] = CpuModule(lib, kernels)
    return module
