"""MNIST / Fashion-MNIST loading, lookup order and downloads (loopback only).

Preprocessing is tested in test_preprocess.py, BatchIterator in test_loader.py,
the generic cache/checksum/download pieces in test_sources.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data_helpers import Mirror, isolate_data_env

from xpcnn.datasets import (
    DatasetError,
    DatasetNotFoundError,
    dataset_files,
    encode_idx,
    load_fashion_mnist,
    load_mnist,
    sha256_decompressed,
    write_idx,
)
from xpcnn.datasets import mnist as M
from xpcnn.datasets import sources as S

SHARED = Path("/work/shared/data")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
PACKAGE_DIR = Path(M.__file__).resolve().parent / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test sees the user's env or cache, or reaches a real mirror."""
    isolate_data_env(monkeypatch, tmp_path)
    monkeypatch.setattr(M, "MNIST_MIRRORS", ())
    monkeypatch.setattr(M, "FASHION_MNIST_MIRRORS", ())


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(download=False, progress=False)  # the packaged copy, SHA-256 verified


def test_mnist_is_found_in_the_package():
    """The vendored copy is found first (and the ``mnist`` fixture verified its SHA-256)."""
    files = dataset_files("mnist", download=False)
    assert set(files) == set(M.FILES)
    assert all(p == PACKAGE_DIR / name for name, p in files.items())


def test_mnist_shapes_dtypes_and_label_counts(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in mnist)
    assert np.bincount(y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert x_train.max() == 255 and x_train.min() == 0
    assert 30 < x_train.mean() < 36  # MNIST's mean pixel is 33.3


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="no Fashion-MNIST copy at /work/shared/data")
def test_fashion_mnist_from_explicit_path(mnist):
    ds = load_fashion_mnist(SHARED / "fashion-mnist", download=False)
    assert [a.shape for a in ds] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert all(a.dtype == np.uint8 for a in ds)
    assert np.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert not np.array_equal(ds.x_test, mnist.x_test)
    # An explicit data root with a fashion-mnist/ subdirectory works too.
    files = dataset_files("fashion-mnist", SHARED, download=False)
    assert all(p.parent == SHARED / "fashion-mnist" for p in files.values())


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="no Fashion-MNIST copy at /work/shared/data")
def test_fashion_files_fail_mnist_verification():
    with pytest.raises(DatasetError) as info:
        load_mnist(SHARED / "fashion-mnist")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "SHA-256" in msg
    assert M.MNIST_SHA256[M.TRAIN_IMAGES] in msg and M.FASHION_MNIST_SHA256[M.TRAIN_IMAGES] in msg


# --------------------------------------------------------------------------- synthetic data sets


def make_dataset(directory: Path, tag: int, n_train: int = 6, n_test: int = 4, *, gz: bool = True) -> dict:
    """Four small MNIST-format files whose labels are all ``tag``; returns their digests."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(tag)
    arrays = {
        M.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        M.TRAIN_LABELS: np.full(n_train, tag, dtype=np.uint8),
        M.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        M.TEST_LABELS: np.full(n_test, tag, dtype=np.uint8),
    }
    digests = {}
    for fname, a in arrays.items():
        write_idx(directory / (fname if gz else fname.removesuffix(".gz")), a)
        digests[fname] = hashlib.sha256(encode_idx(a)).hexdigest()
    return digests


def tag_of(ds) -> int:
    assert len(set(ds.y_train.tolist()) | set(ds.y_test.tolist())) == 1
    return int(ds.y_train[0])


def test_synthetic_load_verifies_against_digest_table(tmp_path, monkeypatch):
    digests = make_dataset(tmp_path / "d", tag=3)
    monkeypatch.setattr(M, "MNIST_SHA256", digests)
    ds = load_mnist(tmp_path / "d")
    assert tag_of(ds) == 3 and ds.x_train.shape == (6, 28, 28)
    monkeypatch.setattr(M, "MNIST_SHA256", {**digests, M.TEST_LABELS: "ab" * 32})
    with pytest.raises(DatasetError, match=f"t10k-labels-idx1-ubyte.gz: SHA-256 .*expected {'ab' * 32}"):
        load_mnist(tmp_path / "d")
    assert tag_of(load_mnist(tmp_path / "d", verify=False)) == 3


def test_decompressed_files_are_accepted(tmp_path, monkeypatch):
    digests = make_dataset(tmp_path / "raw", tag=4, gz=False)
    monkeypatch.setattr(M, "MNIST_SHA256", digests)  # same digests: they are of the decompressed bytes
    assert tag_of(load_mnist(tmp_path / "raw")) == 4


def test_label_range_is_checked(tmp_path):
    make_dataset(tmp_path, tag=1)
    write_idx(tmp_path / M.TEST_LABELS, np.array([1, 2, 10, 3], dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz: labels must be in 0\.\.9, found 10 at index 2"):
        load_mnist(tmp_path, verify=False)


def test_image_and_label_counts_must_agree(tmp_path):
    make_dataset(tmp_path, tag=1)
    write_idx(tmp_path / M.TRAIN_LABELS, np.zeros(5, dtype=np.uint8))
    with pytest.raises(DatasetError, match="has 6 images but .*train-labels-idx1-ubyte.gz has 5 labels"):
        load_mnist(tmp_path, verify=False)


def test_image_shape_and_dtype_are_checked(tmp_path):
    make_dataset(tmp_path, tag=1)
    write_idx(tmp_path / M.TEST_IMAGES, np.zeros((4, 28, 27), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: expected uint8 images of shape \(N, 28, 28\)"):
        load_mnist(tmp_path, verify=False)
    write_idx(tmp_path / M.TEST_IMAGES, np.zeros((4, 28, 28), dtype=np.int16))
    with pytest.raises(DatasetError, match="int16"):
        load_mnist(tmp_path, verify=False)


def test_explicit_path_missing_a_file_lists_places(tmp_path):
    make_dataset(tmp_path / "d", tag=1)
    (tmp_path / "d" / M.TRAIN_LABELS).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path / "d")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DatasetError)
    msg = str(info.value)
    assert str(tmp_path / "d") in msg and str(tmp_path / "d" / "mnist") in msg
    assert "missing train-labels-idx1-ubyte.gz" in msg and "t10k" not in msg.split("\n")[1]


def test_explicit_path_is_the_only_place_searched(tmp_path, monkeypatch):
    make_dataset(tmp_path / "env" / "mnist", tag=2)
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path / "empty", verify=False)


def test_nothing_found_without_download_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "PACKAGED_DIRS", {"mnist": (tmp_path / "pkg",)})
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "env"))
    make_dataset(tmp_path / "xdg-cache" / "xpcnn" / "mnist", tag=1)
    (tmp_path / "xdg-cache" / "xpcnn" / "mnist" / M.TEST_IMAGES).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(download=False)
    msg = str(info.value)
    assert f"$XPCNN_DATA {tmp_path / 'env' / 'mnist'}: does not exist" in msg
    assert f"packaged copy {tmp_path / 'pkg'}" in msg
    assert f"cache {tmp_path / 'xdg-cache' / 'xpcnn' / 'mnist'}: missing t10k-images-idx3-ubyte.gz" in msg
    assert "download=True" in msg


# --------------------------------------------------------------------------- a loopback mirror


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


@pytest.fixture
def remote(tmp_path, monkeypatch, mirror):
    """A good synthetic MNIST served at ``good/``, digests patched in; no packaged copy."""
    digests = make_dataset(tmp_path / "remote", tag=7)
    monkeypatch.setattr(M, "MNIST_SHA256", digests)
    monkeypatch.setattr(M, "PACKAGED_DIRS", {})
    good = mirror.serve_dir("good", tmp_path / "remote")
    return good, tmp_path / "xdg-cache" / "xpcnn" / "mnist"


def test_download_into_cache_then_reuse(remote, mirror, monkeypatch, capsys):
    good, cache = remote
    monkeypatch.setattr(M, "MNIST_MIRRORS", (good,))
    ds = load_mnist()
    assert tag_of(ds) == 7
    assert sorted(p.name for p in cache.iterdir()) == sorted(M.FILES)  # no .part files left
    assert sorted(mirror.hits) == sorted(f"/good/{f}" for f in M.FILES)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err  # the progress bar
    assert tag_of(load_mnist()) == 7
    assert len(mirror.hits) == 4  # served from the cache the second time


def test_only_missing_files_are_downloaded(remote, mirror, monkeypatch, tmp_path):
    good, cache = remote
    monkeypatch.setattr(M, "MNIST_MIRRORS", (good,))
    cache.mkdir(parents=True)
    for fname in (M.TRAIN_IMAGES, M.TEST_IMAGES, M.TEST_LABELS):
        (cache / fname).write_bytes((tmp_path / "remote" / fname).read_bytes())
    assert tag_of(load_mnist(progress=False)) == 7
    assert mirror.hits == [f"/good/{M.TRAIN_LABELS}"]


def test_corrupt_mirror_is_rejected_and_next_is_tried(remote, mirror, monkeypatch, tmp_path):
    good, cache = remote
    make_dataset(tmp_path / "evil", tag=5)  # well-formed files with the wrong contents
    bad = mirror.serve_dir("bad", tmp_path / "evil")
    monkeypatch.setattr(M, "MNIST_MIRRORS", (bad, f"{mirror.url}/missing/", good))
    with pytest.warns(UserWarning) as record:
        ds = load_mnist(progress=False)
    assert tag_of(ds) == 7
    messages = [str(w.message) for w in record]
    evil_digest = sha256_decompressed(tmp_path / "evil" / M.TRAIN_IMAGES)
    assert any(
        f"{bad}{M.TRAIN_IMAGES}" in m and "SHA-256 mismatch" in m
        and f"expected {M.MNIST_SHA256[M.TRAIN_IMAGES]}" in m and f"got {evil_digest}" in m
        for m in messages
    ), messages
    assert any(f"/missing/{M.TRAIN_IMAGES}" in m and "404" in m for m in messages), messages
    assert sorted(p.name for p in cache.iterdir()) == sorted(M.FILES)
    assert all(sha256_decompressed(cache / f) == M.MNIST_SHA256[f] for f in M.FILES)


def test_only_corrupt_mirrors_fail_with_checksum_error(remote, mirror, monkeypatch, tmp_path):
    _, cache = remote
    make_dataset(tmp_path / "evil", tag=5)
    bad = mirror.serve_dir("bad", tmp_path / "evil")
    data = (tmp_path / "evil" / M.TRAIN_IMAGES).read_bytes()
    mirror.routes[f"/trunc/{M.TRAIN_IMAGES}"] = data[: len(data) // 2]  # a truncated gzip stream
    monkeypatch.setattr(M, "MNIST_MIRRORS", (bad, f"{mirror.url}/trunc/"))
    with pytest.warns(UserWarning), pytest.raises(DatasetError) as info:
        load_mnist(progress=False)
    msg = str(info.value)
    assert f"could not download {M.TRAIN_IMAGES}" in msg
    assert f"expected {M.MNIST_SHA256[M.TRAIN_IMAGES]}" in msg
    assert f"got {sha256_decompressed(tmp_path / 'evil' / M.TRAIN_IMAGES)}" in msg
    assert f"{mirror.url}/trunc/{M.TRAIN_IMAGES}: " in msg and "gzip" in msg
    assert list(cache.iterdir()) == []  # nothing bad (and no temp file) lands in the cache


def test_lookup_order(tmp_path, monkeypatch, mirror):
    """explicit path > $XPCNN_DATA > packaged > cache > download (verify off: sources differ)."""
    make_dataset(tmp_path / "explicit", tag=1)
    make_dataset(tmp_path / "root" / "mnist", tag=2)
    make_dataset(tmp_path / "pkg", tag=3)
    make_dataset(tmp_path / "xdg-cache" / "xpcnn" / "mnist", tag=4)
    monkeypatch.setattr(M, "MNIST_SHA256", make_dataset(tmp_path / "remote", tag=5))
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "root"))
    monkeypatch.setattr(M, "PACKAGED_DIRS", {"mnist": (tmp_path / "pkg",)})
    monkeypatch.setattr(M, "MNIST_MIRRORS", (mirror.serve_dir("m", tmp_path / "remote"),))

    def load(**kw):
        return tag_of(load_mnist(verify=False, progress=False, **kw))

    assert load(path=tmp_path / "explicit") == 1
    assert load() == 2
    (tmp_path / "root" / "mnist" / M.TEST_LABELS).unlink()  # an incomplete directory is skipped
    assert load() == 3
    monkeypatch.setattr(M, "PACKAGED_DIRS", {})
    assert load() == 4
    assert mirror.hits == []
    for f in M.FILES:
        (tmp_path / "xdg-cache" / "xpcnn" / "mnist" / f).unlink()
    assert load() == 5
    assert len(mirror.hits) == 4


def test_fashion_lookup_order(tmp_path, monkeypatch):
    """$XPCNN_DATA/fashion-mnist > system package dir > cache; the MNIST copy is never used."""
    make_dataset(tmp_path / "root" / "fashion-mnist", tag=2)
    make_dataset(tmp_path / "root" / "mnist", tag=9)
    make_dataset(tmp_path / "usr-share", tag=3)
    make_dataset(tmp_path / "xdg-cache" / "xpcnn" / "fashion-mnist", tag=4)
    monkeypatch.setattr(M, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "usr-share",)})
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "root"))
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 2
    monkeypatch.delenv(S.DATA_ENV_VAR)
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 3
    monkeypatch.setattr(M, "SYSTEM_DIRS", {})
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 4


# --------------------------------------------------------------------------- docstring examples


@pytest.mark.parametrize("module", ["__init__", "arrays", "augment", "cifar10", "idx", "loader", "mnist", "preprocess",
                                    "sources"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module("xpcnn.datasets" if module == "__init__" else f"xpcnn.datasets.{module}")
    result = doctest.testmod(mod)
    assert result.failed == 0
