"""The CUDA kernels' logic on the CPU: each .cu source compiled with g++ through the shim, vs the reference.

Exact equality for the gathers (im2col, col2im), pooling (values and first-max indices, ties included),
ReLU and the optimizer updates (bit for bit: the sources round every operation explicitly);
a tolerance for the dense kernels (another summation order than BLAS) and the softmax cross-entropy
(exp/log).  softmax_xent cooperates within a block (__syncthreads, shared memory): the shim runs it
with one OS thread per CUDA thread and a barrier, which checks its logic but not the GPU's memory
model; the GPU stage in xpcnn.kernels.cuda.verify compares it on a device.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import updates
from xpcnn.functional.activation import _relu_backward, log_softmax
from xpcnn.functional.conv import _unfold, col2im
from xpcnn.functional.pool import _max_pool2d_backward, _max_pool2d_forward, pool_geometry
from xpcnn.kernels.cuda import shim

pytestmark = pytest.mark.skipif(shim.compiler() is None, reason="no host C++ compiler (g++) for the CUDA CPU shim")

rng = np.random.default_rng(1234)


def run(src: str, name: str, n: int, *args: object, threads: int = 64) -> None:
    """Launch like the kernel set does (grid-stride loops, a few blocks)."""
    blocks = max(1, min(7, -(-n // threads)))
    shim.load(src).get_function(name)((blocks,), (threads,), args)


def estrides(a: np.ndarray) -> list[int]:
    return [s // a.itemsize for s in a.strides]


CONV_GEOMETRIES = [  # N, C, H, W, KH, KW, stride, padding, dilation
    (2, 3, 7, 6, 3, 3, (1, 1), (0, 0), (1, 1)),
    (3, 2, 9, 8, 3, 2, (2, 1), (1, 2), (1, 1)),
    (1, 4, 10, 11, 2, 3, (3, 2), (0, 1), (2, 2)),
    (2, 1, 28, 28, 5, 5, (1, 1), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
@pytest.mark.parametrize("layout", ["nchw", "cnhw"])
def test_im2col_matches_reference_exactly(geom: tuple, layout: str) -> None:
    N, C, H, W, KH, KW, s, p, d = geom
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    if layout == "cnhw":  # the (C, N, H, W) memory order the conv output has
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    ref, (oh, ow) = _unfold(x, (KH, KW), s, p, d)  # (N, KH*KW*C, L), tap-major rows
    expected = ref.reshape(N, KH, KW, C, oh * ow).transpose(3, 1, 2, 0, 4).reshape(C * KH * KW, N * oh * ow)
    col = np.full((C * KH * KW, N * oh * ow), np.nan, np.float32)
    run("conv.cu", "im2col_f32", col.size, x, col, N, C, H, W, KH, KW, *s, *p, *d, oh, ow, *estrides(x))
    np.testing.assert_array_equal(col, expected)


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
def test_col2im_gather_matches_reference_scatter_exactly(geom: tuple) -> None:
    N, C, H, W, KH, KW, s, p, d = geom
    _, (oh, ow) = _unfold(np.zeros((N, C, H, W), np.float32), (KH, KW), s, p, d)
    dcol = rng.standard_normal((C * KH * KW, N * oh * ow)).astype(np.float32)
    tap_major = dcol.reshape(C, KH, KW, N, oh * ow).transpose(3, 1, 2, 0, 4).reshape(N, KH * KW * C, oh * ow)
    expected = col2im(tap_major, (N, C, H, W), (KH, KW), s, p, d)
    dx = np.full((N, C, H, W), np.nan, np.float32)
    run("conv.cu", "col2im_f32", dx.size, dcol, dx, N, C, H, W, KH, KW, *s, *p, *d, oh, ow)
    np.testing.assert_array_equal(dx, expected)


POOLS = [  # kernel, stride, padding, ceil_mode
    (2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True), (2, 1, 0, False), ((2, 3), (1, 2), (1, 1), True),
]


def _pool_input(N: int, C: int, H: int, W: int, ties: bool) -> np.ndarray:
    if ties:  # few distinct values: windows with several maxima
        return rng.integers(-2, 3, (N, C, H, W)).astype(np.float32)
    return rng.standard_normal((N, C, H, W)).astype(np.float32)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("relu_bias", [False, True])
def test_bias_relu_maxpool_epilogue_matches_reference_exactly(pool: tuple, ties: bool, relu_bias: bool) -> None:
    k, s, p, ceil = pool
    N, F, H, W = 2, 3, 9, 8
    z = _pool_input(N, F, H, W, ties)
    b = rng.integers(-1, 2, F).astype(np.float32) if relu_bias else None
    g = pool_geometry(z.shape, k, s, p, ceil)
    v = z + b.reshape(1, F, 1, 1) if relu_bias else z
    v = np.maximum(v, 0.0) if relu_bias else v
    y_ref, cache = _max_pool2d_forward(v, g)
    # z in the GEMM's (F, N, H, W) memory order, y written as NCHW
    zf = np.ascontiguousarray(z.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    y = np.full((N, F, *g.out), np.nan, np.float32)
    argmax = np.full((N, F, *g.out), -1, np.int32)
    run("pool.cu", "bias_relu_maxpool_f32", y.size, zf, b, y, argmax, N, F, H, W, *g.kernel, *g.stride, *g.padding,
        *g.out, int(relu_bias), *estrides(zf), *estrides(y))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, cache.argmax.astype(np.int32))


def test_epilogue_with_unit_window_is_the_in_place_bias_add() -> None:
    N, F, H, W = 2, 4, 5, 3
    z = rng.standard_normal((F, N, H, W)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    expected = z.transpose(1, 0, 2, 3) + b.reshape(1, F, 1, 1)
    view = z.transpose(1, 0, 2, 3)
    run("pool.cu", "bias_relu_maxpool_f32", z.size, view, b, view, None, N, F, H, W, 1, 1, 1, 1, 0, 0, H, W, 0,
        *estrides(view), *estrides(view))
    np.testing.assert_array_equal(view, expected)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fused_relu", [False, True])
def test_maxpool_backward_gather_matches_reference_exactly(pool: tuple, fused_relu: bool) -> None:
    k, s, p, ceil = pool
    N, C, H, W = 2, 3, 9, 8
    z = _pool_input(N, C, H, W, ties=True)
    x = np.maximum(z, 0.0) if fused_relu else z
    g = pool_geometry(x.shape, k, s, p, ceil)
    y, cache = _max_pool2d_forward(x, g)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    expected = _max_pool2d_backward(dout, cache)
    if fused_relu:
        expected = _relu_backward(expected, x)
    dx = np.full(x.shape, np.nan, np.float32)
    run("pool.cu", "maxpool_relu_backward_f32", dx.size, dout, cache.argmax.astype(np.int32),
        y if fused_relu else None, dx, N, C, H, W, *g.kernel, *g.stride, *g.padding, *g.out, *estrides(dx))
    np.testing.assert_array_equal(dx, expected)


def test_relu_forward_and_backward_match_reference_exactly() -> None:
    x = _pool_input(3, 4, 5, 6, ties=True) * 0.5
    y = np.full_like(x, np.nan)
    run("pool.cu", "relu_f32", x.size, x, y, x.size)
    np.testing.assert_array_equal(y, np.maximum(x, 0.0))
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx = np.full_like(x, np.nan)
    run("pool.cu", "relu_backward_f32", x.size, dout, y, dx, x.size)
    np.testing.assert_array_equal(dx, _relu_backward(dout, y))


@pytest.mark.parametrize("shape", [(5, 7, 3), (33, 40, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_kernels_match_a_float64_oracle(shape: tuple[int, int, int], bias: bool) -> None:
    N, K, M = shape
    x = rng.standard_normal((N, K)).astype(np.float32)
    W = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    y = np.full((N, M), np.nan, np.float32)
    run("dense.cu", "dense_forward_f32", N * M, x, W, b, y, N, K, M)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    ref = x64 @ W64 + (b.astype(np.float64) if bias else 0.0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    dout = rng.standard_normal((N, M)).astype(np.float32)
    dx, dW = np.full((N, K), np.nan, np.float32), np.full((K, M), np.nan, np.float32)
    db = np.full(M, np.nan, np.float32) if bias else None
    run("dense.cu", "dense_backward_f32", N * K + K * M + (M if bias else 0), x, W, dout, dx, dW, db, N, K, M)
    d64 = dout.astype(np.float64)
    for got, want in ((dx, d64 @ W64.T), (dW, x64.T @ d64)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    if bias:
        np.testing.assert_allclose(db, d64.sum(axis=0), rtol=0, atol=1e-5 * np.abs(d64.sum(axis=0)).max())


def test_dense_backward_without_dx_writes_only_dw_and_db() -> None:
    N, K, M = 4, 6, 3
    x, W = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((K, M)).astype(np.float32)
    dout = rng.standard_normal((N, M)).astype(np.float32)
    dW, db = np.full((K, M), np.nan, np.float32), np.full(M, np.nan, np.float32)
    run("dense.cu", "dense_backward_f32", K * M + M, x, W, dout, None, dW, db, N, K, M)
    np.testing.assert_allclose(dW, x.astype(np.float64).T @ dout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, dout.astype(np.float64).sum(0), rtol=1e-5, atol=1e-6)


RULES = [
    ("sgd", {"lr": 0.1, "weight_decay": 0.0}), ("sgd", {"lr": 0.05, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}),
    ("momentum", {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.02}),
    ("nesterov", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("adagrad", {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.0}),
    ("adagrad", {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.03}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "weight_decay": 0.01}),
    ("adam", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    ("adam", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05}),
    ("adamw", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}),
    ("adamw", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
]


@pytest.mark.parametrize(("rule", "hyper"), RULES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(RULES)])
def test_optimizer_kernels_match_reference_bit_for_bit(rule: str, hyper: dict[str, float]) -> None:
    from xpcnn.kernels.cuda.cupy_set import _RULE_KERNEL, _rule_args

    n = 1001
    p = rng.standard_normal(n).astype(np.float32)
    names = updates.SLOTS[rule]
    ref_p, ref_slots = p.copy(), {s: np.zeros(n, np.float32) for s in names}
    got_p, got_slots = p.copy(), {s: np.zeros(n, np.float32) for s in names}
    for step in (1, 2, 3):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 2, n)).astype(np.float32)
        ref_p = updates.optimizer_update([ref_p], [g], [ref_slots], [step], rule, hyper)[0]
        run("optim.cu", _RULE_KERNEL[rule], n, got_p, g, *(got_slots[s] for s in names), n,
            *_rule_args(rule, hyper, step))
        assert ref_p.dtype == np.float32
        np.testing.assert_array_equal(got_p.view(np.uint32), ref_p.view(np.uint32))
        for s in names:
            np.testing.assert_array_equal(got_slots[s].view(np.uint32), ref_slots[s].view(np.uint32))


@pytest.mark.parametrize("N", [7, 300])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_xent_loss_gradient_and_tallies(N: int, label_dtype: type) -> None:
    C = 10
    z = (rng.standard_normal((N, C)) * 4).astype(np.float32)
    z[0, :3] = 50.0  # a tie for the arg-max (the first one counts) and large logits
    labels = rng.integers(0, C, N).astype(label_dtype)
    labels[0] = 1
    dz, loss = np.full((N, C), np.nan, np.float32), np.full((), np.nan, np.float32)
    tallies = np.array([1.0, 2.0, 3.0, 0.0])  # accumulated into
    name = {np.int64: "softmax_xent_i64_f32", np.int32: "softmax_xent_i32_f32", np.uint8: "softmax_xent_u8_f32"}
    shim.load("loss.cu").get_function(name[label_dtype])((1,), (256,), (z, labels, dz, loss, tallies, N, C))
    z64 = z.astype(np.float64)
    logp = np.asarray(log_softmax(z64, axis=-1))
    rows = -logp[np.arange(N), labels.astype(np.int64)]
    np.testing.assert_allclose(float(loss), rows.mean(), rtol=1e-5)
    onehot = np.eye(C)[labels.astype(np.int64)]
    np.testing.assert_allclose(dz, (np.exp(logp) - onehot) / N, rtol=0, atol=1e-6 / N)
    correct = int((np.argmax(z, axis=1) == labels).sum())
    assert np.argmax(z[0]) == 0 and labels[0] == 1  # the tied row counts as a miss
    np.testing.assert_allclose(tallies[0], 1.0 + rows.sum(), rtol=1e-5)
    assert tallies[1:].tolist() == [2.0 + correct, 3.0 + N, 0.0]


def test_softmax_xent_counts_labels_out_of_range() -> None:
    N, C = 5, 4
    z = rng.standard_normal((N, C)).astype(np.float32)
    labels = np.array([0, 4, 1, -1, 3], np.int64)
    dz, loss, tallies = np.empty((N, C), np.float32), np.empty((), np.float32), np.zeros(4)
    shim.load("loss.cu").get_function("softmax_xent_i64_f32")((1,), (256,), (z, labels, dz, loss, tallies, N, C))
    assert np.isnan(loss) and tallies[3] == 2.0 and tallies[2] == N
