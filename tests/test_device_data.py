"""Data and augmentation on the device: the same seed gives the same batches as the host path.

Oracle: the host path of :class:`~xpcnn.datasets.BatchIterator` (NumPy transforms, themselves
tested against loop references in test_augment.py), run with the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_lanes import activate, lane_backend

from xpcnn import backend as B
from xpcnn.datasets import BatchIterator, augment

LANES = ["numpy", "array_api_strict", "strict:device1", "current-device"]


@pytest.fixture(params=LANES)
def lane(request, monkeypatch):
    name = request.param
    be = lane_backend(name, monkeypatch) if name in ("strict:device1", "current-device") else B.resolve(name)
    with activate(be):
        yield be


def _recipe(fill: float) -> augment.Compose:
    return augment.Compose([augment.RandomCrop(2, fill), augment.RandomHorizontalFlip(), augment.RandomShift(1, fill),
                            augment.RandomShift(0)])


@pytest.mark.parametrize("drop_last", [False, True])
def test_device_augmentation_reproduces_the_host_batches(lane, drop_last):
    data = np.random.default_rng(0)
    x = data.standard_normal((11, 2, 5, 6)).astype(np.float32)
    y = data.integers(0, 10, 11)
    host = BatchIterator(x, y, 4, rng=7, transform=_recipe(-0.25), drop_last=drop_last)
    dev = BatchIterator(x, y, 4, rng=7, transform=_recipe(-0.25), drop_last=drop_last, on_device=True)
    for _epoch in range(2):
        host_batches, dev_batches = list(host), list(dev)
        assert len(host_batches) == len(dev_batches) == len(host)
        for (hx, hy), (dx, dy) in zip(host_batches, dev_batches, strict=True):
            if lane.name == "array_api_strict":
                assert dx.device == lane.device and dy.device == lane.device
            else:
                assert isinstance(dx, np.ndarray)
            np.testing.assert_array_equal(B.to_numpy(dx), B.to_numpy(hx))
            np.testing.assert_array_equal(B.to_numpy(dy), B.to_numpy(hy))
        assert host.rng.bit_generator.state == dev.rng.bit_generator.state  # same draws, same order
    changed = [not np.array_equal(B.to_numpy(b[0]), x[i * 4:(i + 1) * 4]) for i, b in enumerate(dev_batches)]
    assert any(changed)  # the augmentation did something


@pytest.mark.parametrize("transform", [augment.RandomCrop(3, 0.5), augment.RandomHorizontalFlip(1.0),
                                       augment.RandomShift(2)])
def test_apply_on_device_equals_host_call(lane, transform):
    """Each transform's device ``apply`` equals its host ``__call__`` for the same draws."""
    xb = np.random.default_rng(1).standard_normal((5, 3, 4, 7)).astype(np.float32)
    expected = transform(xb, np.random.default_rng(2))
    params = transform.draw(5, np.random.default_rng(2))
    got = transform.apply(B.asarray(xb), augment.map_params(params, lambda a: B.asarray(a)) if params is not None
                          else None)
    np.testing.assert_array_equal(B.to_numpy(got), expected)


def test_params_concat_and_slice_round_trip():
    rng = np.random.default_rng(0)
    t = _recipe(0.0)
    parts = [t.draw(n, rng) for n in (4, 4, 3)]
    joined = augment.concat_params(parts)
    assert joined[0].shape == (2, 11) and joined[1].shape == (11,) and joined[3] is None
    for i, (start, stop) in enumerate([(0, 4), (4, 8), (8, 11)]):
        got = augment.slice_params(joined, start, stop)
        for a, b in zip(got, parts[i], strict=True):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_label_range_read_once_on_the_host():
    it = BatchIterator(np.zeros((5, 1, 2, 2), np.float32), np.array([3, 1, 4, 1, 5]), 2)
    assert it.label_range == (1, 5)
    assert BatchIterator(np.zeros((2, 3)), np.zeros((2, 2), np.float32), 1).label_range is None


def _dropout_net():
    from xpcnn.layers import Conv2D, Dense, Dropout, Flatten, ReLU
    from xpcnn.model import Sequential

    # two Dropouts on the model's shared generator: the epoch blocks interleave alike on every backend
    return Sequential(Conv2D(1, 2, 3, rng=0), ReLU(), Flatten(), Dropout(0.3), Dense(2 * 4 * 4, 8, rng=1), ReLU(),
                      Dropout(0.5), Dense(8, 3, rng=3))


def test_fit_on_device_reproduces_the_host_run(lane):
    """Same seed: data, augmentation and dropout on the device give the host (NumPy) run's numbers."""
    from xpcnn import optim, train

    data = np.random.default_rng(4)
    x = data.standard_normal((40, 1, 6, 6)).astype(np.float32)
    y = data.integers(0, 3, 40)

    def run(be, on_device):
        with activate(be):
            model = _dropout_net()
            hist = train.fit(model, optim.Momentum(model.parameters(), lr=0.05), (x, y), val=(x[:8], y[:8]),
                             epochs=2, batch_size=16, seed=3, on_device=on_device, progress=False, log=None,
                             transform=augment.parse_augment("shift1,flip"))
            return hist, {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}

    ref_hist, ref_w = run(B.resolve("numpy"), False)
    hist, w = run(lane, True)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(hist[key], ref_hist[key], rtol=1e-6)
    for key, value in ref_w.items():
        np.testing.assert_allclose(w[key], value, rtol=0, atol=1e-5 * max(1.0, float(np.abs(value).max())))


@pytest.mark.parametrize("block", [None, 6 * 3])
def test_mask_bank_rows_are_the_per_step_draws(lane, block, monkeypatch):
    from xpcnn.layers import mask_bank
    from xpcnn.layers.mask_bank import MaskBank

    if block is not None:
        monkeypatch.setattr(mask_bank, "BLOCK", block)  # one batch per block
    bank = MaskBank()
    bank.plan(7)
    rng, ref = np.random.default_rng(9), np.random.default_rng(9)
    for n in (3, 4):
        xb = B.asarray(np.ones((n, 2, 3)), "float32")
        mask = bank.take(xb, 0.25, rng)
        expected = (ref.random((n, 2, 3)) >= 0.25) / 0.75
        np.testing.assert_allclose(B.to_numpy(mask), expected, rtol=1e-7)
    assert bank.take(B.asarray(np.ones((1, 2, 3)), "float32"), 0.25, rng) is None  # past the plan
    assert bank.rows == 0 and bank.keep is None
