"""GPU verification stage for the CUDA kernel set: each fused kernel vs the reference, on the device.

:func:`run` takes the CuPy module (or, for a dry run on a CPU, a
:class:`~xpcnn.kernels.cuda.standin.StandIn`), makes every output buffer the kernels allocate start
as NaN (integers as -1), runs each op of the set on LeNet-5-sized inputs and compares it with the
reference ops (``xpcnn.functional``) computed by NumPy on the host:

* exact (bit for bit) for ReLU, max pooling (values and first-max indices, with ties) and every
  optimizer rule; the im2col/col2im gathers are covered exactly through the pooling and conv cases'
  tolerances below, and exactly on the CPU by tests/test_cuda_kernels_cpu.py;
* relative to the largest reference magnitude, ``1e-5`` for anything with a GEMM or exp/log (conv,
  dense, the fused conv -> ReLU -> pool pair, softmax cross-entropy; TF32 must be off);
* every op runs twice and must give the same bits (determinism);
* timings: median microseconds per call of the CUDA set and of the reference ops on the device.

The softmax cross-entropy kernel cooperates within a block (shared memory, ``__syncthreads``): this
stage is where it is compared on a GPU.  ``benchmarks/gpu_verify.py`` calls :func:`run` as a stage.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...functional import updates
from ...functional.activation import _relu, _relu_backward
from ...functional.conv import _conv2d_backward, _conv2d_forward
from ...functional.dense import _dense_backward, _dense_forward
from ...functional.loss import _softmax_cross_entropy_backward, _softmax_cross_entropy_forward
from ...functional.pool import _max_pool2d_backward, _max_pool2d_forward, pool_geometry
from . import cupy_set as S

__all__ = ["run"]

TOL = 1e-5


class _Poisoned:
    """``cp`` whose ``empty`` returns NaN-filled (float) or -1-filled (integer) arrays."""

    def __init__(self, cp: Any) -> None:
        self._cp = cp
        self.ndarray = cp.ndarray

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cp, name)

    def empty(self, shape: Any, dtype: Any = np.float32) -> Any:
        dt = np.dtype(dtype)
        return self._cp.full(shape, np.nan if dt.kind == "f" else -1, dtype=dt)


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.get()) if hasattr(a, "get") else np.asarray(a)


def _sync(cp: Any) -> None:
    cuda = getattr(cp, "cuda", None)
    if cuda is not None:
        cuda.Device().synchronize()


def _median_us(cp: Any, fn: Callable[[], Any], repeats: int) -> float:
    fn()
    _sync(cp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(cp)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _err(got: Any, want: np.ndarray) -> float:
    g = _host(got).astype(np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return float("inf")
    scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
    return float(np.max(np.abs(g - w)) / scale) if w.size else 0.0


def _exact(got: Any, want: np.ndarray) -> bool:
    g = _host(got)
    return g.shape == want.shape and bool(np.array_equal(g, want))


def _same_bits(a: Any, b: Any) -> bool:
    x, y = _host(a), _host(b)
    return x.tobytes() == y.tobytes()


def run(cp: Any, batch: int = 128, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """Compare every op of the CUDA set with the reference; returns ``{"cases": {...}, "ok": bool}``."""
    k = S.Kernels(_Poisoned(cp))
    rng = np.random.default_rng(seed)
    dev = cp.asarray
    cases: dict[str, dict[str, Any]] = {}

    def case(name: str, ok: bool, timing: tuple[Callable[[], Any], Callable[[], Any]] | None = None,
             **info: Any) -> None:
        entry = {"ok": bool(ok), **info}
        if timing is not None:
            entry["cuda_us"] = _median_us(cp, timing[0], repeats)
            entry["reference_us"] = _median_us(cp, timing[1], repeats)
        cases[name] = entry

    # conv2d (im2col + GEMM + epilogue; backward: 2-D GEMMs + col2im gather), LeNet-5's conv2
    x_h = rng.standard_normal((batch, 6, 14, 14)).astype(np.float32)
    W_h = (rng.standard_normal((16, 6, 5, 5)) * 0.1).astype(np.float32)
    b_h = rng.standard_normal(16).astype(np.float32)
    geo = ((1, 1), (0, 0), (1, 1))
    x, W, b = dev(x_h), dev(W_h), dev(b_h)
    y_ref, c_ref = _conv2d_forward(x_h, W_h, b_h, *geo)
    y1, c1 = S._conv_forward(k, x, W, b, *geo)
    y2, _ = S._conv_forward(k, x, W, b, *geo)
    d_h = rng.standard_normal(y_ref.shape).astype(np.float32)
    g_ref = _conv2d_backward(d_h, c_ref, True)
    d = dev(d_h)
    g1 = S._conv_backward(k, d, c1, True)
    g2 = S._conv_backward(k, d, c1, True)
    errs = [_err(y1, y_ref)] + [_err(g, r) for g, r in zip(g1, g_ref, strict=True)]
    xd, Wd, bd = dev(x_h), dev(W_h), dev(b_h)
    case("conv2d", max(errs) <= TOL and _same_bits(y1, y2) and all(_same_bits(a, c) for a, c in zip(g1, g2,
                                                                                                      strict=True)),
         (lambda: S._conv_backward(k, d, S._conv_forward(k, x, W, b, *geo)[1], True),
          lambda: _conv2d_backward(d, _conv2d_forward(xd, Wd, bd, *geo)[1], True)),
         max_err=max(errs), tol=TOL, what="forward + backward (dx, dW, db)")

    # relu and max pooling on the conv output's layout, exact, with ties
    z_h = rng.integers(-3, 4, (batch, 16, 10, 10)).astype(np.float32)
    z = dev(np.ascontiguousarray(z_h.transpose(1, 0, 2, 3))).transpose(1, 0, 2, 3)
    r, _ = S._relu_forward(k, z)
    r_ref = _relu(z_h)
    g = pool_geometry(z_h.shape, 2)
    p1, pc1 = S._max_pool_forward(k, r, g)
    p2, pc2 = S._max_pool_forward(k, r, g)
    p_ref, pc_ref = _max_pool2d_forward(r_ref, g)
    dp_h = rng.standard_normal(p_ref.shape).astype(np.float32)
    dr_ref = _max_pool2d_backward(dp_h, pc_ref)
    dz_ref = _relu_backward(dr_ref, r_ref)
    dp = dev(dp_h)
    dr = S._max_pool_backward(k, dp, pc1)
    dz = S._relu_backward(k, dr, r)
    ok = (_exact(r, r_ref) and _exact(p1, p_ref) and _exact(pc1.argmax, pc_ref.argmax.astype(np.int32))
          and _exact(dr, dr_ref) and _exact(dz, dz_ref) and _same_bits(p2, p1) and _same_bits(pc2.argmax, pc1.argmax))
    zd = dev(z_h)
    case("relu+max_pool2d", ok,
         (lambda: S._relu_backward(k, S._max_pool_backward(k, dp, S._max_pool_forward(k, S._relu_forward(k, z)[0],
                                                                                       g)[1]), r),
          lambda: _relu_backward(_max_pool2d_backward(dp, _max_pool2d_forward(_relu(zd), g)[1]), _relu(zd))),
         what="exact: values, first-max indices, gradients")

    # fused conv -> ReLU -> max pool epilogue and the fused pool + ReLU backward (LeNet-5's conv1)
    x_h = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    W_h = (rng.standard_normal((6, 1, 5, 5)) * 0.2).astype(np.float32)
    b_h = rng.standard_normal(6).astype(np.float32)
    geo = ((1, 1), (2, 2), (1, 1))
    g = pool_geometry((batch, 6, 28, 28), 2)
    zr, czr = _conv2d_forward(x_h, W_h, b_h, *geo)
    rr = _relu(zr)
    yr, cpr = _max_pool2d_forward(rr, g)
    dy_h = rng.standard_normal(yr.shape).astype(np.float32)
    gr = _conv2d_backward(_relu_backward(_max_pool2d_backward(dy_h, cpr), rr), czr, True)
    x, W, b, dy = dev(x_h), dev(W_h), dev(b_h), dev(dy_h)
    yf, cf = S._fused_forward(k, x, W, b, *geo, g)
    gf = S._fused_backward(k, dy, cf, True)
    errs = [_err(yf, yr)] + [_err(a, c) for a, c in zip(gf, gr, strict=True)]
    xd, Wd, bd = dev(x_h), dev(W_h), dev(b_h)

    def reference_fused() -> Any:
        z0, cz = _conv2d_forward(xd, Wd, bd, *geo)
        r0 = _relu(z0)
        _, cp0 = _max_pool2d_forward(r0, g)
        return _conv2d_backward(_relu_backward(_max_pool2d_backward(dy, cp0), r0), cz, True)

    case("conv+relu+max_pool2d fused", max(errs) <= TOL,
         (lambda: S._fused_backward(k, dy, S._fused_forward(k, x, W, b, *geo, g)[1], True), reference_fused),
         max_err=max(errs), tol=TOL, what="3 launches forward, 5 backward")

    # dense (one-launch kernels), LeNet-5's first dense layer
    x_h = rng.standard_normal((batch, 400)).astype(np.float32)
    W_h = (rng.standard_normal((400, 120)) * 0.05).astype(np.float32)
    b_h = rng.standard_normal(120).astype(np.float32)
    yd_ref, dc_ref = _dense_forward(x_h, W_h, b_h)
    d_h = rng.standard_normal(yd_ref.shape).astype(np.float32)
    gd_ref = _dense_backward(d_h, dc_ref, True)
    x, W, b, d = dev(x_h), dev(W_h), dev(b_h), dev(d_h)
    yd1, dc1 = S._dense_forward(k, x, W, b)
    gd1 = S._dense_backward(k, d, dc1, True)
    errs = [_err(yd1, yd_ref)] + [_err(a, c) for a, c in zip(gd1, gd_ref, strict=True)]
    case("dense", max(errs) <= TOL,
         (lambda: S._dense_backward(k, d, S._dense_forward(k, x, W, b)[1], True),
          lambda: _dense_backward(d, _dense_forward(x, W, b)[1], True)), max_err=max(errs), tol=TOL)

    # softmax cross-entropy with the device tallies (block cooperation: checked here only)
    z_h = (rng.standard_normal((batch, 10)) * 3).astype(np.float32)
    t_h = rng.integers(0, 10, batch).astype(np.int64)
    loss_ref, lc = _softmax_cross_entropy_forward(z_h, t_h)
    dz_ref = _softmax_cross_entropy_backward(None, lc)
    z, t = dev(z_h), dev(t_h)
    S._tally_buffer(k, z)[...] = 0.0
    loss1, dz1 = S._xent_forward(k, z, t)
    loss2, dz2 = S._xent_forward(k, z, t)
    tallies = S.tallies_of(k)
    correct = int((np.argmax(z_h, axis=1) == t_h).sum())
    errs = [_err(loss1, np.asarray(loss_ref)), _err(dz1, dz_ref)]
    ok = (max(errs) <= TOL and _same_bits(loss1, loss2) and _same_bits(dz1, dz2)
          and tallies["correct"] == 2 * correct and tallies["seen"] == 2 * batch and tallies["bad_labels"] == 0)
    case("softmax_cross_entropy", ok,
         (lambda: S._xent_forward(k, z, t), lambda: _softmax_cross_entropy_forward(z, t)),
         max_err=max(errs), tol=TOL, tallies=tallies, expected_correct=2 * correct)

    # multi-tensor optimizer updates over LeNet-5's parameter shapes, bit for bit, one launch per step
    shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (400, 120), (120,), (120, 84), (84,), (84, 10), (10,)]
    hyper = {"sgd": {"lr": 0.1, "weight_decay": 1e-4}, "momentum": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
             "nesterov": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
             "adagrad": {"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0},
             "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 1e-4},
             "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
             "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}}
    for rule, hp in hyper.items():
        names = updates.SLOTS[rule]
        p_h = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        s_h = [{n: np.zeros(s, np.float32) for n in names} for s in shapes]
        p = [dev(a) for a in p_h]
        s_d = [{n: cp.zeros(sh, dtype=np.float32) for n in names} for sh in shapes]
        ok = True
        for step in (1, 2, 3):
            g_h = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            p_h = updates.optimizer_update(p_h, g_h, s_h, [step] * len(shapes), rule, hp)
            group = S._group_of(k, p)
            if group is None:
                g_d = [dev(a) for a in g_h]
            else:  # where the backward kernels put gradients: the group's flat buffer
                g_d = [group.view(group.grads, i) for i in range(len(shapes))]
                for view, a in zip(g_d, g_h, strict=True):
                    view[...] = dev(a)
            p = S._optimizer_update(k, p, g_d, s_d, [step] * len(shapes), rule, hp)
            ok = ok and all(_host(a).view(np.uint32).tobytes() == b.view(np.uint32).tobytes()
                            for a, b in zip(p, p_h, strict=True))
            ok = ok and all(_host(sd[n]).tobytes() == sh[n].tobytes()
                            for sd, sh in zip(s_d, s_h, strict=True) for n in names)
        group = S._group_of(k, p)
        gd = [group.view(group.grads, i) for i in range(len(shapes))] if group else g_d
        pr = [dev(a) for a in p_h]
        sr = [{n: dev(sh[n]) for n in names} for sh in s_h]
        case(f"optimizer:{rule}", ok,
             (functools.partial(S._optimizer_update, k, p, gd, s_d, [4] * len(shapes), rule, hp),
              functools.partial(updates.optimizer_update, pr, gd, sr, [4] * len(shapes), rule, hp)),
             what="bit for bit vs NumPy, 3 steps, 10 tensors")
    return {"cases": cases, "ok": all(c["ok"] for c in cases.values()), "batch": batch, "repeats": repeats}


def main() -> int:
    """A dry run on the CPU (the kernels through the shim, NumPy as the device): ``python -m ...verify``."""
    import json

    from .standin import StandIn

    result = run(StandIn(), batch=8, repeats=2)
    print(json.dumps(result, indent=1, default=float))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
