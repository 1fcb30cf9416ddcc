"""conv2d, relu and max_pool2d for CuPy float32 arrays (``conv.cu``, ``pool.cu``), and the fused pair.

conv2d: im2col gather -> one 2-D GEMM -> bias epilogue; its output is the GEMM's (F, N, OH, OW) memory
seen as (N, F, OH, OW), a layout ReLU and pooling keep so the backward's GEMMs need no copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .launch import Kernels, _empty_in_order, _estrides, _is_f32, _memory_order, _order, i32, i64
from .update_ops import grad_buffer


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
    dW = grad_buffer(k, c.W)
    k.cp.matmul(d2, c.col.T, out=dW.reshape(F, -1))
    db = None
    if c.b is not None:
        db = grad_buffer(k, c.b)
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
