"""Initializers: fans of dense and conv shapes; empirical statistics against the formulas.

Shapes are large enough (>= 70k draws) that the sample standard deviation is
within ~0.5% of the true one; tolerances are ~6 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn.initializers import INITIALIZERS, fans, initialize
from xpcnn.layers import Conv2D, Dense

DENSE = (300, 500)          # fan_in 300, fan_out 500
CONV = (64, 128, 3, 3)      # fan_in 128*9 = 1152, fan_out 64*9 = 576


def _expected_fans(shape):
    if len(shape) == 2:
        return shape[0], shape[1]
    f, c, kh, kw = shape
    return c * kh * kw, f * kh * kw


@pytest.mark.parametrize("shape,expected", [((3, 7), (3, 7)), ((8, 3, 5, 2), (30, 80)), ((1, 1, 1, 1), (1, 1))])
def test_fans(shape, expected):
    assert fans(shape) == expected


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_fans_rejects_other_ranks(shape):
    with pytest.raises(ValueError, match="2-D or 4-D"):
        fans(shape)


def _check_normal(w, std):
    n = w.size
    assert abs(w.mean()) < 6 * std / math.sqrt(n)
    # standard error of the sample std is std / sqrt(2n)
    assert abs(w.std() - std) < 6 * std / math.sqrt(2 * n)
    # a Gaussian, not a uniform with the same std: ~4.55% of draws beyond 2 std
    assert abs(np.mean(np.abs(w) > 2 * std) - 0.0455) < 0.005


def _check_uniform(w, a):
    n = w.size
    assert w.min() >= -a and w.max() <= a
    # the extremes get within a few a/n of the bounds
    assert w.max() > a * (1 - 20.0 / n) and w.min() < -a * (1 - 20.0 / n)
    sigma = a / math.sqrt(3.0)
    assert abs(w.std() - sigma) < 6 * sigma * math.sqrt(0.2 / n)  # the standard error of the std of U(-a, a)
    # flat histogram
    hist, _ = np.histogram(w, bins=10, range=(-a, a))
    np.testing.assert_allclose(hist / n, 0.1, atol=6 * math.sqrt(0.09 / n))


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", ["he", "he_normal"])
def test_he_normal(shape, name):
    fan_in, _ = _expected_fans(shape)
    w = initialize(name, shape, np.random.default_rng(0))
    assert w.shape == shape and w.dtype == np.float64
    _check_normal(w, math.sqrt(2.0 / fan_in))


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", ["xavier", "xavier_normal", "glorot"])
def test_xavier_normal(shape, name):
    fan_in, fan_out = _expected_fans(shape)
    w = initialize(name, shape, np.random.default_rng(1))
    assert w.shape == shape and w.dtype == np.float64
    _check_normal(w, math.sqrt(2.0 / (fan_in + fan_out)))


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_he_uniform(shape):
    fan_in, _ = _expected_fans(shape)
    w = initialize("he_uniform", shape, np.random.default_rng(2))
    assert w.shape == shape and w.dtype == np.float64
    _check_uniform(w, math.sqrt(6.0 / fan_in))


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_xavier_uniform(shape):
    fan_in, fan_out = _expected_fans(shape)
    w = initialize("xavier_uniform", shape, np.random.default_rng(3))
    assert w.shape == shape and w.dtype == np.float64
    _check_uniform(w, math.sqrt(6.0 / (fan_in + fan_out)))


def test_fixed_normal():
    w = initialize("normal", DENSE, np.random.default_rng(4))
    _check_normal(w, 0.01)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_seeded_and_reproducible(name):
    a = initialize(name, (20, 30), np.random.default_rng(7))
    b = initialize(name, (20, 30), np.random.default_rng(7))
    c = initialize(name, (20, 30), np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_aliases_draw_the_same_numbers():
    for group in (["he", "he_normal"], ["xavier", "xavier_normal", "glorot"]):
        draws = [initialize(n, (10, 10), np.random.default_rng(0)) for n in group]
        for d in draws[1:]:
            np.testing.assert_array_equal(d, draws[0])


def test_unknown_initializer():
    with pytest.raises(ValueError, match="unknown initializer 'kaiming_magic'") as info:
        initialize("kaiming_magic", (2, 2), np.random.default_rng(0))
    assert "he_uniform" in str(info.value)


def test_layers_use_their_fans(backend):
    """Conv2D W (F, C, KH, KW) must use fan_in = C*KH*KW; Dense W (in, out) uses in."""
    conv = Conv2D(128, 16, 3, rng=0, dtype="float64")   # fan_in 1152 (fan_out would be 144)
    w = B.to_numpy(conv.params["W"])
    assert w.shape == (16, 128, 3, 3)
    _check_normal(w, math.sqrt(2.0 / 1152))
    dense = Dense(900, 100, init="xavier_uniform", rng=0, dtype="float64")
    w = B.to_numpy(dense.params["W"])
    assert w.shape == (900, 100)
    _check_uniform(w, math.sqrt(6.0 / 1000))
    np.testing.assert_array_equal(B.to_numpy(dense.params["b"]), np.zeros(100))


def test_layer_rejects_unknown_init(backend):
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(3, 2, init="nope")
