"""The generic data-source pieces: cache location, $XPCNN_DATA, file lookup, checksums, verified downloads."""

from __future__ import annotations

import gzip
import hashlib

import pytest
from data_helpers import Mirror, isolate_data_env

from xpcnn.datasets import DatasetError
from xpcnn.datasets import sources as S


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    isolate_data_env(monkeypatch, tmp_path)


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    assert S.cache_dir() == tmp_path / "xdg-cache" / "xpcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert S.cache_dir() == tmp_path / "home" / ".cache" / "xpcnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert S.cache_dir() == tmp_path / "home" / ".cache" / "xpcnn"


def test_data_root_dir(monkeypatch, tmp_path):
    assert S.data_root_dir("cifar-10") is None
    monkeypatch.setenv(S.DATA_ENV_VAR, "   ")
    assert S.data_root_dir("cifar-10") is None
    monkeypatch.setenv(S.DATA_ENV_VAR, str(tmp_path / "root"))
    assert S.data_root_dir("cifar-10") == tmp_path / "root" / "cifar-10"


def test_scan_accepts_gz_or_decompressed(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"")
    (tmp_path / "b").write_bytes(b"")
    found, missing = S.scan(tmp_path, ["a.gz", "b.gz", "c.gz", "d"])
    assert found == {"a.gz": tmp_path / "a.gz", "b.gz": tmp_path / "b"}
    assert missing == ["c.gz", "d"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_verify_digest(tmp_path, algorithm):
    data = b"some bytes" * 100_000  # over one read chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = hashlib.new(algorithm, data).hexdigest()
    assert S.file_digest(path, algorithm) == expected
    S.verify_digest(path, expected.upper(), algorithm=algorithm)  # case-insensitive
    label = {"sha256": "SHA-256", "md5": "MD5"}[algorithm]
    with pytest.raises(DatasetError, match=f"f.bin: {label} mismatch: expected {'0' * len(expected)}, got {expected}"):
        S.verify_digest(path, "0" * len(expected), algorithm=algorithm)
    with pytest.raises(ValueError, match="unknown digest algorithm 'sha1'"):
        S.file_digest(path, "sha1")


def test_verify_digest_of_decompressed_bytes(tmp_path):
    data = b"payload" * 1000
    (tmp_path / "f.gz").write_bytes(gzip.compress(data))
    S.verify_digest(tmp_path / "f.gz", hashlib.sha256(data).hexdigest(), decompressed=True, name="F")
    with pytest.raises(DatasetError, match="F: SHA-256 mismatch of the decompressed bytes"):
        S.verify_digest(tmp_path / "f.gz", hashlib.sha256(b"other").hexdigest(), decompressed=True, name="F")


def test_download_checks_then_replaces_atomically(tmp_path, mirror):
    mirror.routes["/bad/f.bin"] = b"wrong"
    mirror.routes["/good/f.bin"] = b"right"
    checked = []

    def check(tmp):
        checked.append(tmp.read_bytes())
        assert tmp.name.startswith(".f.bin.") and tmp.name.endswith(".part")  # never the final name
        if tmp.read_bytes() != b"right":
            raise DatasetError("bad bytes")

    with pytest.warns(UserWarning, match="bad/f.bin failed: bad bytes; trying the next mirror"):
        out = S.download("f.bin", tmp_path / "d", [f"{mirror.url}/bad", f"{mirror.url}/good/"], check, progress=False)
    assert out == tmp_path / "d" / "f.bin" and out.read_bytes() == b"right"
    assert checked == [b"wrong", b"right"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.bin"]


def test_download_without_mirrors_or_all_failing(tmp_path, mirror):
    with pytest.raises(DatasetError, match="could not download f.bin into .*: no mirrors configured"):
        S.download("f.bin", tmp_path / "d", [], lambda p: None, progress=False)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"every mirror failed:\n  .*/none/f.bin: .*404"):
        S.download("f.bin", tmp_path / "d", [f"{mirror.url}/none/"], lambda p: None, progress=False)
    assert list((tmp_path / "d").iterdir()) == []
