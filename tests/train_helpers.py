"""Shared pieces of the training tests (test_train.py, test_callbacks.py): MNIST subsets, a tiny CNN,
weight snapshots and a loss that records its batches (each test module wraps the data helpers in
module-scoped fixtures ``mnist`` and ``small``)."""

from __future__ import annotations

import numpy as np

from xpcnn import backend as B
from xpcnn.datasets import load_mnist, standardize, to_float
from xpcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpcnn.losses import SoftmaxCrossEntropy
from xpcnn.model import Sequential


def mnist_subsets():
    """Standardised float32 subsets of the bundled MNIST: 3000 train, 1000 test (stats from the train part)."""
    ds = load_mnist(progress=False)
    x_train, mean, std = standardize(to_float(ds.x_train[:3000]))
    x_test, _, _ = standardize(to_float(ds.x_test[:1000]), mean, std)
    return x_train, ds.y_train[:3000].astype(np.int64), x_test, ds.y_test[:1000].astype(np.int64)


def small_subset(mnist):
    """256 training and 128 validation images: enough for the tiny model's exact-equality tests."""
    x_train, y_train, x_test, y_test = mnist
    return x_train[:256], y_train[:256], x_test[:128], y_test[:128]


def tiny(seed: int = 0, dropout: bool = True) -> Sequential:
    """A small CNN; one Dropout on the global host RNG and one with its own generator."""
    layers = [Conv2D(1, 4, 3, rng=seed), ReLU(), MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(0.2))
    layers += [Dense(4 * 13 * 13, 16, rng=seed + 1), ReLU()]
    if dropout:
        layers.append(Dropout(0.1, rng=seed + 2))
    layers.append(Dense(16, 10, rng=seed + 3))
    return Sequential(*layers)


def weights(model) -> dict[str, np.ndarray]:
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def assert_weights_equal(a, b) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def records(history) -> list[dict[str, float]]:
    """History entries without the wall-clock time (the only field allowed to differ between runs)."""
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history.epochs]


class RecordingLoss(SoftmaxCrossEntropy):
    """Cross-entropy that remembers every batch loss and batch size it computed."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []
        self.sizes: list[int] = []

    def forward(self, logits, labels):
        loss = super().forward(logits, labels)
        self.values.append(float(loss))
        self.sizes.append(int(labels.shape[0]))
        return loss


def quiet(**kwargs):
    return {"progress": False, "log": None, **kwargs}
