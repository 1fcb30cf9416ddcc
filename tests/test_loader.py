"""BatchIterator: batches on every backend lane, shuffling, resume, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn.datasets import BatchIterator, load_mnist, to_float

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(download=False, progress=False)  # the packaged copy


def _data(n=23):
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    return x, np.arange(n)


def _epoch(it):
    """One epoch as host arrays: the list of label batches (each checked against its x)."""
    out = []
    for xb, yb in it:
        xh, yh = B.to_numpy(xb), B.to_numpy(yb)
        np.testing.assert_array_equal(xh[:, 0, 0, 0], yh)  # x and y stay paired
        out.append(yh.copy())
    return out


def test_batches_on_backend_with_dtypes(backend):
    x, y = _data()
    it = BatchIterator(x, y, batch_size=5, rng=0)
    assert len(it) == 5
    sizes = []
    for xb, yb in it:
        assert B.backend_name(xb) == backend.name and B.backend_name(yb) == backend.name
        assert xb.dtype == B.dtype("float32", backend.xp) and yb.dtype == B.dtype("int64", backend.xp)
        assert tuple(xb.shape)[1:] == (1, 2, 2)
        sizes.append(int(xb.shape[0]))
    assert sizes == [5, 5, 5, 5, 3]
    kept = next(iter(BatchIterator(x, y, 4, rng=0, x_dtype=None, on_device=True)))[0]
    assert kept.dtype == B.dtype("uint8", backend.xp)


def test_every_sample_once_per_epoch_and_epochs_differ(backend):
    x, y = _data()
    it = BatchIterator(x, y, batch_size=4, rng=1)
    e1, e2 = np.concatenate(_epoch(it)), np.concatenate(_epoch(it))
    assert sorted(e1.tolist()) == list(range(23)) and sorted(e2.tolist()) == list(range(23))
    assert not np.array_equal(e1, e2)
    assert it.epoch == 2
    # the order is the host generator's: the same permutation on every backend
    g = np.random.default_rng(1)
    np.testing.assert_array_equal(e1, g.permutation(23))
    np.testing.assert_array_equal(e2, g.permutation(23))


def test_same_seed_same_batches():
    x, y = _data()
    a, b = BatchIterator(x, y, 4, rng=7), BatchIterator(x, y, 4, rng=7)
    for _ in range(2):
        assert [t.tolist() for t in _epoch(a)] == [t.tolist() for t in _epoch(b)]
    c = BatchIterator(x, y, 4, rng=8)
    assert [t.tolist() for t in _epoch(c)] != [t.tolist() for t in _epoch(BatchIterator(x, y, 4, rng=7))]


def test_no_shuffle_and_drop_last():
    x, y = _data(10)
    it = BatchIterator(x, y, 4, shuffle=False)
    assert len(it) == 3 and [t.tolist() for t in _epoch(it)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    it = BatchIterator(x, y, 4, shuffle=False, drop_last=True)
    assert len(it) == 2 and [t.tolist() for t in _epoch(it)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    it = BatchIterator(x, y, 4, rng=0, drop_last=True)
    batches = _epoch(it)
    assert [len(b) for b in batches] == [4, 4] and len(set(np.concatenate(batches).tolist())) == 8
    assert len(BatchIterator(x, y, 11, drop_last=True)) == 0 and len(BatchIterator(x, y, 11)) == 1


def test_on_device_equals_host_path(backend):
    x, y = _data()
    host = BatchIterator(x, y, 6, rng=3)
    dev = BatchIterator(x, y, 6, rng=3, on_device=True)
    for _ in range(2):
        for (hx, hy), (dx, dy) in zip(host, dev, strict=True):
            assert dx.dtype == hx.dtype and dy.dtype == hy.dtype
            assert B.backend_name(dx) == backend.name
            np.testing.assert_array_equal(B.to_numpy(dx), B.to_numpy(hx))
            np.testing.assert_array_equal(B.to_numpy(dy), B.to_numpy(hy))


def test_backend_is_fixed_at_construction():
    pytest.importorskip("array_api_strict", reason="array_api_strict (in the [test] extra) is not installed")
    x, y = _data()
    with B.using("numpy"):
        it = BatchIterator(x, y, 4, rng=0)
    with B.using("array_api_strict"):
        xb, _ = next(iter(it))
    assert isinstance(xb, np.ndarray)
    with B.using("numpy"):
        it = BatchIterator(x, y, 4, rng=0, backend="array_api_strict")
    assert B.backend_name(next(iter(it))[0]) == "array_api_strict"


def test_explicit_torch_backend():
    """Needs PyTorch (issue 9 item 1: the README's test command runs without it)."""
    pytest.importorskip("torch", reason="the torch backend needs PyTorch, which is not installed")
    x, y = _data()
    it = BatchIterator(x, y, 4, rng=0, backend="torch")
    assert B.backend_name(next(iter(it))[0]) == "torch"


def test_state_dict_resume_through_json():
    x, y = _data()
    run = BatchIterator(x, y, 5, rng=11)
    _epoch(run)
    saved = json.loads(json.dumps(run.state_dict()))
    expected = [_epoch(run) for _ in range(2)]
    resumed = BatchIterator(x, y, 5, rng=0)
    resumed.load_state_dict(saved)
    assert resumed.epoch == 1
    got = [_epoch(resumed) for _ in range(2)]
    assert [[b.tolist() for b in e] for e in got] == [[b.tolist() for b in e] for e in expected]


def test_validation_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="23 and 22"):
        BatchIterator(x, y[:-1], 4)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="batch_size"):
            BatchIterator(x, y, bad)
    with pytest.raises(ValueError, match="empty"):
        BatchIterator(x[:0], y[:0], 4)
    with pytest.raises(ValueError, match="leading sample axis"):
        BatchIterator(np.float32(1.0), y, 4)


def test_real_mnist_batches(mnist):
    it = BatchIterator(to_float(mnist.x_test), mnist.y_test, 1000, rng=0, on_device=True)
    labels = np.concatenate([B.to_numpy(yb) for _, yb in it])
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
