"""MNIST / Fashion-MNIST loading, lookup order, downloads (loopback only), helpers, BatchIterator."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn.datasets import (
    BatchIterator,
    DatasetError,
    DatasetNotFoundError,
    dataset_files,
    encode_idx,
    load_fashion_mnist,
    load_mnist,
    sha256_decompressed,
    standardize,
    to_float,
    train_val_split,
    write_idx,
)
from xpcnn.datasets import mnist as M

SHARED = Path("/work/shared/data")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
PACKAGE_DIR = Path(M.__file__).resolve().parent / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No test sees the user's env or cache, or reaches a real mirror."""
    monkeypatch.delenv(M.DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(M, "MNIST_MIRRORS", ())
    monkeypatch.setattr(M, "FASHION_MNIST_MIRRORS", ())
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


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
    monkeypatch.setenv(M.DATA_ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path / "empty", verify=False)


def test_nothing_found_without_download_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "PACKAGED_DIRS", {"mnist": (tmp_path / "pkg",)})
    monkeypatch.setenv(M.DATA_ENV_VAR, str(tmp_path / "env"))
    make_dataset(tmp_path / "xdg-cache" / "xpcnn" / "mnist", tag=1)
    (tmp_path / "xdg-cache" / "xpcnn" / "mnist" / M.TEST_IMAGES).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(download=False)
    msg = str(info.value)
    assert f"$XPCNN_DATA {tmp_path / 'env' / 'mnist'}: does not exist" in msg
    assert f"packaged copy {tmp_path / 'pkg'}" in msg
    assert f"cache {tmp_path / 'xdg-cache' / 'xpcnn' / 'mnist'}: missing t10k-images-idx3-ubyte.gz" in msg
    assert "download=True" in msg


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    assert M.cache_dir() == tmp_path / "xdg-cache" / "xpcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert M.cache_dir() == tmp_path / "home" / ".cache" / "xpcnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert M.cache_dir() == tmp_path / "home" / ".cache" / "xpcnn"


# --------------------------------------------------------------------------- a loopback mirror


class Mirror:
    """A tiny HTTP server on 127.0.0.1 serving ``routes[path] -> bytes``; records the paths hit."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.hits: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.hits.append(self.path)
                body = mirror.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve_dir(self, prefix: str, directory: Path) -> str:
        for p in directory.iterdir():
            self.routes[f"/{prefix}/{p.name}"] = p.read_bytes()
        return f"{self.url}/{prefix}/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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
    monkeypatch.setenv(M.DATA_ENV_VAR, str(tmp_path / "root"))
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
    monkeypatch.setenv(M.DATA_ENV_VAR, str(tmp_path / "root"))
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 2
    monkeypatch.delenv(M.DATA_ENV_VAR)
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 3
    monkeypatch.setattr(M, "SYSTEM_DIRS", {})
    assert tag_of(load_fashion_mnist(verify=False, download=False)) == 4


# --------------------------------------------------------------------------- host-side helpers


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


# --------------------------------------------------------------------------- BatchIterator


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
    x, y = _data()
    with B.using("numpy"):
        it = BatchIterator(x, y, 4, rng=0)
    with B.using("array_api_strict"):
        xb, _ = next(iter(it))
    assert isinstance(xb, np.ndarray)
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
