"""CIFAR-10 binary release: small files written in the exact format, decoded independently, every failure mode."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import Mirror, isolate_data_env

from xpcnn.datasets import CIFAR10_CLASSES, DatasetError, DatasetNotFoundError, load_cifar10
from xpcnn.datasets import cifar10 as C
from xpcnn.datasets import sources as S

N = 3  # records per batch in the test files
NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
META_TEXT = "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
META_TEXT += "\n\n"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_data_env(monkeypatch, tmp_path)
    monkeypatch.setattr(C, "CIFAR10_MIRRORS", ())


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


# --------------------------------------------------------------------------- writing the format, decoding it by hand


def make_batches(seed: int, records: int = N, labels: dict | None = None) -> dict[str, bytes]:
    """The six batch files' bytes: per record a label byte, then R, G, B planes of 32x32, row-major."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in NAMES:
        blob = bytearray()
        for r in range(records):
            img = rng.integers(0, 256, (3, 32, 32))
            label = (labels or {}).get((name, r), int(rng.integers(0, 10)))
            blob.append(label)
            blob.extend(int(img[c, i, j]) for c in range(3) for i in range(32) for j in range(32))
        out[name] = bytes(blob)
    return out


def decode_by_hand(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """An independent decoder: byte ``k * 3073 + 1 + c * 1024 + i * 32 + j`` is pixel (c, i, j) of record k."""
    n = len(blob) // 3073
    x = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    y = np.zeros(n, dtype=np.uint8)
    for k in range(n):
        y[k] = blob[k * 3073]
        for c in range(3):
            for i in range(32):
                for j in range(32):
                    x[k, c, i, j] = blob[k * 3073 + 1 + c * 1024 + i * 32 + j]
    return x, y


def expected_dataset(batches: dict[str, bytes]):
    train = [decode_by_hand(batches[n]) for n in NAMES[:5]]
    x_test, y_test = decode_by_hand(batches["test_batch.bin"])
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), x_test, y_test


def write_archive(path: Path, batches: dict[str, bytes], *, meta: str | None = META_TEXT, prefix: str = "",
                  skip: tuple[str, ...] = ()) -> str:
    """A ``cifar-10-binary.tar.gz`` laid out like the official one; returns its MD5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo(f"{prefix}cifar-10-batches-bin")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        members = dict(batches)
        if meta is not None:
            members["batches.meta.txt"] = meta.encode()
        for name, data in members.items():
            if name in skip:
                continue
            info = tarfile.TarInfo(f"{prefix}cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_directory(directory: Path, batches: dict[str, bytes], meta: str | None = META_TEXT) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in batches.items():
        (directory / name).write_bytes(data)
    if meta is not None:
        (directory / "batches.meta.txt").write_text(meta)
    return directory


def assert_dataset(ds, batches):
    x_train, y_train, x_test, y_test = expected_dataset(batches)
    assert ds.x_train.shape == (5 * N, 3, 32, 32) and ds.x_test.shape == (N, 3, 32, 32)
    assert ds.y_train.shape == (5 * N,) and ds.y_test.shape == (N,)
    assert all(a.dtype == np.uint8 for a in ds)
    for got, want in zip(ds, (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(got, want)


def tag_of(ds) -> int:
    return int(ds.x_test[0, 0, 0, 0]) * 1000 + int(ds.x_test[0, 2, 31, 31])


# --------------------------------------------------------------------------- round trips


def test_archive_round_trip_with_md5(tmp_path, monkeypatch):
    batches = make_batches(0)
    md5 = write_archive(tmp_path / C.ARCHIVE, batches)
    monkeypatch.setattr(C, "CIFAR10_MD5", md5)
    assert_dataset(load_cifar10(tmp_path / C.ARCHIVE, records_per_batch=N), batches)
    assert_dataset(load_cifar10(tmp_path, records_per_batch=N), batches)  # the directory holding the archive


def test_layout_is_channel_major_rgb(tmp_path):
    """One record written pixel by pixel: red plane first, rows of 32, then green, then blue."""
    blob = bytearray([7])
    blob += bytes((c * 100 + i + j) % 256 for c in range(3) for i in range(32) for j in range(32))
    batches = {n: bytes(blob) for n in NAMES}
    write_directory(tmp_path / "b", batches)
    ds = load_cifar10(tmp_path / "b", records_per_batch=1)
    assert ds.y_test.tolist() == [7] and ds.y_train.tolist() == [7] * 5
    assert ds.x_test[0, 0, 0, 0] == 0 and ds.x_test[0, 1, 0, 0] == 100 and ds.x_test[0, 2, 0, 0] == 200
    assert ds.x_test[0, 0, 2, 5] == 7 and ds.x_test[0, 2, 31, 30] == (200 + 61) % 256


def test_official_md5_and_size_are_the_defaults(tmp_path):
    """Small test files fail the published MD5 and the official 30730000-byte size unless told otherwise."""
    assert C.CIFAR10_MD5 == "c32a1d4ab5d03f1284b67883e8d87530" and C.RECORDS_PER_BATCH * C.RECORD_BYTES == 30730000
    md5 = write_archive(tmp_path / C.ARCHIVE, make_batches(1))
    with pytest.raises(DatasetError, match=f"MD5 mismatch: expected c32a1d4ab5d03f1284b67883e8d87530, got {md5}"):
        load_cifar10(tmp_path / C.ARCHIVE, records_per_batch=N)
    with pytest.raises(DatasetError, match="member cifar-10-batches-bin/data_batch_1.bin has 9219 bytes; "
                                           r"expected 30730000 \(10000 records of 3073 bytes"):
        load_cifar10(tmp_path / C.ARCHIVE, verify=False)
    write_directory(tmp_path / "d", make_batches(1))
    with pytest.raises(DatasetError, match=r"data_batch_1.bin has 9219 bytes; expected 30730000"):
        load_cifar10(tmp_path / "d")


def test_extracted_directory_in_every_spelling(tmp_path):
    batches = make_batches(2)
    write_directory(tmp_path / "x" / "cifar-10-batches-bin", batches)
    for path in (tmp_path / "x" / "cifar-10-batches-bin", tmp_path / "x"):
        assert_dataset(load_cifar10(path, records_per_batch=N), batches)
    write_directory(tmp_path / "root" / "cifar-10", batches, meta=None)  # a data root; meta is optional
    assert_dataset(load_cifar10(tmp_path / "root", records_per_batch=N), batches)


def test_archive_preferred_over_extracted_batches(tmp_path, monkeypatch):
    archived, extracted = make_batches(3), make_batches(4)
    monkeypatch.setattr(C, "CIFAR10_MD5", write_archive(tmp_path / C.ARCHIVE, archived))
    write_directory(tmp_path / "cifar-10-batches-bin", extracted)
    assert_dataset(load_cifar10(tmp_path, records_per_batch=N), archived)


def test_dot_slash_member_names(tmp_path):
    batches = make_batches(5)
    write_archive(tmp_path / C.ARCHIVE, batches, prefix="./")
    assert_dataset(load_cifar10(tmp_path / C.ARCHIVE, verify=False, records_per_batch=N), batches)


# --------------------------------------------------------------------------- broken files


def test_one_wrong_size_is_named(tmp_path):
    batches = make_batches(6)
    batches["data_batch_4.bin"] = batches["data_batch_4.bin"][:-1]
    write_archive(tmp_path / C.ARCHIVE, batches)
    with pytest.raises(DatasetError, match=r"member cifar-10-batches-bin/data_batch_4.bin has 9218 bytes; "
                                           r"expected 9219 \(3 records of 3073 bytes"):
        load_cifar10(tmp_path / C.ARCHIVE, verify=False, records_per_batch=N)
    write_directory(tmp_path / "d", batches)
    with pytest.raises(DatasetError, match=r"d/data_batch_4.bin has 9218 bytes; expected 9219"):
        load_cifar10(tmp_path / "d", records_per_batch=N)


def test_label_out_of_range(tmp_path):
    batches = make_batches(7, labels={("test_batch.bin", 2): 10})
    write_archive(tmp_path / C.ARCHIVE, batches)
    with pytest.raises(DatasetError, match=r"member cifar-10-batches-bin/test_batch.bin: labels must be in 0\.\.9, "
                                           r"found 10 in record 2"):
        load_cifar10(tmp_path / C.ARCHIVE, verify=False, records_per_batch=N)
    write_directory(tmp_path / "d", make_batches(7, labels={("data_batch_2.bin", 0): 255}))
    with pytest.raises(DatasetError, match=r"data_batch_2.bin: labels must be in 0\.\.9, found 255 in record 0"):
        load_cifar10(tmp_path / "d", records_per_batch=N)


def test_missing_members(tmp_path):
    write_archive(tmp_path / C.ARCHIVE, make_batches(8), skip=("data_batch_3.bin", "test_batch.bin"))
    with pytest.raises(DatasetError, match="the archive lacks the member.s. cifar-10-batches-bin/data_batch_3.bin, "
                                           "cifar-10-batches-bin/test_batch.bin"):
        load_cifar10(tmp_path / C.ARCHIVE, verify=False, records_per_batch=N)
    batches = make_batches(8)
    del batches["data_batch_3.bin"]
    write_directory(tmp_path / "d" / "cifar-10-batches-bin", batches)
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path / "d", records_per_batch=N)
    assert f"{tmp_path / 'd' / 'cifar-10-batches-bin'} lacks data_batch_3.bin" in str(info.value)
    assert f"{tmp_path / 'd' / 'cifar-10'}: does not exist" in str(info.value)


def test_member_that_is_not_a_file(tmp_path):
    path = tmp_path / C.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="member cifar-10-batches-bin/data_batch_1.bin is not a regular file"):
        load_cifar10(path, verify=False, records_per_batch=N)


def test_damaged_archive(tmp_path):
    write_archive(tmp_path / "good.tar.gz", make_batches(9))
    data = (tmp_path / "good.tar.gz").read_bytes()
    (tmp_path / C.ARCHIVE).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="not a readable tar.gz archive"):
        load_cifar10(tmp_path / C.ARCHIVE, verify=False, records_per_batch=N)
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="not a readable tar.gz archive"):
        load_cifar10(tmp_path / "x.tar.gz", verify=False, records_per_batch=N)


def test_wrong_class_names(tmp_path):
    write_directory(tmp_path / "d", make_batches(10), meta="apple\nbanana\n")
    with pytest.raises(DatasetError, match="batches.meta.txt: expected the class names airplane, .*; "
                                           "found apple, banana"):
        load_cifar10(tmp_path / "d", records_per_batch=N)
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[9] == "truck" and len(CIFAR10_CLASSES) == 10


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_records_per_batch_is_checked(tmp_path, bad):
    with pytest.raises(ValueError, match="records_per_batch must be an integer >= 1"):
        load_cifar10(tmp_path, records_per_batch=bad)


# --------------------------------------------------------------------------- lookup order and download


def test_lookup_order_and_not_found(tmp_path, monkeypatch):
    """$XPCNN_DATA/cifar-10 > the user cache; nothing found without download lists both places."""
    env_batches, cache_batches = make_batches(11), make_batches(12)
    write_directory(tmp_path / "root" / "cifar-10", env_batches)
    write_directory(tmp_path / "xdg-cache" / "xpcnn" / "cifar-10" / "cifar-10-batches-bin", cache_batches)
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "root"))
    assert_dataset(load_cifar10(download=False, records_per_batch=N), env_batches)
    (tmp_path / "root" / "cifar-10" / "test_batch.bin").unlink()  # an incomplete place is skipped
    assert_dataset(load_cifar10(download=False, records_per_batch=N), cache_batches)
    (tmp_path / "xdg-cache" / "xpcnn" / "cifar-10" / "cifar-10-batches-bin" / "data_batch_1.bin").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(download=False, records_per_batch=N)
    msg = str(info.value)
    assert f"$XPCNN_DATA {tmp_path / 'root' / 'cifar-10'}: no cifar-10-binary.tar.gz; " in msg
    assert "lacks test_batch.bin" in msg and "lacks data_batch_1.bin" in msg
    assert f"cache {tmp_path / 'xdg-cache' / 'xpcnn' / 'cifar-10'}" in msg and "download=True" in msg
    with pytest.raises(DatasetError, match="no mirrors configured"):  # download on, but no mirror (patched)
        load_cifar10(records_per_batch=N)


def test_download_into_cache_then_reuse(tmp_path, monkeypatch, mirror):
    batches = make_batches(13)
    md5 = write_archive(tmp_path / "remote" / C.ARCHIVE, batches)
    write_archive(tmp_path / "evil" / C.ARCHIVE, make_batches(14))  # well-formed, wrong contents
    monkeypatch.setattr(C, "CIFAR10_MD5", md5)
    bad, good = mirror.serve_dir("bad", tmp_path / "evil"), mirror.serve_dir("good", tmp_path / "remote")
    monkeypatch.setattr(C, "CIFAR10_MIRRORS", (bad, good))
    with pytest.warns(UserWarning, match=f"{bad}{C.ARCHIVE} failed: {C.ARCHIVE}: MD5 mismatch: expected {md5}"):
        ds = load_cifar10(records_per_batch=N, progress=False)
    assert_dataset(ds, batches)
    cache = tmp_path / "xdg-cache" / "xpcnn" / "cifar-10"
    assert [p.name for p in cache.iterdir()] == [C.ARCHIVE]  # no temporary file left
    assert mirror.hits == [f"/bad/{C.ARCHIVE}", f"/good/{C.ARCHIVE}"]
    assert_dataset(load_cifar10(records_per_batch=N), batches)
    assert len(mirror.hits) == 2  # served from the cache the second time
