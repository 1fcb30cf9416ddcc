"""Grouped convolutions through the kernel seam: fast sets written for ungrouped convolutions leave them to
the reference (CUDA set on its CPU stand-in; the Numba set where it is installed), and the results equal
the reference's.  Oracle: the nested-loop reference of ``tests/reference.py``."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import kernels

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R


def _case(rng):
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    W = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    return x, W, ((1, 1), (1, 1), (1, 1))


def test_cuda_set_leaves_grouped_convolutions_to_the_reference():
    shim = pytest.importorskip("xpcnn.kernels.cuda.shim")
    if shim.compiler() is None:
        pytest.skip("no host C++ compiler (g++) for the CUDA CPU shim")
    from xpcnn.kernels.cuda import cupy_set
    from xpcnn.kernels.cuda.standin import StandIn

    sx = StandIn()
    cupy_set.install(sx)
    x, W, g = _case(np.random.default_rng(0))
    xs, Ws = sx.from_numpy(x), sx.from_numpy(W)
    with kernels.using_kernels("auto"):
        assert kernels.conv2d.implementation(xs, Ws, None, *g, groups=2) == "reference"
        assert kernels.conv2d.implementation(xs, sx.from_numpy(np.ones((6, 4, 3, 3), np.float32)), None, *g) == "cuda"
        y, _ = kernels.conv2d.forward(xs, Ws, None, *g, groups=2)
    np.testing.assert_allclose(np.array(y._a), R.conv2d(x, W, None, 1, 1, 1, 2), rtol=1e-5, atol=1e-5)


def test_numpy_fast_sets_leave_grouped_convolutions_to_the_reference():
    x, W, g = _case(np.random.default_rng(1))
    with kernels.using_kernels("auto"):
        assert kernels.conv2d.implementation(x, W, None, *g, groups=2) == "reference"
        y, cache = kernels.conv2d.forward(x, W, None, *g, groups=2)
        dx, dW, _ = kernels.conv2d.backward(np.ones_like(y), cache)
    np.testing.assert_allclose(y, R.conv2d(x, W, None, 1, 1, 1, 2), rtol=1e-5, atol=1e-5)
    want_dx, want_dW, _ = R.conv2d_backward(x, W, np.ones(y.shape), 1, 1, 1, 2)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dW, want_dW, rtol=1e-5, atol=1e-4)
