"""Host-side preprocessing: to_float, images_as_float, standardize, train_val_split."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.datasets import images_as_float, standardize, to_float, train_val_split


def test_to_float():
    imgs = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = to_float(imgs)
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(x[0, 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)
    assert to_float(np.zeros((2, 3, 4, 4), np.uint8)).shape == (2, 3, 4, 4)
    with pytest.raises(TypeError, match="uint8"):
        to_float(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_float(np.zeros((2, 2), np.uint8))


def test_standardize(rng):
    x = rng.uniform(0, 1, (50, 1, 4, 4)).astype(np.float32)
    z, mean, std = standardize(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(float(np.mean(x, dtype=np.float64)))
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, rel=1e-5)
    z2, m2, s2 = standardize(x[:5], mean, std)
    assert (m2, s2) == (mean, std)
    np.testing.assert_allclose(z2, (x[:5] - mean) / std, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        standardize(np.ones((3, 3), np.float32))


def test_train_val_split():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    x_tr, y_tr, x_val, y_val = train_val_split(x, y, 0.2, rng=0)
    assert len(y_val) == 10 and len(y_tr) == 40
    np.testing.assert_array_equal(x_tr[:, 0] // 2, y_tr)  # pairs stay together
    np.testing.assert_array_equal(x_val[:, 0] // 2, y_val)
    assert sorted(np.concatenate([y_tr, y_val]).tolist()) == list(range(50))
    assert np.all(np.diff(y_tr) > 0) and np.all(np.diff(y_val) > 0)  # original order kept
    np.testing.assert_array_equal(train_val_split(x, y, 0.2, rng=0)[3], y_val)  # reproducible
    assert not np.array_equal(train_val_split(x, y, 0.2, rng=1)[3], y_val)
    for bad in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError):
            train_val_split(x, y, bad, rng=0)
    with pytest.raises(ValueError, match="same number"):
        train_val_split(x, y[:-1], 0.2)


def test_images_as_float():
    """uint8 images scale exactly as to_float does; floating images keep their values; NHW gains a channel."""
    u8 = np.random.default_rng(0).integers(0, 256, (3, 2, 4, 5), dtype=np.uint8)
    np.testing.assert_array_equal(images_as_float(u8), to_float(u8))
    np.testing.assert_array_equal(images_as_float(u8[:, 0]), to_float(u8[:, 0]))
    for dtype in (np.float16, np.float32, np.float64):
        x = (np.arange(3 * 4 * 5).reshape(3, 4, 5) / 7.0 - 3.0).astype(dtype)
        out = images_as_float(x)
        assert out.dtype == np.float32 and out.shape == (3, 1, 4, 5)
        np.testing.assert_array_equal(out[:, 0], x.astype(np.float32))  # values kept, only cast
    with pytest.raises(TypeError, match="uint8 or floating images, got int16"):
        images_as_float(np.zeros((2, 3, 3), np.int16))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\), got \(2, 3\)"):
        images_as_float(np.zeros((2, 3), np.float32))
