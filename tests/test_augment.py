"""Host-side augmentation: shifts and flips against direct per-image loops."""

import numpy as np
import pytest

from xpcnn import backend as B
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
    with pytest.raises(ValueError, match="on_device"):  # a host-only transform (no draw/apply)
        BatchIterator(x, y, 4, on_device=True, transform=lambda xb, rng: xb)


# --------------------------------------------------------------------------- 3-channel crop and flip, the spec parser


def _crop_reference(img: np.ndarray, top: int, left: int, pad: int, fill: float) -> np.ndarray:
    """Pad ``img`` (C, H, W) by ``pad`` with ``fill`` and cut the H x W window at (top, left), by loops."""
    c, h, w = img.shape
    padded = [[[fill] * (w + 2 * pad) for _ in range(h + 2 * pad)] for _ in range(c)]
    for k in range(c):
        for i in range(h):
            for j in range(w):
                padded[k][i + pad][j + pad] = float(img[k, i, j])
    out = np.empty_like(img)
    for k in range(c):
        for i in range(h):
            for j in range(w):
                out[k, i, j] = padded[k][top + i][left + j]
    return out


def _flip_reference(img: np.ndarray) -> np.ndarray:
    c, h, w = img.shape
    out = np.empty_like(img)
    for k in range(c):
        for i in range(h):
            for j in range(w):
                out[k, i, j] = img[k, i, w - 1 - j]
    return out


@pytest.mark.parametrize("fill", [0.0, -1.25])
def test_random_crop_matches_per_sample_loop(fill):
    """crop4 on 3-channel 32x32 images: pad 4 with ``fill``, crop 32x32 at a uniformly drawn place."""
    x = np.random.default_rng(4).uniform(0, 1, (12, 3, 32, 32)).astype(np.float32)
    out = augment.RandomCrop(4, fill=fill)(x, np.random.default_rng(9))
    tops, lefts = np.random.default_rng(9).integers(0, 9, size=(2, 12))  # the documented draws
    assert out.shape == x.shape and out.dtype == x.dtype
    for b in range(12):
        np.testing.assert_array_equal(out[b], _crop_reference(x[b], int(tops[b]), int(lefts[b]), 4, fill))
    assert len({(int(t), int(l)) for t, l in zip(tops, lefts)}) > 6  # the crops really vary


def test_random_crop_is_a_shift_in_minus_pad_to_pad():
    """Every crop equals the image moved by (top - 4, left - 4) with zeros coming in (shift reference above)."""
    x = np.random.default_rng(5).integers(1, 256, (40, 3, 10, 9)).astype(np.float64)
    out = augment.RandomCrop(4)(x, np.random.default_rng(1))
    offsets = np.random.default_rng(1).integers(0, 9, size=(2, 40)) - 4
    assert offsets.min() == -4 and offsets.max() == 4
    for b in range(40):
        np.testing.assert_array_equal(out[b], _shift_reference(x[b], int(offsets[0, b]), int(offsets[1, b]), 0.0))
    assert augment.RandomCrop(0)(x, np.random.default_rng(0)) is x
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="padding must be an integer >= 0"):
            augment.RandomCrop(bad)
    with pytest.raises(ValueError, match=r"RandomCrop expects \(B, C, H, W\)"):
        augment.RandomCrop(2)(x[0], np.random.default_rng(0))


def test_flip_of_3_channel_images_matches_loop():
    x = np.random.default_rng(6).uniform(size=(10, 3, 5, 7)).astype(np.float32)
    out = augment.RandomHorizontalFlip()(x, np.random.default_rng(3))
    drawn = np.random.default_rng(3).random(10) < 0.5
    assert 0 < drawn.sum() < 10
    for b in range(10):
        np.testing.assert_array_equal(out[b], _flip_reference(x[b]) if drawn[b] else x[b])


def test_parse_augment_specs():
    t = augment.parse_augment("crop4,flip", fill=-0.5)
    assert isinstance(t, augment.Compose)
    (crop, flip) = t.transforms
    assert isinstance(crop, augment.RandomCrop) and (crop.padding, crop.fill) == (4, -0.5)
    assert isinstance(flip, augment.RandomHorizontalFlip) and flip.p == 0.5
    assert augment.parse_augment("crop").padding == 4 and augment.parse_augment("crop2").padding == 2
    assert augment.parse_augment(" SHIFT3 ").max_shift == 3 and augment.parse_augment("shift").max_shift == 2
    assert augment.parse_augment("shift1", fill=2.0).fill == 2.0
    assert augment.parse_augment("none") is None and augment.parse_augment("") is None
    assert repr(augment.build("crop4,flip", -0.5)) == repr(t)  # the old name gives the same transform


@pytest.mark.parametrize("spec,message", [
    ("shiftx", r"invalid augmentation 'shiftx' in 'shiftx': 'shift' takes an optional whole number of pixels "
               r"\(e\.g\. 'shift2'\), got 'x'"),
    ("crop4,flip,shift-1", r"invalid augmentation 'shift-1' in 'crop4,flip,shift-1'.*got '-1'"),
    ("crop2.5", r"invalid augmentation 'crop2.5'.*'crop' takes an optional whole number"),
    ("rotate", r"unknown augmentation 'rotate' in 'rotate'; expected 'none', or a comma list of: shift\[N\]"),
    ("flip2", r"unknown augmentation 'flip2'"),
    ("none,flip", r"augmentation 'none' cannot be combined with other items in 'none,flip'"),
])
def test_parse_augment_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        augment.parse_augment(spec)
    assert "invalid literal" not in str(info.value)


def test_parse_augment_needs_a_string():
    with pytest.raises(TypeError, match="augmentation spec must be a string, got int"):
        augment.parse_augment(4)


def test_crop_flip_batches_are_the_same_on_every_backend(backend):
    """The iterator's seeded stream drives crop4,flip on the host: the same numbers on every lane, per sample."""
    x = np.random.default_rng(7).integers(0, 256, (11, 3, 8, 8), dtype=np.uint8)
    y = np.arange(11)
    fill = -0.75
    it = BatchIterator(x, y, 4, rng=21, transform=augment.parse_augment("crop4,flip", fill))
    got = [(B.to_numpy(xb), B.to_numpy(yb)) for _ in range(2) for xb, yb in it]
    assert all(B.backend_name(xb) == backend.name for xb, _ in it)
    # the reference: the same host generator, drawn in the iterator's documented order, applied per sample
    g = np.random.default_rng(21)
    expected = []
    for _ in range(2):
        order = g.permutation(11)
        for start in range(0, 11, 4):
            idx = order[start:start + 4]
            xb = x[idx].astype(np.float32)
            tops, lefts = g.integers(0, 9, size=(2, len(idx)))
            flips = g.random(len(idx)) < 0.5
            out = np.stack([_crop_reference(xb[k], int(tops[k]), int(lefts[k]), 4, fill) for k in range(len(idx))])
            out = np.stack([_flip_reference(o) if f else o for o, f in zip(out, flips)])
            expected.append((out, idx))
    assert len(got) == len(expected) == 6
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert gx.dtype == np.float32
        np.testing.assert_array_equal(gy, ey)
        np.testing.assert_array_equal(gx, ex)
