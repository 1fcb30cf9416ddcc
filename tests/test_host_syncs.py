"""No host synchronisation per training step: device reads and host-to-device copies per epoch, not per step.

On the ``strict:device1`` lane every way an array can reach the host is wrapped and counted
(``__float__``, ``__int__``, ``__bool__``, ``__index__``, ``__array__``, ``__dlpack__``, ``to_device``),
and every host-to-device copy (``asarray`` of a host array onto the device).  ``fit`` runs the same
recipe (dropout, crop + flip on the device, validation) for 8 and for 32 steps per epoch: the counts
must be equal.  Oracle: the counts themselves, and the 4 syncs per step the old loop made (shown
by checking labels on the device, which counts one per step).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from device_lanes import StrictArray, activate, lane_backend, strict

from xpcnn import backend as B
from xpcnn import optim, train
from xpcnn.datasets import augment
from xpcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpcnn.losses import SoftmaxCrossEntropy
from xpcnn.model import Sequential

READS = ("__float__", "__int__", "__bool__", "__index__", "__array__", "__dlpack__", "to_device")


@pytest.fixture
def counted(monkeypatch):
    """``(backend, counts)``: the device1 lane, with its device->host reads and host->device copies counted."""
    be = lane_backend("strict:device1", monkeypatch)
    counts: collections.Counter[str] = collections.Counter()
    for name in READS:
        original = getattr(StrictArray, name)

        def wrapped(self, *args, __name=name, __original=original, **kwargs):
            if self.device == be.device:
                counts[__name] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(StrictArray, name, wrapped)
    original_asarray = strict.asarray

    def asarray(obj, *args, device=None, **kwargs):
        if device == be.device and not isinstance(obj, StrictArray):
            counts["host_to_device"] += 1
        return original_asarray(obj, *args, device=device, **kwargs)

    monkeypatch.setattr(strict, "asarray", asarray)
    with activate(be):
        yield be, counts


def _net() -> Sequential:
    return Sequential(Conv2D(1, 2, 3, rng=0), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.3),
                      Dense(2 * 4 * 4, 12, rng=1), ReLU(), Dropout(0.2, rng=2), Dense(12, 5, rng=3))


def _fit(steps: int, counts, **kwargs) -> dict[str, int]:
    data = np.random.default_rng(0)
    n = 8 * steps
    x = data.standard_normal((n, 1, 10, 10)).astype(np.float32)
    y = data.integers(0, 5, n)
    val = (x[:16], y[:16])
    model = _net()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    counts.clear()
    history = train.fit(model, opt, (x, y), val=val, epochs=2, batch_size=8, seed=0, on_device=True,
                        transform=augment.parse_augment("crop2,flip"), progress=False, log=None, **kwargs)
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    return dict(counts)


def test_device_reads_and_copies_do_not_grow_with_steps(counted):
    _, counts = counted
    few, many = _fit(8, counts), _fit(32, counts)
    assert few == many, f"8 steps: {few}; 32 steps: {many}"
    reads = sum(v for k, v in few.items() if k != "host_to_device")
    # per epoch: loss and accuracy sums (train, validation), the validation predictions, and
    # Trainer.check_weights' one finiteness read per parameter
    assert 0 < reads <= 2 * (5 + len(_net().parameters()))
    assert few["host_to_device"] <= 20  # per epoch: order, augmentation parameters, dropout masks


def test_check_every_k_steps_reads_once_per_k(counted):
    _, counts = counted
    base = _fit(8, counts, check_every=None)
    k4 = _fit(8, counts, check_every=4)  # 2 extra checks per epoch at steps 4 and 8 (8 is also the epoch's end)
    extra = sum(k4.values()) - sum(base.values())
    assert extra == 2 * 2  # 2 epochs x 2 checks, one read each


def test_per_step_label_checks_would_be_counted(counted):
    """The counter sees what the old loop did: a loss reading the labels' range on the device every step."""
    be, counts = counted
    x = B.asarray(np.zeros((4, 3)), "float32")
    y = B.asarray(np.array([0, 1, 2, 0]), "int64")
    counts.clear()
    for _ in range(5):
        SoftmaxCrossEntropy(check_values=True).forward(x, y)
    assert sum(counts.values()) == 5 * 2  # int(min), int(max) per call
    counts.clear()
    for _ in range(5):
        SoftmaxCrossEntropy(check_values=False).forward(x, y)
    assert sum(counts.values()) == 0


def test_labels_out_of_range_fail_before_the_first_update(counted):
    data = np.random.default_rng(1)
    x = data.standard_normal((16, 1, 10, 10)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 5, 0, 1] * 2)  # 5 is out of range for 5 classes
    model = _net()
    before = {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"train y must hold labels in 0\.\.4 .*got 5"):
        train.fit(model, optim.SGD(model.parameters(), lr=0.1), (x, y), batch_size=8, on_device=True,
                  progress=False, log=None)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(B.to_numpy(value), before[key])


def test_divergence_found_at_the_check_names_step_and_range(counted):
    data = np.random.default_rng(2)
    x = data.standard_normal((48, 1, 10, 10)).astype(np.float32)
    y = data.integers(0, 5, 48)
    x[8 * 4 + 3, 0, 5, 5] = np.nan  # some image of step 5 (no shuffle: look it up below)
    order = B.seed_stream(0, "shuffle").permutation(48)
    step = int(np.nonzero(order == 8 * 4 + 3)[0][0]) // 8 + 1
    model = _net()
    first = 1 + ((step - 1) // 4) * 4
    with pytest.raises(train.TrainingDivergedError,
                       match=rf"loss became nan at epoch 1, step {step} of 6 .*steps {first}-{min(first + 3, 6)}"):
        train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y), batch_size=8, seed=0, on_device=True,
                  progress=False, log=None, check_every=4)
