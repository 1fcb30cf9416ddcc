"""Inverted dropout: scaling, eval identity, seeded masks identical across lanes, drop rate, backward."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck
from xpcnn.layers import Dropout


def _masks_via_layer(seed, p, host_x, dtype, calls=2):
    layer = Dropout(p, rng=seed)
    x = B.asarray(host_x, dtype=dtype)
    return [B.to_numpy(layer.forward(x, train=True)) for _ in range(calls)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_inverted_scaling(backend, rng, p, dtype):
    shape = (20, 30)
    x_h = rng.uniform(0.5, 2.0, shape)  # never zero, so dropped units are exactly the zeros of y
    layer = Dropout(p, rng=1)
    y = layer.forward(B.asarray(x_h, dtype=dtype), train=True)
    assert tuple(y.shape) == shape and y.dtype == getattr(backend.xp, dtype)
    y_h = B.to_numpy(y).astype(np.float64)
    xh = x_h.astype(dtype).astype(np.float64)
    kept = y_h != 0.0
    assert 0 < kept.sum() < kept.size
    rtol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(y_h[kept], xh[kept] / (1.0 - p), rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eval_is_identity(backend, rng, dtype):
    x_h = rng.standard_normal((5, 6))
    x = B.asarray(x_h, dtype=dtype)
    y = Dropout(0.5, rng=0).forward(x, train=False)
    assert tuple(y.shape) == (5, 6) and y.dtype == getattr(backend.xp, dtype)
    np.testing.assert_array_equal(B.to_numpy(y), x_h.astype(dtype))


def test_p_zero_keeps_everything_in_train(backend, rng):
    x_h = rng.standard_normal((4, 5))
    y = Dropout(0.0, rng=0).forward(B.asarray(x_h, dtype="float64"), train=True)
    np.testing.assert_array_equal(B.to_numpy(y), x_h)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_same_mask_on_every_lane(backend, rng, dtype):
    shape, p = (6, 7, 5), 0.4
    x_h = rng.uniform(0.5, 1.5, shape)
    with B.using("numpy"):
        reference = _masks_via_layer(42, p, x_h, dtype)
    got = _masks_via_layer(42, p, x_h, dtype)
    for r, g in zip(reference, got):
        np.testing.assert_array_equal(g, r)
    # successive calls draw fresh masks
    assert not np.array_equal(got[0] != 0, got[1] != 0)


def test_functional_mask_same_on_every_lane(backend):
    like = B.asarray(np.zeros(1), dtype="float32")
    mask = F.dropout_mask((50, 40), 0.3, np.random.default_rng(9), like)
    assert tuple(mask.shape) == (50, 40) and mask.dtype == backend.xp.float32
    with B.using("numpy"):
        ref = F.dropout_mask((50, 40), 0.3, np.random.default_rng(9), B.asarray(np.zeros(1), dtype="float32"))
    np.testing.assert_array_equal(B.to_numpy(mask), B.to_numpy(ref))
    values = set(np.unique(B.to_numpy(mask)).tolist())
    assert values == {0.0, float(np.float32(1.0 / 0.7))}


def test_global_seed_drives_layers_without_rng(backend, rng):
    saved = B._default_rng
    try:
        x = B.asarray(rng.uniform(0.5, 1.5, (30, 30)), dtype="float64")
        B.seed(123)
        a = B.to_numpy(Dropout(0.5).forward(x, train=True))
        B.seed(123)
        b = B.to_numpy(Dropout(0.5).forward(x, train=True))
        c = B.to_numpy(Dropout(0.5).forward(x, train=True))
    finally:
        B._default_rng = saved
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a != 0, c != 0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_fraction_near_p(backend, p):
    n = 200_000
    y = Dropout(p, rng=2024).forward(B.asarray(np.ones(n), dtype="float32"), train=True)
    y_h = B.to_numpy(y).astype(np.float64)
    frac = float(np.mean(y_h == 0.0))
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(frac - p) < 6 * sigma
    # inverted dropout keeps the expectation: mean of y close to 1
    assert abs(y_h.mean() - 1.0) < 6 * np.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_uses_forward_mask(backend, rng, dtype):
    shape, p = (8, 9), 0.5
    x_h = rng.uniform(0.5, 2.0, shape)
    dout_h = rng.uniform(0.5, 2.0, shape)
    layer = Dropout(p, rng=5)
    y_h = B.to_numpy(layer.forward(B.asarray(x_h, dtype=dtype), train=True)).astype(np.float64)
    dout = B.asarray(dout_h, dtype=dtype)
    before = B.to_numpy(dout).copy()
    dx = layer.backward(dout)
    assert tuple(dx.shape) == shape and dx.dtype == getattr(backend.xp, dtype)
    np.testing.assert_array_equal(B.to_numpy(dout), before)
    kept = y_h != 0.0
    dx_h = B.to_numpy(dx).astype(np.float64)
    np.testing.assert_array_equal(dx_h != 0.0, kept)
    rtol = 1e-6 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(dx_h[kept], dout_h.astype(dtype)[kept] / (1 - p), rtol=rtol)
    # a second backward reuses the same mask (no redraw)
    np.testing.assert_array_equal(B.to_numpy(layer.backward(dout)), B.to_numpy(dx))


def test_backward_before_forward_and_after_eval(backend):
    layer = Dropout(0.5, rng=0)
    dout = B.asarray(np.ones((2, 2)), dtype="float32")
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(dout)
    layer.forward(dout, train=False)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(dout)


def test_gradcheck_with_fixed_seed(backend, rng):
    x = B.asarray(rng.standard_normal((4, 5)), dtype="float64")

    def f(x):  # a fresh layer with a fixed seed per call: the same mask on every evaluation
        layer = Dropout(0.4, rng=77)
        return layer.forward(x, train=True), layer.backward

    assert gradcheck(f, x).ok


def test_functional_forward_backward(backend, rng):
    x_h, d_h = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    like = B.asarray(np.zeros(1), dtype="float64")
    mask = F.dropout_mask((3, 4), 0.25, np.random.default_rng(3), like)
    m_h = B.to_numpy(mask)
    y, cache = F.dropout_forward(B.asarray(x_h, dtype="float64"), 0.25, np.random.default_rng(3))  # the same draw
    np.testing.assert_array_equal(B.to_numpy(y), x_h * m_h)
    np.testing.assert_array_equal(B.to_numpy(F.dropout_backward(B.asarray(d_h, dtype="float64"), cache)), d_h * m_h)
    with pytest.raises(ValueError, match="does not match"):
        F.dropout_backward(B.asarray(np.ones((3, 5)), dtype="float64"), mask)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_p_out_of_range(backend, p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout_mask((2, 2), p, np.random.default_rng(0), B.asarray(np.zeros(1), dtype="float32"))


def test_config(backend):
    layer = Dropout(0.3, rng=0)
    assert layer.config() == {"p": 0.3}
    assert Dropout(**layer.config()).p == 0.3
