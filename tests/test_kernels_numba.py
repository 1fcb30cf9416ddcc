"""The ``numba_cpu`` kernel set against the reference ops (:mod:`xpcnn.functional`), op by op.

Every fast op runs on seeded random geometries next to the reference on the same inputs: outputs and
every gradient agree within 1e-5 of the largest reference magnitude in float32 (1e-10 in float64),
max pooling's first-maximum indices agree exactly on inputs full of ties, and 1 and 2 worker threads
give bitwise the same results.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: the numba_cpu kernel set cannot load")

from xpcnn import kernels  # noqa: E402
from xpcnn.functional.pool import pool_geometry  # noqa: E402

NAME = "numba_cpu"
TOL = {np.float32: 1e-5, np.float64: 1e-10}


@pytest.fixture(scope="module")
def numba_cpu():
    """The kernel set's package (loading it through the seam, as the layers do)."""
    with kernels.using_kernels("fast"):
        kernels.relu.forward(np.zeros(1, np.float32))  # any NumPy call loads the NumPy sets
    import xpcnn.kernels.numba_cpu as nc
    return nc


def close(fast, ref, dtype, what=""):
    fast, ref = np.asarray(fast), np.asarray(ref)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype, (what, fast.shape, ref.shape, fast.dtype, ref.dtype)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    err = float(np.max(np.abs(fast.astype(np.float64) - ref))) / scale if ref.size else 0.0
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def both(op, *args, backward_args=(), dout=None, **kwargs):
    """Run ``op`` forward (and backward on ``dout``) with the fast set and with the reference."""
    out = {}
    for mode in ("fast", "reference"):
        with kernels.using_kernels(mode):
            assert op.implementation(*args, **kwargs) == (NAME if mode == "fast" else "reference")
            y, cache = op.forward(*args, **kwargs)
            grads = op.backward(dout, cache, *backward_args) if dout is not None else None
        out[mode] = (y, cache, grads)
    return out


# ------------------------------------------------------------------------------------------- conv

def conv_cases(n_cases, seed):
    rng = np.random.default_rng(seed)
    cases = [  # the geometries the model zoo uses, then random ones
        dict(N=4, C=1, H=28, W=28, F=6, K=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1), bias=True),
        dict(N=3, C=6, H=14, W=14, F=16, K=(5, 5), s=(1, 1), p=(0, 0), d=(1, 1), bias=True),
        dict(N=5, C=8, H=9, W=9, F=12, K=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), bias=False),
        dict(N=2, C=4, H=7, W=7, F=8, K=(1, 1), s=(2, 2), p=(0, 0), d=(1, 1), bias=True),
    ]
    for _ in range(n_cases):
        K = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        H = int(rng.integers(max(1, d[0] * (K[0] - 1) + 1 - 2 * p[0]), 16))
        W = int(rng.integers(max(1, d[1] * (K[1] - 1) + 1 - 2 * p[1]), 16))
        cases.append(dict(N=int(rng.integers(1, 20)), C=int(rng.integers(1, 6)), H=H, W=W, F=int(rng.integers(1, 9)),
                          K=K, s=s, p=p, d=d, bias=bool(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", conv_cases(14, 7), ids=lambda c: "N{N}C{C}H{H}W{W}F{F}K{K}s{s}p{p}d{d}".format(**c))
def test_conv2d_matches_reference(numba_cpu, case, dtype):
    rng = np.random.default_rng(1)
    c = case
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(dtype)
    W = rng.standard_normal((c["F"], c["C"], *c["K"])).astype(dtype)
    b = rng.standard_normal(c["F"]).astype(dtype) if c["bias"] else None
    args = (x, W, b, c["s"], c["p"], c["d"])
    y_shape = kernels.conv2d.forward(*args)[0].shape
    dout = rng.standard_normal(y_shape).astype(dtype)
    out = both(kernels.conv2d, *args, dout=dout, backward_args=(True,))
    close(out["fast"][0], out["reference"][0], dtype, "y")
    for name, f, r in zip(("dx", "dW", "db"), out["fast"][2], out["reference"][2]):
        close(f, r, dtype, name)
    with kernels.using_kernels("fast"):  # the first layer: no dx, the same dW
        dx, dW, _ = kernels.conv2d.backward(dout, kernels.conv2d.forward(*args)[1], False)
    assert dx is None
    close(dW, out["reference"][2][1], dtype, "dW without dx")


def test_conv2d_fused_relu_matches_reference(numba_cpu):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 3, 10, 10)).astype(np.float32)
    W = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, cache = numba_cpu.conv.conv2d_forward(x, W, b, (1, 1), (1, 1), (1, 1), relu=True)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx, dW, db = numba_cpu.conv.conv2d_backward(dout, cache)
    with kernels.using_kernels("reference"):
        z, zc = kernels.conv2d.forward(x, W, b, (1, 1), (1, 1), (1, 1))
        r, rc = kernels.relu.forward(z)
        rdx, rdW, rdb = kernels.conv2d.backward(kernels.relu.backward(dout, rc), zc, True)
    for f, ref, what in ((y, r, "y"), (dx, rdx, "dx"), (dW, rdW, "dW"), (db, rdb, "db")):
        close(f, ref, np.float32, what)


# ------------------------------------------------------------------------------------------- pooling

def pool_cases():
    rng = np.random.default_rng(3)
    cases = [((2, 2), None, (0, 0), False, (28, 28)), ((2, 2), None, (0, 0), False, (7, 7)),
             ((3, 3), (2, 2), (1, 1), False, (9, 9)), ((3, 3), (2, 2), (0, 0), True, (8, 8)),
             ((2, 3), (1, 2), (1, 1), True, (6, 7))]
    for _ in range(8):
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
        hw = (int(rng.integers(k[0], 13)), int(rng.integers(k[1], 13)))
        cases.append((k, s, p, bool(rng.integers(0, 2)), hw))
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,hw", pool_cases(), ids=str)
def test_max_pool_matches_reference_with_ties(numba_cpu, kernel, stride, padding, ceil_mode, hw, dtype):
    rng = np.random.default_rng(4)
    # values from a 3-element set: most windows hold ties, and all-negative windows with -inf padding occur
    x = rng.integers(-2, 1, size=(3, 4, *hw)).astype(dtype)
    g = pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
    dout = rng.standard_normal((3, 4, *g.out)).astype(dtype)
    out = both(kernels.max_pool2d, x, g, dout=dout)
    close(out["fast"][0], out["reference"][0], dtype, "y")
    fast_idx, ref_idx = out["fast"][1][1].argmax, out["reference"][1][1].argmax
    assert fast_idx.dtype == ref_idx.dtype
    np.testing.assert_array_equal(fast_idx, ref_idx)
    close(out["fast"][2], out["reference"][2], dtype, "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,hw", pool_cases(), ids=str)
def test_avg_pool_matches_reference(numba_cpu, kernel, stride, padding, ceil_mode, hw, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, *hw)).astype(dtype)
    g = pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
    dout = rng.standard_normal((3, 4, *g.out)).astype(dtype)
    out = both(kernels.avg_pool2d, x, g, dout=dout)
    close(out["fast"][0], out["reference"][0], dtype, "y")
    close(out["fast"][2], out["reference"][2], dtype, "dx")


def test_max_pool_fused_relu_matches_relu_then_pool(numba_cpu):
    rng = np.random.default_rng(6)
    x = rng.integers(-3, 3, size=(4, 3, 8, 8)).astype(np.float32)  # ties and all-negative windows
    g = pool_geometry(x.shape, 2)
    y, cache = numba_cpu.pool.max_pool2d_forward(x, g, relu=True)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = numba_cpu.pool.max_pool2d_backward(dout, cache)
    with kernels.using_kernels("reference"):
        r, rc = kernels.relu.forward(x)
        p, pc = kernels.max_pool2d.forward(r, g)
        rdx = kernels.relu.backward(kernels.max_pool2d.backward(dout, pc), rc)
    np.testing.assert_array_equal(y, p)
    np.testing.assert_array_equal(dx, rdx)


# ------------------------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 8, 5, 5), (32, 12), (6, 3, 2, 1), (7, 5, 3, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_matches_reference(numba_cpu, shape, train, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    C = shape[1]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    stats = {}
    out = {}
    for mode in ("fast", "reference"):
        rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
        rm[:], rv[:] = np.linspace(-1, 1, C), np.linspace(0.5, 2, C)  # the same start for both
        with kernels.using_kernels(mode):
            assert kernels.batch_norm.implementation(x, gamma, beta, rm, rv, train) == (
                NAME if mode == "fast" else "reference")
            y, cache = kernels.batch_norm.forward(x, gamma, beta, rm, rv, train, 0.1, 1e-5)
            out[mode] = (y, *kernels.batch_norm.backward(dout, cache))
        stats[mode] = (rm, rv)
    for name, f, r in zip(("y", "dx", "dgamma", "dbeta"), out["fast"], out["reference"]):
        close(f, r, dtype, name)
    for name, f, r in zip(("running_mean", "running_var"), stats["fast"], stats["reference"]):
        close(f, r, dtype, name)


# ------------------------------------------------------------------------------------------- optimizer updates

RULES = {
    "sgd": {"lr": 0.1, "weight_decay": 0.01},
    "momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.001},
    "adagrad": {"lr": 0.05, "eps": 1e-10, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.01},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_optimizer_update_in_place_matches_reference(numba_cpu, rule, dtype):
    from xpcnn.functional.updates import SLOTS
    rng = np.random.default_rng(8)
    shapes = [(4, 3, 3, 3), (4,), (10, 7)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(5)]
    result = {}
    for mode in ("fast", "reference"):
        params = [p.copy() for p in start]
        slots = [{name: np.zeros_like(p) for name in SLOTS[rule]} for p in params]
        with kernels.using_kernels(mode):
            assert kernels.optimizer_update.implementation(params, grads[0], slots, [1] * 3, rule, RULES[rule]) == (
                NAME if mode == "fast" else "reference")
            for t, g in enumerate(grads, start=1):
                new = kernels.optimizer_update(params, g, slots, [t] * 3, rule, RULES[rule])
                if mode == "fast":
                    assert all(a is b for a, b in zip(new, params))  # updated in place
                params = new
        result[mode] = (params, slots)
    for f, r in zip(result["fast"][0], result["reference"][0]):
        close(f, r, dtype, f"{rule} params")
    for fs, rs in zip(result["fast"][1], result["reference"][1]):
        for name in fs:
            close(fs[name], rs[name], dtype, f"{rule} {name}")


# ------------------------------------------------------------------------------------------- eligibility

def test_ineligible_calls_fall_back_to_the_reference(numba_cpu):
    x16 = np.ones((2, 1, 5, 5), np.float16)
    W16 = np.ones((1, 1, 3, 3), np.float16)
    x32, W32 = x16.astype(np.float32), W16.astype(np.float32)
    with kernels.using_kernels("fast"):
        assert kernels.conv2d.implementation(x16, W16, None, (1, 1), (0, 0), (1, 1)) == "reference"
        assert kernels.conv2d.implementation(x32, W32, None, (1, 1), (0, 0), (1, 1)) == NAME
        assert kernels.conv2d.implementation(x32, W32.astype(np.float64), None, (1, 1), (0, 0), (1, 1)) == "reference"
        assert kernels.conv2d.implementation(x32, W32, None, (1, 1), (0, 0), (1, 1), groups=2) == "reference"
        g = pool_geometry(x16.shape, 2)
        assert kernels.max_pool2d.implementation(x16, g) == "reference"
        frozen = np.ones(3, np.float32)
        frozen.flags.writeable = False
        assert kernels.optimizer_update.implementation([frozen], [np.ones(3, np.float32)], [{}], [1], "sgd",
                                                       {"lr": 0.1, "weight_decay": 0.0}) == "reference"
    with kernels.using_kernels("reference"):
        assert kernels.conv2d.implementation(x32, W32, None, (1, 1), (0, 0), (1, 1)) == "reference"
    assert kernels.active_sets()[NAME] == "loaded"


# ------------------------------------------------------------------------------------------- threads

def test_one_and_two_threads_are_bitwise_identical(numba_cpu):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((37, 6, 14, 14)).astype(np.float32)
    W = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    results = []
    for n in (1, 2):
        with numba_cpu.threads.using_workers(n), kernels.using_kernels("fast"):
            y, c = kernels.conv2d.forward(x, W, b, (1, 1), (2, 2), (1, 1))
            conv = (y, *kernels.conv2d.backward(np.cos(y), c, True))
            g = pool_geometry(x.shape, 3, 2, 1)
            p, pc = kernels.max_pool2d.forward(x, g)
            pool = (p, kernels.max_pool2d.backward(np.sin(p), pc))
            rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
            z, zc = kernels.batch_norm.forward(x, gamma, beta, rm, rv, True, 0.1, 1e-5)
            bn = (z, *kernels.batch_norm.backward(np.cos(z), zc), rm, rv)
        results.append(conv + pool + bn)
    for one, two in zip(*results):
        assert one.tobytes() == two.tobytes()


def test_nan_propagates_through_pooling_like_the_reference(numba_cpu):
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan   # not the first tap of its window
    x[1, 0, 2, 2] = np.nan   # the first tap of its window
    g = pool_geometry(x.shape, 2)
    out = both(kernels.max_pool2d, x, g)
    np.testing.assert_array_equal(np.isnan(out["fast"][0]), np.isnan(out["reference"][0]))
    assert np.isnan(out["fast"][0]).sum() == 2
    y, _ = numba_cpu.pool.max_pool2d_forward(x - 100, g, relu=True)  # ReLU keeps NaN, clamps the rest to 0
    assert np.isnan(y).sum() == 2 and np.all(y[~np.isnan(y)] == 0)


# ------------------------------------------------------------------------------------------- whole shares

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_shares_equal_the_python_driven_path(numba_cpu, monkeypatch, dtype):
    """BLAS called from inside Numba (one compiled call per thread) and the Python-driven per-sample path
    (``np.matmul``, used where NumPy's BLAS is out of Numba's reach) agree within the tolerance, and each
    gives bitwise the same results on 1 and 2 threads."""
    conv, fused, blas = numba_cpu.conv, numba_cpu.fused, pytest.importorskip("xpcnn.kernels.numba_cpu.blas")
    if not blas.AVAILABLE:
        pytest.skip("no OpenBLAS bundled with this NumPy: the whole-share path is not used here")
    results = {}
    for shares in (False, True):
        monkeypatch.setattr(conv, "WHOLE_SHARES", shares)
        for workers in (1, 2):
            rng = np.random.default_rng(11)
            out = []
            for case in conv_cases(4, 12)[:6]:
                x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
                W = rng.standard_normal((case["F"], case["C"], *case["K"])).astype(dtype)
                b = rng.standard_normal(case["F"]).astype(dtype) if case["bias"] else None
                with numba_cpu.threads.using_workers(workers):
                    for relu in (False, True):
                        y, c = conv.conv2d_forward(x, W, b, case["s"], case["p"], case["d"], relu=relu)
                        out += [y, *(g for g in conv.conv2d_backward(np.cos(y), c, True))]
                        out += [g for g in conv.conv2d_backward(np.cos(y), c, False) if g is not None]
                    if min(y.shape[2:]) >= 2:
                        g = pool_geometry(y.shape, 2)
                        z, zc = fused.fused_forward(x, W, b, case["s"], case["p"], case["d"], g)
                        out += [z, zc.argmax, *fused.fused_backward(np.sin(z), zc, True)]
            results[shares, workers] = out
    assert len(results[True, 1]) == len(results[False, 1]) > 40
    for shares in (False, True):
        for one, two in zip(results[shares, 1], results[shares, 2]):
            assert one.dtype == two.dtype and one.tobytes() == two.tobytes()
    for python_driven, share in zip(results[False, 1], results[True, 1]):
        if python_driven.dtype.kind == "i":  # pooling indices: exact unless a window holds a near-tie
            assert np.mean(python_driven == share) > 0.99
        else:
            close(share, python_driven, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 8, 5, 5), (32, 12), (7, 5, 3, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_relu_matches_the_composed_reference(numba_cpu, shape, train, dtype):
    from xpcnn.kernels import fusion

    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    out = {}
    for mode in ("fast", "reference"):
        rm, rv = rng.standard_normal(C).astype(dtype) * 0 + 0.5, np.full(C, 2.0, dtype)
        with kernels.using_kernels(mode):
            impl = fusion.batch_norm_relu.implementation(x, gamma, beta, rm, rv, train, 0.1, 1e-5)
            assert impl == (NAME if mode == "fast" else "reference")
            y, cache = fusion.batch_norm_relu.forward(x, gamma, beta, rm, rv, train, 0.1, 1e-5)
            out[mode] = (y, *fusion.batch_norm_relu.backward(dout, cache), rm, rv)
    assert np.all(out["fast"][0] >= 0) and np.any(out["fast"][0] == 0)
    for name, f, r in zip(("y", "dx", "dgamma", "dbeta", "running_mean", "running_var"), out["fast"], out["reference"]):
        close(f, r, dtype, name)


# ------------------------------------------------------------------------------------------- dense, BLAS threads

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d_in,d_out,bias", [(128, 400, 120, True), (7, 5, 3, False), (300, 64, 10, True)])
def test_dense_matches_reference_and_is_thread_count_independent(numba_cpu, n, d_in, d_out, bias, dtype):
    rng = np.random.default_rng(17)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = rng.standard_normal((d_in, d_out)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype) if bias else None
    dout = rng.standard_normal((n, d_out)).astype(dtype)
    out = both(kernels.dense, x, W, b, dout=dout, backward_args=(True,))
    close(out["fast"][0], out["reference"][0], dtype, "y")
    for name, f, r in zip(("dx", "dW", "db"), out["fast"][2], out["reference"][2]):
        close(f, r, dtype, name)
    runs = []
    for workers in (1, 2):
        with numba_cpu.threads.using_workers(workers):
            y, cache = numba_cpu.dense.dense_forward(x, W, b)
            runs.append((y, *(g for g in numba_cpu.dense.dense_backward(dout, cache) if g is not None)))
    for one, two in zip(*runs):
        assert one.tobytes() == two.tobytes()
    assert not numba_cpu.dense.dense_eligible(x.astype(np.int64), W, b)
    assert not numba_cpu.dense.dense_eligible(x[None], W, b)


def test_row_blocks_cover_the_rows_by_shape_only(numba_cpu):
    for n in (0, 1, 63, 64, 127, 128, 1000, 10_000):
        blocks = numba_cpu.dense.row_blocks(n)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert len(blocks) <= numba_cpu.dense.MAX_BLOCKS
        assert len(blocks) == 1 or min(r1 - r0 for r0, r1 in blocks) >= numba_cpu.dense.MIN_ROWS


def test_blas_is_held_at_one_thread_and_released(numba_cpu, monkeypatch):
    """The kernels hold NumPy's BLAS at one thread (its spinning threads would take the workers' cores);
    the worker count is fixed from the limit they found; release_blas gives the limit back."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    threads = numba_cpu.threads
    if not threads._BLAS:
        pytest.skip("threadpoolctl sees no BLAS library in this NumPy")
    monkeypatch.setattr(threads, "_CONFIGURED", None)
    monkeypatch.setattr(threads, "_HELD", {})
    with threadpoolctl.threadpool_limits(3, user_api="blas"):
        threads.hold_blas()
        assert all(c.num_threads == 1 for c in threads._BLAS)
        assert threads.workers() == 3
        x = np.ones((4, 1, 6, 6), np.float32)
        with kernels.using_kernels("fast"):
            kernels.conv2d.forward(x, np.ones((2, 1, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1))
        assert all(c.num_threads == 1 for c in threads._BLAS) and threads.workers() == 3
        threads.release_blas()
        assert all(c.num_threads == 3 for c in threads._BLAS)
    threads.set_workers(2)
    assert threads.workers() == 2
    with threads.using_workers(1):
        assert threads.workers() == 1


def test_xpcnn_num_threads_sets_the_worker_count(numba_cpu, monkeypatch):
    threads = numba_cpu.threads
    monkeypatch.setattr(threads, "_CONFIGURED", None)
    monkeypatch.setenv("XPCNN_NUM_THREADS", "5")
    assert threads.workers() == 5
    monkeypatch.setattr(threads, "_CONFIGURED", None)
    monkeypatch.setenv("XPCNN_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="XPCNN_NUM_THREADS must be a positive integer, got 'two'"):
        threads.workers()


# ------------------------------------------------------------------------------------------- depthwise

def depthwise_cases(n_cases, seed):
    rng = np.random.default_rng(seed)
    cases = [dict(N=5, C=8, H=14, W=14, K=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), bias=False),
             dict(N=3, C=6, H=9, W=9, K=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), bias=True)]
    while len(cases) < n_cases + 2:
        K = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        H, W = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        if H + 2 * p[0] < d[0] * (K[0] - 1) + 1 or W + 2 * p[1] < d[1] * (K[1] - 1) + 1:
            continue
        cases.append(dict(N=int(rng.integers(1, 11)), C=int(rng.integers(1, 7)), H=H, W=W, K=K, s=s, p=p, d=d,
                          bias=bool(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", depthwise_cases(10, 21), ids=lambda c: "N{N}C{C}H{H}W{W}K{K}s{s}p{p}d{d}".format(**c))
def test_depthwise_conv_matches_reference(numba_cpu, case, dtype):
    rng = np.random.default_rng(3)
    c = case
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(dtype)
    W = rng.standard_normal((c["C"], 1, *c["K"])).astype(dtype)
    b = rng.standard_normal(c["C"]).astype(dtype) if c["bias"] else None
    args = (x, W, b, c["s"], c["p"], c["d"])
    with kernels.using_kernels("reference"):
        dout = rng.standard_normal(kernels.conv2d.forward(*args, groups=c["C"])[0].shape).astype(dtype)
    out = both(kernels.conv2d, *args, groups=c["C"], dout=dout, backward_args=(True,))
    close(out["fast"][0], out["reference"][0], dtype, "y")
    for name, f, r in zip(("dx", "dW", "db"), out["fast"][2], out["reference"][2]):
        close(f, r, dtype, name)
    runs = []
    for workers in (1, 2):
        with numba_cpu.threads.using_workers(workers), kernels.using_kernels("fast"):
            y, cache = kernels.conv2d.forward(*args, groups=c["C"])
            dx, dW, db = kernels.conv2d.backward(dout, cache, True)
            _, dW2, _ = kernels.conv2d.backward(dout, cache, False)
            runs.append((y, dx, dW, db, dW2))
    for one, two in zip(*runs):
        assert one.tobytes() == two.tobytes()
    assert runs[0][2].tobytes() == runs[0][4].tobytes()  # dW does not depend on computing dx


def test_other_grouped_convolutions_use_the_reference(numba_cpu):
    x = np.ones((2, 4, 6, 6), np.float32)
    with kernels.using_kernels("auto"):
        assert kernels.conv2d.implementation(x, np.ones((4, 2, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1),
                                             groups=2) == "reference"
        assert kernels.conv2d.implementation(x, np.ones((8, 1, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1),
                                             groups=4) == "reference"  # depthwise with 2 filters per channel
        assert kernels.conv2d.implementation(x, np.ones((4, 1, 3, 3), np.float32), None, (1, 1), (1, 1), (1, 1),
                                             groups=4) == NAME
