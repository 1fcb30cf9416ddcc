"""A stand-in for the CuPy namespace, backed by NumPy, that counts kernel launches (for CI without a GPU).

:class:`StandIn` plays both parts CuPy plays: the array namespace the reference ops use (its arrays
answer ``__array_namespace__``) and the module the CUDA kernel set uses (``RawModule``, ``empty``,
``matmul``, ...).  ``RawModule`` compiles the package's ``.cu`` sources with the CPU shim
(:mod:`xpcnn.kernels.cuda.shim`), so the fused kernels really run and their results can be compared
with the reference path on the same arrays.

Every call that would launch a CUDA kernel under CuPy is recorded in :attr:`StandIn.ledger`:

* elementwise operators and functions, reductions, casts (``astype``), copies (``__setitem__``,
  ``ascontiguousarray``, ``copy``, a ``reshape`` that cannot be a view), creation that fills memory
  (``zeros``, ``full``, ``arange``, ...; ``empty`` launches nothing), gathers by integer arrays: 1 each;
* ``matmul`` of 2-D operands: 1 (cuBLAS GEMM; transposed operands are cuBLAS flags), plus 1 copy per
  operand that is neither C- nor F-contiguous;
* ``matmul`` with a batch axis: 1 batched GEMM + 3 kernels that build its pointer arrays + 1 copy per
  operand that is broadcast or not C-contiguous (CuPy's batched path);
* ``RawModule`` kernels: 1 each, under the kernel's name.

Host synchronisations (``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()``, ``a.get()``) are counted in
:attr:`Ledger.syncs`.  This is a model of CuPy, not CuPy: a GPU run with ``torch.profiler`` or
``nsys`` is the measurement.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import shim

__all__ = ["Ledger", "StandIn", "StandInArray"]


@dataclass
class Ledger:
    """Launch counts by kind (``"elementwise:add"``, ``"kernel:im2col_f32"``, ...) and host syncs."""

    launches: Counter[str] = field(default_factory=Counter)
    syncs: int = 0

    @property
    def total(self) -> int:
        return sum(self.launches.values())

    def reset(self) -> None:
        self.launches.clear()
        self.syncs = 0

    def by_group(self) -> dict[str, int]:
        """Totals per kind prefix (``kernel``, ``elementwise``, ``reduction``, ``gemm``, ``copy``, ...)."""
        out: Counter[str] = Counter()
        for key, n in self.launches.items():
            out[key.split(":")[0]] += n
        return dict(out)


class _Device:
    id = 0

    def __repr__(self) -> str:
        return "<StandIn device 0>"


_DEVICE = _Device()
_VIEWS = {"reshape", "permute_dims", "matrix_transpose", "expand_dims", "squeeze", "broadcast_to", "transpose",
          "swapaxes", "moveaxis"}
_FREE = {"empty", "empty_like", "isdtype", "result_type", "can_cast", "finfo", "iinfo"}
_REDUCTIONS = {"sum", "max", "min", "mean", "prod", "argmax", "argmin", "any", "all", "std", "var", "cumsum"}


def _unwrap(x: Any) -> Any:
    if isinstance(x, StandInArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


class StandInArray:
    """A NumPy array posing as a device array: operators count launches; conversion to host counts a sync."""

    __slots__ = ("_a", "_ns", "__weakref__")

    def __init__(self, a: np.ndarray, ns: StandIn) -> None:
        self._a = a
        self._ns = ns

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    device = property(lambda self: _DEVICE)

    @property
    def flags(self) -> Any:
        f = self._a.flags
        return SimpleNamespace(c_contiguous=f.c_contiguous, f_contiguous=f.f_contiguous)

    @property
    def data(self) -> Any:
        return SimpleNamespace(ptr=int(self._a.ctypes.data))

    @property
    def T(self) -> StandInArray:
        return self._ns._new(self._a.T)

    @property
    def mT(self) -> StandInArray:
        return self._ns._new(np.swapaxes(self._a, -1, -2))

    def __array_namespace__(self, api_version: str | None = None) -> StandIn:
        return self._ns

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("implicit conversion of a StandIn device array to NumPy is not allowed (as in CuPy); "
                        "use .get()")

    def __repr__(self) -> str:
        return f"StandInArray({self._a!r})"

    def __len__(self) -> int:
        return len(self._a)

    # -- host transfers (syncs)
    def get(self) -> np.ndarray:
        self._ns.ledger.syncs += 1
        return self._a.copy()

    def item(self) -> Any:
        self._ns.ledger.syncs += 1
        return self._a.item()

    def __float__(self) -> float:
        self._ns.ledger.syncs += 1
        return float(self._a)

    def __int__(self) -> int:
        self._ns.ledger.syncs += 1
        return int(self._a)

    def __index__(self) -> int:
        self._ns.ledger.syncs += 1
        return operator.index(self._a)

    def __bool__(self) -> bool:
        self._ns.ledger.syncs += 1
        return bool(self._a)

    # -- views and copies
    def reshape(self, *shape: Any, **kwargs: Any) -> StandInArray:
        return self._ns.reshape(self, shape[0] if len(shape) == 1 else shape, **kwargs)

    def transpose(self, *axes: Any) -> StandInArray:
        order = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return self._ns._new(self._a.transpose(*order) if order else self._a.transpose())

    def astype(self, dtype: Any, copy: bool = True) -> StandInArray:
        return self._ns.astype(self, dtype, copy=copy)

    def copy(self) -> StandInArray:
        self._ns._count("copy:copy")
        return self._ns._new(self._a.copy())

    def __getitem__(self, key: Any) -> StandInArray:
        key = _unwrap(key)
        out = self._a[key]
        if isinstance(out, np.generic):  # one element: a 0-d view in CuPy
            return self._ns._new(np.asarray(out))
        if not np.may_share_memory(out, self._a):
            self._ns._count("gather:getitem")
            out = np.asarray(out)
        return self._ns._new(out)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ns._count("copy:setitem")
        self._a[_unwrap(key)] = _unwrap(value)

    def sum(self, *args: Any, **kwargs: Any) -> StandInArray:
        return self._ns.sum(self, *args, **kwargs)

    def max(self, *args: Any, **kwargs: Any) -> StandInArray:
        return self._ns.max(self, *args, **kwargs)


def _binary(name: str, fn: Callable[[Any, Any], Any], reflected: bool = False) -> Callable[..., Any]:
    def method(self: StandInArray, other: Any) -> Any:
        if not isinstance(other, (StandInArray, int, float, bool, np.generic)):
            return NotImplemented
        self._ns._count(f"elementwise:{name}")
        a, b = (_unwrap(other), self._a) if reflected else (self._a, _unwrap(other))
        return self._ns._new(np.asarray(fn(a, b)))
    return method


def _inplace(name: str, fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def method(self: StandInArray, other: Any) -> Any:
        self._ns._count(f"elementwise:{name}")
        fn(self._a, _unwrap(other))
        return self
    return method


def _unary(name: str, fn: Callable[[Any], Any]) -> Callable[..., Any]:
    def method(self: StandInArray) -> Any:
        self._ns._count(f"elementwise:{name}")
        return self._ns._new(np.asarray(fn(self._a)))
    return method


def _matmul(self: StandInArray, other: Any) -> Any:
    return self._ns.matmul(self, other)


def _rmatmul(self: StandInArray, other: Any) -> Any:
    return self._ns.matmul(other, self)


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "floordiv": operator.floordiv, "pow": operator.pow, "mod": operator.mod, "and": operator.and_,
    "or": operator.or_, "xor": operator.xor}
_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.iadd, "sub": operator.isub, "mul": operator.imul, "truediv": operator.itruediv}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge, "eq": operator.eq, "ne": operator.ne}
_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": operator.neg, "pos": operator.pos, "abs": operator.abs, "invert": operator.invert}

for _name, _fn in _BINARY.items():
    setattr(StandInArray, f"__{_name}__", _binary(_name, _fn))
    setattr(StandInArray, f"__r{_name}__", _binary(_name, _fn, reflected=True))
for _name, _fn in _INPLACE.items():
    setattr(StandInArray, f"__i{_name}__", _inplace(_name, _fn))
for _name, _fn in _COMPARE.items():
    setattr(StandInArray, f"__{_name}__", _binary(_name, _fn))
for _name, _ufn in _UNARY.items():
    setattr(StandInArray, f"__{_name}__", _unary(_name, _ufn))
setattr(StandInArray, "__matmul__", _matmul)  # noqa: B010
setattr(StandInArray, "__rmatmul__", _rmatmul)  # noqa: B010
setattr(StandInArray, "__hash__", None)  # noqa: B010


class _Kernel:
    def __init__(self, ns: StandIn, kernel: shim.CpuKernel) -> None:
        self._ns, self._kernel = ns, kernel

    def __call__(self, grid: Any, block: Any, args: Any) -> None:
        self._ns._count(f"kernel:{self._kernel.name}")
        self._kernel(grid, block, [a._a if isinstance(a, StandInArray) else a for a in args])


class _RawModule:
    def __init__(self, ns: StandIn, code: str, options: Any = ()) -> None:
        self._ns = ns
        self._module = shim.load(code=code)
        self.options = tuple(options)

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(self._ns, self._module.get_function(name))


class StandIn:
    """The namespace/module: attribute access gives NumPy's function of that name, wrapped and counted."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        # a class of its own, so kernel sets installed on two stand-ins never see each other's arrays
        self.ndarray: type[StandInArray] = type("StandInArray", (StandInArray,), {"__slots__": ()})
        for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                     "uint32", "uint64", "bool", "complex64", "complex128", "e", "pi", "inf", "nan", "newaxis"):
            setattr(self, name, getattr(np, name if name != "bool" else "bool_"))
        self.__name__ = "xpcnn.kernels.cuda.standin"

    def _new(self, a: np.ndarray) -> StandInArray:
        return self.ndarray(a, self)

    def _count(self, kind: str) -> None:
        self.ledger.launches[kind] += 1

    def _wrap(self, out: Any) -> Any:
        if isinstance(out, np.ndarray):
            return self._new(out)
        if isinstance(out, np.generic):
            return self._new(np.asarray(out))
        if isinstance(out, tuple):
            return tuple(self._wrap(o) for o in out)
        if isinstance(out, list):
            return [self._wrap(o) for o in out]
        return out

    def RawModule(self, code: str, options: Any = ()) -> _RawModule:  # noqa: N802 (CuPy's name)
        return _RawModule(self, code, options)

    def asarray(self, x: Any, dtype: Any = None, device: Any = None, copy: Any = None) -> StandInArray:
        if isinstance(x, StandInArray):
            if dtype is None or np.dtype(dtype) == x.dtype:
                return x
            return self.astype(x, dtype)
        self.ledger.launches["transfer:host_to_device"] += 1
        return self._new(np.array(x, dtype=dtype))

    def from_numpy(self, x: np.ndarray) -> StandInArray:
        """A device copy of a host array, not counted (test set-up)."""
        return self._new(np.array(x))

    def astype(self, x: StandInArray, dtype: Any, copy: bool = True, device: Any = None) -> StandInArray:
        if not copy and x.dtype == np.dtype(dtype):
            return x
        self._count("cast:astype")
        return self._new(x._a.astype(dtype))

    def ascontiguousarray(self, x: StandInArray, dtype: Any = None) -> StandInArray:
        if x._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == x.dtype):
            return x
        self._count("copy:ascontiguousarray")
        return self._new(np.ascontiguousarray(x._a, dtype=dtype))

    def matmul(self, a: Any, b: Any, out: Any = None) -> StandInArray:
        A, Bm = _unwrap(a), _unwrap(b)
        if A.ndim <= 2 and Bm.ndim <= 2:
            self._count("gemm:matmul")
            for m in (A, Bm):
                if not (m.flags.c_contiguous or m.flags.f_contiguous):
                    self._count("copy:matmul_operand")
        else:
            self._count("gemm:matmul_batched")
            self.ledger.launches["kernel:matmul_pointer_arrays"] += 3
            batch = np.broadcast_shapes(A.shape[:-2], Bm.shape[:-2])
            for m in (A, Bm):
                if m.shape[:-2] != batch or not m.flags.c_contiguous:
                    self._count("copy:matmul_operand")
        if out is not None:
            np.matmul(A, Bm, out=out._a)
            return out
        return self._new(np.matmul(A, Bm))

    def reshape(self, x: StandInArray, shape: Any, copy: Any = None) -> StandInArray:
        out = np.reshape(x._a, shape)
        if not np.may_share_memory(out, x._a) and out.size:
            self._count("copy:reshape")
        return self._new(out)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(np, name, None)
        if fn is None or name.startswith("_"):
            raise AttributeError(f"the StandIn namespace has no {name!r}")
        if not callable(fn):
            return fn
        kind = ("view" if name in _VIEWS else "free" if name in _FREE else "reduction" if name in _REDUCTIONS
                else "fill" if name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange",
                                        "linspace", "eye") else "elementwise")

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("device", None)
            if kind not in ("view", "free"):
                self._count(f"{kind}:{name}")
            out = kwargs.get("out")
            if isinstance(out, StandInArray):
                kwargs["out"] = out._a
                fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
                return out
            return self._wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        call.__name__ = name
        return call
