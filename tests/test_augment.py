"""Host-side augmentation: shifts and flips against direct per-image loops."""

import numpy as np
import pytest

from xpcnn.datasets import BatchIterator, augment


def _shift_reference(img: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """Image translated so that out[i, j] = img[i + dy, j + dx] (fill outside), by loops."""
    c, h, w = img.shape
    out = np.full_like(img, fill)
    for i in range(h):
        for j in range(w):
            si, sj = i + dy, j + dx
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = img[:, si, sj]
    return out


def test_random_shift_matches_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 2, 7, 5)).astype(np.float32)
    shift = augment.RandomShift(max_shift=2, fill=-1.5)
    out = shift(x, np.random.default_rng(42))
    offsets = np.random.default_rng(42).integers(0, 5, size=(2, 16)) - 2  # the same draws, centred
    assert out.shape == x.shape and out.dtype == x.dtype
    for b in range(16):
        expected = _shift_reference(x[b], int(offsets[0, b]), int(offsets[1, b]), -1.5)
        np.testing.assert_array_equal(out[b], expected)


def test_shift_zero_is_identity_and_shifts_vary():
    x = np.random.default_rng(1).standard_normal((32, 1, 8, 8)).astype(np.float32)
    assert augment.RandomShift(0)(x, np.random.default_rng(0)) is x
    out = augment.RandomShift(2)(x, np.random.default_rng(0))
    changed = [not np.array_equal(out[b], x[b]) for b in range(32)]
    assert sum(changed) >= 20  # only the offset (0, 0), drawn with probability 1/25, leaves an image as is


def test_horizontal_flip_flips_exactly_the_drawn_images():
    x = np.random.default_rng(2).standard_normal((20, 1, 4, 6))
    out = augment.RandomHorizontalFlip(0.5)(x, np.random.default_rng(7))
    drawn = np.random.default_rng(7).random(20) < 0.5
    for b in range(20):
        np.testing.assert_array_equal(out[b], x[b, :, :, ::-1] if drawn[b] else x[b])
    assert 0 < drawn.sum() < 20


def test_build_specs_and_errors():
    assert augment.build("none") is None
    assert isinstance(augment.build("shift3"), augment.RandomShift) and augment.build("shift3").max_shift == 3
    assert isinstance(augment.build("shift,flip"), augment.Compose)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        augment.build("rotate")


def test_batch_iterator_applies_transform_reproducibly():
    x = np.random.default_rng(3).standard_normal((10, 1, 6, 6)).astype(np.float32)
    y = np.arange(10)

    def run():
        it = BatchIterator(x, y, 4, rng=5, transform=augment.RandomShift(1))
        return [np.asarray(xb) for _ in range(2) for xb, _ in it]

    first, second = run(), run()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    plain = [np.asarray(xb) for xb, _ in BatchIterator(x, y, 4, rng=5)]
    assert any(not np.array_equal(a, b) for a, b in zip(first, plain))
    with pytest.raises(ValueError, match="on_device"):
        BatchIterator(x, y, 4, on_device=True, transform=augment.RandomShift(1))
