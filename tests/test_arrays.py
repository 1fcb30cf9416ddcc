"""The user's own arrays: from_arrays / load_arrays (.npz, no pickle), every check, and training from a script."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest

from xpcnn.datasets import (
    ARRAY_KEYS,
    DatasetError,
    DatasetNotFoundError,
    count_classes,
    from_arrays,
    load_arrays,
)
from xpcnn.datasets import arrays as A


def _arrays(n_train=6, n_test=4, shape=(3, 5, 7), dtype=np.uint8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        x_tr = rng.integers(0, 256, (n_train, *shape), dtype=np.uint8)
        x_te = rng.integers(0, 256, (n_test, *shape), dtype=np.uint8)
    else:
        x_tr = rng.standard_normal((n_train, *shape)).astype(dtype)
        x_te = rng.standard_normal((n_test, *shape)).astype(dtype)
    return {"x_train": x_tr, "y_train": rng.integers(0, classes, n_train).astype(np.uint8),
            "x_test": x_te, "y_test": rng.integers(0, classes, n_test).astype(np.int32)}


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.float16])
def test_npz_round_trip_nchw(tmp_path, dtype):
    arrays = _arrays(dtype=dtype)
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_arrays(tmp_path / "d.npz")
    for key, got in zip(ARRAY_KEYS, ds):
        want = arrays[key]
        np.testing.assert_array_equal(got, want)
    assert ds.x_train.dtype == dtype and ds.x_test.dtype == dtype
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.shape == (6, 3, 5, 7) and ds.x_test.shape == (4, 3, 5, 7)


def test_nhw_becomes_n1hw_and_compressed_files_work(tmp_path):
    arrays = _arrays(shape=(8, 9))
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    ds = load_arrays(tmp_path / "d.npz")
    assert ds.x_train.shape == (6, 1, 8, 9) and ds.x_test.shape == (4, 1, 8, 9)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_count_classes_and_num_classes():
    arrays = _arrays()
    arrays["y_train"][:] = [0, 1, 2, 0, 1, 2]
    arrays["y_test"][:] = [0, 4, 1, 1]
    ds = from_arrays(*(arrays[k] for k in ARRAY_KEYS))
    assert count_classes(ds) == 5
    assert count_classes(from_arrays(*(arrays[k] for k in ARRAY_KEYS), num_classes=5)) == 5
    with pytest.raises(DatasetError, match=r"y_test: labels must be in 0\.\.3, found 4 at index 1"):
        from_arrays(*(arrays[k] for k in ARRAY_KEYS), num_classes=4)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
            from_arrays(*(arrays[k] for k in ARRAY_KEYS), num_classes=bad)


def _with(**changes):
    arrays = _arrays()
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize("arrays,message", [
    (_with(x_train=np.zeros((6, 3, 5, 7), np.int16)), "x_train: expected uint8 or floating images, got dtype int16"),
    (_with(x_test=np.zeros((4, 3, 5, 7), bool)), "x_test: expected uint8 or floating images, got dtype bool"),
    (_with(x_train=np.zeros((6, 35), np.uint8)),
     r"x_train: expected images of shape \(N, C, H, W\) or \(N, H, W\), got shape \(6, 35\)"),
    (_with(x_train=np.zeros((6, 1, 3, 5, 7), np.uint8)), r"got shape \(6, 1, 3, 5, 7\)"),
    (_with(x_train=np.zeros((0, 3, 5, 7), np.uint8), y_train=np.zeros(0, np.int64)),
     r"x_train: expected at least one image with non-empty \(C, H, W\), got shape \(0, 3, 5, 7\)"),
    (_with(x_test=np.zeros((4, 3, 5, 6), np.uint8)),
     r"x_train and x_test must have the same \(C, H, W\), got \(3, 5, 7\) and \(3, 5, 6\)"),
    (_with(x_test=np.zeros((4, 3, 5, 7), np.float32)),
     "x_train is uint8 but x_test is float32: both must be uint8 .0..255. or both floating"),
    (_with(y_train=np.array([0, 1, 2.7, 0, 1, 2])), "y_train: expected integer class labels, got dtype float64"),
    (_with(y_train=np.zeros((6, 1), np.int64)), r"y_train: expected labels of shape \(N,\), got shape \(6, 1\)"),
    (_with(y_test=np.zeros(5, np.int64)), "x_test has 4 images but y_test has 5 labels"),
    (_with(y_test=np.array([0, 1, -3, 2])), "y_test: labels must be >= 0, found -3 at index 2"),
])
def test_bad_arrays_are_named(arrays, message, tmp_path):
    with pytest.raises(DatasetError, match=message):
        from_arrays(*(arrays[k] for k in ARRAY_KEYS))
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=f"^{re.escape(str(tmp_path / 'd.npz'))}: .*{message}"):
        load_arrays(tmp_path / "d.npz")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(value):
    arrays = _arrays(dtype=np.float32)
    arrays["x_test"][2, 1, 3, 4] = value
    arrays["x_test"][3, 0, 0, 0] = value
    with pytest.raises(DatasetError, match=r"x_test: expected finite values, found 2 NaN or infinite "
                                           r"\(the first at index \(2, 1, 3, 4\)\)"):
        from_arrays(*(arrays[k] for k in ARRAY_KEYS))


def test_npz_keys(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "missing.npz", x_train=arrays["x_train"], y_train=arrays["y_train"], x_val=arrays["x_test"])
    with pytest.raises(DatasetError, match="expected exactly the keys x_train, y_train, x_test, y_test; "
                                           "missing x_test, y_test; unexpected x_val"):
        load_arrays(tmp_path / "missing.npz")
    np.savez(tmp_path / "extra.npz", **arrays, classes=np.arange(4))
    with pytest.raises(DatasetError, match="; unexpected classes$"):
        load_arrays(tmp_path / "extra.npz")


def test_no_pickle_and_unreadable_files(tmp_path):
    arrays = _arrays()
    arrays["y_test"] = np.array([0, 1, "x", None], dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)  # object arrays are stored pickled
    with pytest.raises(DatasetError, match="y_test cannot be read without pickle .*only numeric arrays are accepted"):
        load_arrays(tmp_path / "obj.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 3)))
    with pytest.raises(DatasetError, match=r"expected an \.npz archive with keys .*, "
                                           r"got a single array of shape \(2, 3\)"):
        load_arrays(tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    with pytest.raises(DatasetError, match=r"junk\.npz: not a readable \.npz file"):
        load_arrays(tmp_path / "junk.npz")
    with pytest.raises(DatasetNotFoundError, match="nope.npz: no such file"):
        load_arrays(tmp_path / "nope.npz")
    with pytest.raises(DatasetNotFoundError):
        load_arrays(tmp_path)  # a directory is not a file


def test_the_script_example_runs():
    """The module docstring's example: validate arrays, standardise, fit and evaluate a model."""
    result = doctest.testmod(A, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0
