"""The CUDA kernel set: fast implementations of the seam's ops for CuPy float32 arrays (UNTESTED ON A GPU).

The registry imports :mod:`xpcnn.kernels.cuda.load` the first time an op sees a ``cupy.ndarray``; it
calls :func:`install` with CuPy.  Tests call :func:`install` with the NumPy-backed stand-in of
:mod:`xpcnn.kernels.cuda.standin`, which runs the same kernels through the CPU shim and counts launches.

Launches per op (LeNet-5 sizes; see the README's launch budget):

* ``conv2d``: im2col gather (channel-major rows) -> one 2-D GEMM ``(F, K) @ (K, N*OH*OW)`` -> the bias
  epilogue in place (skipped without bias).  The output is the GEMM's ``(F, N, OH, OW)`` memory
  returned as an ``(N, F, OH, OW)`` view, so no permute copy is made; backward reads ``dout`` in that
  layout (the ReLU and pooling kernels keep it), so ``dW = dout2 @ col.T`` and ``dcol = W2.T @ dout2``
  are 2-D GEMMs too, and ``dx`` is a deterministic col2im gather.  4-5 launches backward.
* ``relu``: one elementwise kernel each way (any layout shared by its operands).
* ``max_pool2d``: one kernel forward (first-max index), one gather backward.
* ``dense``: one kernel forward (GEMM + bias), one backward (dx, dW, db) for small problems; cuBLAS above
  :data:`DENSE_KERNEL_LIMIT` multiply-adds.
* ``softmax_cross_entropy``: one single-block kernel computing the loss, the gradient and the device
  tallies (:func:`read_tallies`); backward launches nothing.
* ``optimizer_update``: one launch for all parameters (see below), plus a copy per gradient that a
  reference op produced; one launch per parameter on the first step.

Flat buffers.  The first fast ``optimizer_update`` of a parameter list copies the parameters and their
state slots into one flat buffer each (a :class:`FlatGroup`), returns the parameters as views of it
(the optimizer assigns them back to the layers) and rebinds the slot dicts to views.  From then on the
conv and dense backward kernels write ``dW``/``db`` straight into the group's flat gradient buffer, at
the parameter's offset, so every later step updates all parameters in ONE launch.  Consequence: a
layer's gradient arrays are views of a buffer reused every step (as PyTorch's ``.grad``).

The fused Conv -> ReLU -> MaxPool pair (:func:`conv_relu_maxpool_forward` / ``_backward``) is here for
a model-level planner; nothing in the seam calls it yet.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...functional import updates as _updates
from .. import ops
from . import NVRTC_OPTIONS, source

__all__ = ["DENSE_KERNEL_LIMIT", "FlatGroup", "KERNEL_SET", "Kernels", "conv_relu_maxpool_backward",
           "conv_relu_maxpool_forward", "install", "read_tallies"]

KERNEL_SET = "cuda"
THREADS = 256
MAX_BLOCKS = 8192  # grid-stride loops cover the rest
XENT_THREADS = 256  # loss.cu's block size
#: dense layers with at most this many multiply-adds (N*K*M) use the one-launch kernels, larger ones cuBLAS
DENSE_KERNEL_LIMIT = 1 << 26
_MAX_GROUPS = 8

i32, i64, f32 = np.int32, np.int64, np.float32


class Kernels:
    """The compiled CUDA modules of one CuPy-like module ``cp`` (``cupy`` or a stand-in), compiled lazily."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self.null = np.uint64(0)  # a null pointer argument
        self.tallies: dict[Any, Any] = {}
        self.groups: OrderedDict[int, FlatGroup] = OrderedDict()

    def function(self, src: str, name: str) -> Any:
        fn = self._functions.get(name)
        if fn is None:
            module = self._modules.get(src)
            if module is None:
                module = self._modules[src] = self.cp.RawModule(code=source(src), options=NVRTC_OPTIONS)
            fn = self._functions[name] = module.get_function(name)
        return fn

    def launch(self, src: str, name: str, n: int, args: tuple[Any, ...]) -> None:
        """Launch ``name`` with enough THREADS-thread blocks for ``n`` items (grid-stride beyond MAX_BLOCKS)."""
        blocks = max(1, min(MAX_BLOCKS, -(-n // THREADS)))
        self.function(src, name)((blocks,), (THREADS,), args)

    def ptr(self, a: Any | None) -> Any:
        return self.null if a is None else a


# -- layouts ---------------------------------------------------------------------------------------

def _estrides(a: Any) -> tuple[int, ...]:
    """Element strides (CuPy's ``strides`` are in bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


def _memory_order(a: Any) -> tuple[int, ...] | None:
    """The axis permutation ``perm`` with ``a.transpose(perm)`` C-contiguous, or None when ``a`` has gaps."""
    st = _estrides(a)
    perm = tuple(sorted(range(a.ndim), key=lambda ax: -st[ax] if a.shape[ax] > 1 else 0))
    expect = 1
    for ax in reversed(perm):
        if a.shape[ax] > 1 and st[ax] != expect:
            return None
        expect *= a.shape[ax]
    return perm


def _order(a: Any) -> tuple[int, ...]:
    """:func:`_memory_order`, or C order for an array with gaps (a fresh array then gets C order)."""
    perm = _memory_order(a)
    return tuple(range(a.ndim)) if perm is None else perm


def _empty_in_order(cp: Any, shape: tuple[int, ...], perm: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised array of ``shape`` whose memory runs in the axis order ``perm``."""
    base = cp.empty(tuple(shape[ax] for ax in perm), dtype=dtype)
    return base.transpose(tuple(int(i) for i in np.argsort(perm)))


def _is_f32(*arrays: Any) -> bool:
    return all(a is None or a.dtype == np.float32 for a in arrays)


# -- flat parameter groups -------------------------------------------------------------------------

@dataclass
class FlatGroup:
    """Parameters laid end to end in one flat buffer, with a gradient buffer and state buffers alike.

    Layout: parameter ``i`` occupies elements ``[offsets[i], offsets[i] + sizes[i])`` of ``params``,
    ``grads`` and every ``slots[name]`` (C order within a parameter); the order is the optimizer's.
    """

    params: Any
    grads: Any
    slots: dict[str, Any]
    offsets: list[int]
    sizes: list[int]
    shapes: list[tuple[int, ...]]

    def view(self, flat: Any, i: int) -> Any:
        o = self.offsets[i]
        return flat[o:o + self.sizes[i]].reshape(self.shapes[i])


def _address(a: Any) -> int:
    return int(a.data.ptr)


def _grad_buffer(k: Kernels, param: Any) -> Any:
    """Where the gradient of ``param`` goes: its slot in a flat group's gradient buffer, else a new array."""
    if param.flags.c_contiguous:
        addr = _address(param)
        for base, group in k.groups.items():
            offset, rem = divmod(addr - base, 4)
            if rem == 0 and offset in group.offsets:
                i = group.offsets.index(offset)
                if group.shapes[i] == tuple(param.shape):
                    return group.view(group.grads, i)
    return k.cp.empty(param.shape, dtype=param.dtype)


# -- conv2d ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ConvCache:
    col: Any              # (C*KH*KW, N*OH*OW), channel-major rows
    x_shape: tuple[int, int, int, int]
    W: Any
    b: Any
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]


def _conv_out(x_shape: tuple[int, ...], W: Any, stride: Any, padding: Any, dilation: Any) -> tuple[int, int]:
    KH, KW = W.shape[2], W.shape[3]
    oh = (x_shape[2] + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    ow = (x_shape[3] + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return oh, ow


def _conv_eligible(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any) -> bool:
    return (_is_f32(x, W, b) and x.ndim == 4 and W.flags.c_contiguous and x.shape[0] > 0
            and min(_conv_out(x.shape, W, stride, padding, dilation)) > 0)


def _im2col(k: Kernels, x: Any, W: Any, stride: Any, padding: Any, dilation: Any) -> tuple[Any, tuple[int, int]]:
    N, C, H, Wd = x.shape
    KH, KW = W.shape[2], W.shape[3]
    oh, ow = _conv_out(x.shape, W, stride, padding, dilation)
    col = k.cp.empty((C * KH * KW, N * oh * ow), dtype=np.float32)
    sn, sc, sh, sw = _estrides(x)
    k.launch("conv.cu", "im2col_f32", col.size,
             (x, col, i32(N), i32(C), i32(H), i32(Wd), i32(KH), i32(KW), i32(stride[0]), i32(stride[1]),
              i32(padding[0]), i32(padding[1]), i32(dilation[0]), i32(dilation[1]), i32(oh), i32(ow),
              i64(sn), i64(sc), i64(sh), i64(sw)))
    return col, (oh, ow)


def _epilogue(k: Kernels, z: Any, b: Any, y: Any, argmax: Any, pool: tuple[tuple[int, int], ...], relu: bool,
              out: tuple[int, int]) -> None:
    """``bias_relu_maxpool_f32``: z, y: (N, F, ., .) arrays of any strides; pool = (kernel, stride, padding)."""
    N, F, H, W = z.shape
    (pkh, pkw), (psh, psw), (pph, ppw) = pool
    zs, ys = _estrides(z), _estrides(y)
    k.launch("pool.cu", "bias_relu_maxpool_f32", N * F * out[0] * out[1],
             (z, k.ptr(b), y, k.ptr(argmax), i32(N), i32(F), i32(H), i32(W), i32(pkh), i32(pkw), i32(psh),
              i32(psw), i32(pph), i32(ppw), i32(out[0]), i32(out[1]), i32(1 if relu else 0),
              *(i64(s) for s in zs), *(i64(s) for s in ys)))


_UNIT_POOL = ((1, 1), (1, 1), (0, 0))


def _conv_gemm(k: Kernels, x: Any, W: Any, stride: Any, padding: Any, dilation: Any) -> tuple[Any, Any, tuple]:
    """im2col + one 2-D GEMM: ``z`` is (N, F, OH, OW) over memory in (F, N, OH, OW) order."""
    N, F = x.shape[0], W.shape[0]
    col, (oh, ow) = _im2col(k, x, W, stride, padding, dilation)
    y2 = k.cp.matmul(W.reshape(F, -1), col)  # (F, N*OH*OW)
    return y2.reshape(F, N, oh, ow).transpose(1, 0, 2, 3), col, (oh, ow)


def _conv_forward(k: Kernels, x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any) -> tuple[Any, Any]:
    z, col, out = _conv_gemm(k, x, W, stride, padding, dilation)
    if b is not None:
        _epilogue(k, z, b, z, None, _UNIT_POOL, False, out)  # in place: each thread reads then writes its element
    return z, _ConvCache(col, tuple(x.shape), W, b, tuple(stride), tuple(padding), tuple(dilation), out)


def _as_fnl(k: Kernels, dout: Any) -> Any:
    """``dout: (N, F, OH, OW)`` as the 2-D ``(F, N*OH*OW)`` matrix; a view when its memory is in that order."""
    N, F, oh, ow = dout.shape
    t = dout.transpose(1, 0, 2, 3)
    if not t.flags.c_contiguous:
        t = k.cp.ascontiguousarray(t)
    return t.reshape(F, N * oh * ow)


def _conv_weight_grads(k: Kernels, d2: Any, c: _ConvCache) -> tuple[Any, Any]:
    F = c.W.shape[0]
    dW = _grad_buffer(k, c.W)
    k.cp.matmul(d2, c.col.T, out=dW.reshape(F, -1))
    db = None
    if c.b is not None:
        db = _grad_buffer(k, c.b)
        k.cp.sum(d2, axis=1, out=db)
    return dW, db


def _col2im(k: Kernels, dcol: Any, c: _ConvCache) -> Any:
    N, C, H, W = c.x_shape
    KH, KW = c.W.shape[2], c.W.shape[3]
    dx = k.cp.empty(c.x_shape, dtype=np.float32)
    k.launch("conv.cu", "col2im_f32", dx.size,
             (dcol, dx, i32(N), i32(C), i32(H), i32(W), i32(KH), i32(KW), i32(c.stride[0]), i32(c.stride[1]),
              i32(c.padding[0]), i32(c.padding[1]), i32(c.dilation[0]), i32(c.dilation[1]), i32(c.out[0]),
              i32(c.out[1])))
    return dx


def _conv_backward(k: Kernels, dout: Any, c: _ConvCache, need_dx: bool = True) -> tuple[Any, Any, Any]:
    d2 = _as_fnl(k, dout)
    dW, db = _conv_weight_grads(k, d2, c)
    if not need_dx:
        return None, dW, db
    F = c.W.shape[0]
    dcol = k.cp.matmul(c.W.reshape(F, -1).T, d2)  # (C*KH*KW, N*OH*OW)
    return _col2im(k, dcol, c), dW, db


# -- relu ------------------------------------------------------------------------------------------

def _dense_layout(*arrays: Any) -> bool:
    """All arrays gap-free with one and the same memory layout (an elementwise kernel may run over memory)."""
    first = arrays[0]
    if _memory_order(first) is None:
        return False
    return all(a.shape == first.shape and a.strides == first.strides for a in arrays[1:])


def _relu_forward(k: Kernels, x: Any) -> tuple[Any, Any]:
    y = _empty_in_order(k.cp, tuple(x.shape), _order(x), np.float32)
    k.launch("pool.cu", "relu_f32", x.size, (x, y, i64(x.size)))
    return y, y


def _relu_backward(k: Kernels, dout: Any, y: Any) -> Any:
    if not _dense_layout(y, dout):  # different layouts: bring dout into y's
        dout = _copy_in_order(k, dout, _order(y))
    dx = _empty_in_order(k.cp, tuple(y.shape), _order(y), np.float32)
    k.launch("pool.cu", "relu_backward_f32", y.size, (dout, y, dx, i64(y.size)))
    return dx


def _copy_in_order(k: Kernels, a: Any, perm: tuple[int, ...]) -> Any:
    out = _empty_in_order(k.cp, tuple(a.shape), perm, a.dtype)
    out[...] = a
    return out


# -- max pooling -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PoolCache:
    x_shape: tuple[int, int, int, int]
    x_order: tuple[int, ...]
    geometry: Any
    argmax: Any           # (N, C, PH, PW) int32, C-contiguous
    ypool: Any = None     # the pooled ReLU output, for the fused pool + ReLU backward


def _pool_args(g: Any) -> tuple[tuple[int, int], ...]:
    return (tuple(g.kernel), tuple(g.stride), tuple(g.padding))


def _max_pool_forward(k: Kernels, x: Any, g: Any) -> tuple[Any, Any]:
    N, C = x.shape[0], x.shape[1]
    y = k.cp.empty((N, C, *g.out), dtype=np.float32)
    argmax = k.cp.empty((N, C, *g.out), dtype=np.int32)
    _epilogue(k, x, None, y, argmax, _pool_args(g), False, tuple(g.out))
    return y, _PoolCache(tuple(x.shape), _order(x), g, argmax)


def _pool_backward_into(k: Kernels, dout: Any, c: _PoolCache, dx: Any) -> Any:
    if not dout.flags.c_contiguous:
        dout = k.cp.ascontiguousarray(dout)
    N, C, H, W = c.x_shape
    g = c.geometry
    (pkh, pkw), (psh, psw), (pph, ppw) = _pool_args(g)
    k.launch("pool.cu", "maxpool_relu_backward_f32", N * C * H * W,
             (dout, c.argmax, k.ptr(c.ypool), dx, i32(N), i32(C), i32(H), i32(W), i32(pkh), i32(pkw), i32(psh),
              i32(psw), i32(pph), i32(ppw), i32(g.out[0]), i32(g.out[1]), *(i64(s) for s in _estrides(dx))))
    return dx


def _max_pool_backward(k: Kernels, dout: Any, c: _PoolCache) -> Any:
    # dx in the layout of the forward input, so a ReLU/conv backward behind it reads it without a copy
    return _pool_backward_into(k, dout, c, _empty_in_order(k.cp, c.x_shape, c.x_order, np.float32))


def _pool_eligible(x: Any, g: Any) -> bool:
    return _is_f32(x) and x.ndim == 4 and x.size > 0


# -- fused conv -> ReLU -> max pool (for a model-level planner) ------------------------------------

def _fused_forward(k: Kernels, x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any,
                   g: Any) -> tuple[Any, Any]:
    z, col, out = _conv_gemm(k, x, W, stride, padding, dilation)
    N, F = x.shape[0], W.shape[0]
    y = k.cp.empty((N, F, *g.out), dtype=np.float32)
    argmax = k.cp.empty((N, F, *g.out), dtype=np.int32)
    _epilogue(k, z, b, y, argmax, _pool_args(g), True, tuple(g.out))
    conv = _ConvCache(col, tuple(x.shape), W, b, tuple(stride), tuple(padding), tuple(dilation), out)
    pool = _PoolCache((N, F, *out), (1, 0, 2, 3), g, argmax, ypool=y)
    return y, (conv, pool)


def _fused_backward(k: Kernels, dout: Any, cache: tuple[_ConvCache, _PoolCache],
                    need_dx: bool = True) -> tuple[Any, Any, Any]:
    conv, pool = cache
    dz = _pool_backward_into(k, dout, pool, _empty_in_order(k.cp, pool.x_shape, (1, 0, 2, 3), np.float32))
    return _conv_backward(k, dz, conv, need_dx)


# -- dense -----------------------------------------------------------------------------------------

def _dense_small(x: Any, W: Any) -> bool:
    return x.shape[0] * W.shape[0] * W.shape[1] <= DENSE_KERNEL_LIMIT


def _dense_forward(k: Kernels, x: Any, W: Any, b: Any) -> tuple[Any, Any]:
    if not x.flags.c_contiguous:
        x = k.cp.ascontiguousarray(x)
    N, K = x.shape
    M = W.shape[1]
    if _dense_small(x, W):
        y = k.cp.empty((N, M), dtype=np.float32)
        k.launch("dense.cu", "dense_forward_f32", N * M, (x, W, k.ptr(b), y, i32(N), i32(K), i32(M)))
    else:
        y = k.cp.matmul(x, W)
        if b is not None:
            y += b
    return y, (x, W, b)


def _dense_backward(k: Kernels, dout: Any, cache: tuple[Any, Any, Any], need_dx: bool = True) -> tuple[Any, ...]:
    x, W, b = cache
    if not dout.flags.c_contiguous:
        dout = k.cp.ascontiguousarray(dout)
    N, K = x.shape
    M = W.shape[1]
    dW = _grad_buffer(k, W)
    db = _grad_buffer(k, b) if b is not None else None
    dx = k.cp.empty((N, K), dtype=np.float32) if need_dx else None
    if _dense_small(x, W):
        k.launch("dense.cu", "dense_backward_f32", (N * K if need_dx else 0) + K * M + (M if b is not None else 0),
                 (x, W, dout, k.ptr(dx), dW, k.ptr(db), i32(N), i32(K), i32(M)))
    else:
        k.cp.matmul(x.T, dout, out=dW)
        if db is not None:
            k.cp.sum(dout, axis=0, out=db)
        if need_dx:
            k.cp.matmul(dout, W.T, out=dx)
    return dx, dW, db


def _dense_eligible(x: Any, W: Any, b: Any) -> bool:
    return _is_f32(x, W, b) and x.ndim == 2 and W.flags.c_contiguous and x.shape[0] > 0


# -- softmax cross-entropy -------------------------------------------------------------------------

_LABEL_KERNELS = {np.dtype(np.int64): "softmax_xent_i64_f32", np.dtype(np.int32): "softmax_xent_i32_f32",
                  np.dtype(np.uint8): "softmax_xent_u8_f32"}


def _device_key(a: Any) -> Any:
    dev = getattr(a, "device", None)
    return getattr(dev, "id", dev)


def _tally_buffer(k: Kernels, like: Any) -> Any:
    key = _device_key(like)
    buf = k.tallies.get(key)
    if buf is None:
        buf = k.tallies[key] = k.cp.zeros(4, dtype=np.float64)
    return buf


def _xent_forward(k: Kernels, logits: Any, labels: Any) -> tuple[Any, Any]:
    if not logits.flags.c_contiguous:
        logits = k.cp.ascontiguousarray(logits)
    N, C = logits.shape
    loss = k.cp.empty((), dtype=np.float32)
    dz = k.cp.empty((N, C), dtype=np.float32)
    k.function("loss.cu", _LABEL_KERNELS[np.dtype(labels.dtype)])(
        (1,), (XENT_THREADS,), (logits, labels, dz, loss, _tally_buffer(k, logits), i32(N), i32(C)))
    return loss, dz


def _xent_backward(k: Kernels, dout: Any, dz: Any) -> Any:
    return dz if dout is None else dz * dout


def _xent_eligible(logits: Any, labels: Any) -> bool:
    return (_is_f32(logits) and logits.ndim == 2 and labels.ndim == 1 and logits.shape[0] > 0
            and np.dtype(labels.dtype) in _LABEL_KERNELS and labels.flags.c_contiguous)


def read_tallies(device: Any = None, reset: bool = True) -> dict[str, float]:
    """The device tallies of the fused softmax cross-entropy since the last reset (ONE device sync).

    ``{"loss_sum", "correct", "seen", "bad_labels"}``: summed row losses, rows whose first arg-max is the
    label, rows seen, labels outside ``[0, C)``.  ``device``: the CuPy device id (None: the only one used).
    """
    k = _KERNELS.get(id(sys.modules.get("cupy")))
    if k is None or not k.tallies:
        return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "bad_labels": 0.0}
    return tallies_of(k, device, reset)


def tallies_of(k: Kernels, device: Any = None, reset: bool = True) -> dict[str, float]:
    """:func:`read_tallies` for the kernels of one CuPy-like module (tests pass the stand-in's)."""
    key = device if device is not None else next(iter(k.tallies))
    buf = k.tallies[key]
    values = [float(v) for v in buf.get()] if hasattr(buf, "get") else [float(v) for v in buf]
    if reset:
        buf[...] = 0.0
    return dict(zip(("loss_sum", "correct", "seen", "bad_labels"), values, strict=True))


# -- optimizer updates -----------------------------------------------------------------------------

_RULE_KERNEL = {"sgd": "sgd_f32", "momentum": "momentum_f32", "nesterov": "momentum_f32", "adagrad": "rms_f32",
                "rmsprop": "rms_f32", "adam": "adam_f32", "adamw": "adam_f32"}


def _rule_args(rule: str, hyper: Mapping[str, float], step: int) -> tuple[Any, ...]:
    """The scalar arguments of ``rule``'s kernel, rounded to float32 as the reference rounds them."""
    wd = float(hyper.get("weight_decay", 0.0))
    has_wd = i32(wd != 0.0)
    lr = float(hyper["lr"])
    if rule == "sgd":
        return (f32(lr), has_wd, f32(wd))
    if rule in ("momentum", "nesterov"):
        return (f32(lr), f32(hyper["momentum"]), i32(rule == "nesterov"), has_wd, f32(wd))
    if rule in ("adagrad", "rmsprop"):
        alpha = float(hyper.get("alpha", 1.0))
        return (f32(lr), i32(rule == "adagrad"), f32(alpha), f32(1.0 - alpha), f32(hyper["eps"]), has_wd, f32(wd))
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    step_size = lr / (1.0 - b1**step)
    bc2 = math.sqrt(1.0 - b2**step)
    if rule == "adam":
        return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(step_size), f32(bc2), f32(hyper["eps"]),
                has_wd, f32(wd), i32(0), f32(1.0))
    return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(step_size), f32(bc2), f32(hyper["eps"]),
            i32(0), f32(0.0), has_wd, f32(1.0 - lr * wd))


def _update_eligible(params: list[Any], grads: list[Any], slots: list[dict[str, Any]], steps: list[int], rule: str,
                     hyper: Mapping[str, float]) -> bool:
    if rule not in _RULE_KERNEL or not params:
        return False
    names = _updates.SLOTS[rule]
    for p, g, s in zip(params, grads, slots, strict=True):
        if not (_is_f32(p, g) and p.flags.c_contiguous and g.flags.c_contiguous and p.shape == g.shape):
            return False
        if any(not (_is_f32(s[n]) and s[n].flags.c_contiguous and s[n].shape == p.shape) for n in names):
            return False
    return True


def _adjacent(arrays: list[Any], i: int) -> bool:
    return _address(arrays[i]) == _address(arrays[i - 1]) + 4 * arrays[i - 1].size


def _launch_update(k: Kernels, rule: str, p: Any, g: Any, s: list[Any], n: int, scalars: tuple[Any, ...]) -> None:
    args = (p, g, *s, i64(n), *scalars)
    k.launch("optim.cu", _RULE_KERNEL[rule], n, args)


def _new_group(k: Kernels, params: list[Any], names: tuple[str, ...]) -> FlatGroup:
    cp = k.cp
    sizes = [int(p.size) for p in params]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    total = sum(sizes)
    group = FlatGroup(cp.empty(total, dtype=np.float32), cp.zeros(total, dtype=np.float32),
                      {n: cp.empty(total, dtype=np.float32) for n in names}, offsets, sizes,
                      [tuple(p.shape) for p in params])
    for i, p in enumerate(params):  # the state is copied in by the caller
        group.params[offsets[i]:offsets[i] + sizes[i]] = p.reshape(-1)
    k.groups[_address(group.params)] = group
    while len(k.groups) > _MAX_GROUPS:
        k.groups.popitem(last=False)
    return group


def _group_of(k: Kernels, params: list[Any]) -> FlatGroup | None:
    """The flat group whose parameter views are exactly ``params``, in order."""
    group = k.groups.get(_address(params[0]))
    if group is None or len(group.offsets) != len(params):
        return None
    base = _address(group.params)
    for i, p in enumerate(params):
        if _address(p) != base + 4 * group.offsets[i] or tuple(p.shape) != group.shapes[i]:
            return None
    return group


def _optimizer_update(k: Kernels, params: list[Any], grads: list[Any], slots: list[dict[str, Any]],
                      steps: list[int], rule: str, hyper: Mapping[str, float]) -> list[Any]:
    names = _updates.SLOTS[rule]
    group = _group_of(k, params)
    if group is None:  # first step (or after a checkpoint load): move parameters and state into a flat group
        group = _new_group(k, params, names)
    for n in names:  # a rule this group has not served yet (another optimizer over the same parameters)
        if n not in group.slots:
            group.slots[n] = k.cp.empty(group.params.size, dtype=np.float32)
    for i, s in enumerate(slots):  # the optimizer's state dicts hold views of the group's buffers
        for n in names:
            view = group.view(group.slots[n], i)
            if _address(s[n]) != _address(view):  # state from elsewhere (a new optimizer, a loaded state_dict)
                view[...] = s[n]
                s[n] = view
    news = [group.view(group.params, i) for i in range(len(params))]
    base = _address(group.grads)
    foreign = [i for i, g in enumerate(grads) if _address(g) != base + 4 * group.offsets[i]]
    if len(set(steps)) == 1 and len(foreign) < len(grads):
        # gradients the CUDA backward kernels did not write into the group (a reference op's) are
        # copied in, then the whole group is updated in one launch
        for i in foreign:
            group.view(group.grads, i)[...] = grads[i]
        total = group.offsets[-1] + group.sizes[-1]
        _launch_update(k, rule, group.params, group.grads, [group.slots[n] for n in names], total,
                       _rule_args(rule, hyper, steps[0]))
        return news
    for i, (p, g, step) in enumerate(zip(news, grads, steps, strict=True)):  # one launch per parameter
        _launch_update(k, rule, p, g, [slots[i][n] for n in names], int(p.size), _rule_args(rule, hyper, step))
    return news


# -- registration ----------------------------------------------------------------------------------

_KERNELS: dict[int, Kernels] = {}


def kernels_for(cp: Any) -> Kernels:
    """The :class:`Kernels` of module ``cp`` (created by :func:`install`)."""
    return _KERNELS[id(cp)]


def install(cp: Any) -> Kernels:
    """Register this set's implementations for arrays of type ``cp.ndarray`` with the seam's ops."""
    existing = _KERNELS.get(id(cp))
    if existing is not None:
        return existing
    k = _KERNELS[id(cp)] = Kernels(cp)
    nd = cp.ndarray

    def bind(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args, **kwargs: fn(k, *args, **kwargs)

    ops.conv2d.register(nd, KERNEL_SET, bind(_conv_forward), bind(_conv_backward), _conv_eligible)
    ops.relu.register(nd, KERNEL_SET, bind(_relu_forward), bind(_relu_backward),
                      lambda x: _is_f32(x) and _memory_order(x) is not None)
    ops.max_pool2d.register(nd, KERNEL_SET, bind(_max_pool_forward), bind(_max_pool_backward), _pool_eligible)
    ops.dense.register(nd, KERNEL_SET, bind(_dense_forward), bind(_dense_backward), _dense_eligible)
    ops.softmax_cross_entropy.register(nd, KERNEL_SET, bind(_xent_forward), bind(_xent_backward), _xent_eligible)
    ops.optimizer_update.register(nd, KERNEL_SET, bind(_optimizer_update), None, _update_eligible)
    return k


def conv_relu_maxpool_forward(x: Any, W: Any, b: Any, stride: Any, padding: Any, dilation: Any,
                              geometry: Any) -> tuple[Any, Any]:
    """Fused ``max_pool2d(relu(conv2d(x, W, b)))``: im2col, one GEMM, one epilogue (3 launches).

    x: (N, C, H, W), W: (F, C, KH, KW), b: (F,) or None, ``geometry`` a
    :class:`~xpcnn.functional.pool.PoolGeometry` for the conv output -> y: (N, F, PH, PW), cache.
    """
    return _fused_forward(_KERNELS[id(_module_of(x))], x, W, b, stride, padding, dilation, geometry)


def conv_relu_maxpool_backward(dout: Any, cache: Any, need_dx: bool = True) -> tuple[Any, Any, Any]:
    """Backward of :func:`conv_relu_maxpool_forward`: the fused pool + ReLU gather, then the conv backward."""
    return _fused_backward(_KERNELS[id(_module_of(dout))], dout, cache, need_dx)


def _module_of(a: Any) -> Any:
    for k in _KERNELS.values():
        if isinstance(a, k.cp.ndarray):
            return k.cp
    raise TypeError(f"no CUDA kernel set is installed for {type(a).__name__}")
