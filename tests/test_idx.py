"""The IDX reader/writer: round trips, byte layout, and every way a file can be broken."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xpcnn.datasets import DatasetError, encode_idx, read_idx, sha256_decompressed, write_idx
from xpcnn.datasets.idx import IDX_DTYPES

# (type code, native dtype) for every IDX type
CODES = [(0x08, "uint8"), (0x09, "int8"), (0x0B, "int16"), (0x0C, "int32"), (0x0D, "float32"), (0x0E, "float64")]


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    """An IDX header built by hand (independent of encode_idx)."""
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _sample(dtype: str, shape=(3, 4, 5)) -> np.ndarray:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype) * 1e3


# --------------------------------------------------------------------------- round trips and layout


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("code,dtype", CODES, ids=[d for _, d in CODES])
def test_round_trip_every_type_code(tmp_path, code, dtype, compress):
    a = _sample(dtype)
    path = write_idx(tmp_path / "a.idx", a, compress=compress)
    disk = path.read_bytes()
    assert (disk[:2] == b"\x1f\x8b") is compress
    raw = gzip.decompress(disk) if compress else disk
    # The header and payload are what the format says: type code, dims, big-endian items.
    assert raw[:16] == _header(code, (3, 4, 5))
    assert raw[16:] == a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == (3, 4, 5)
    assert got.tobytes() == a.tobytes()
    assert got.flags.writeable


def test_reads_hand_built_big_endian_bytes():
    data = _header(0x0B, (2,)) + b"\x00\x01\xff\xfe"
    got = read_idx(data)
    assert got.dtype == np.int16 and got.tolist() == [1, -2]
    data = _header(0x0D, (1, 1)) + struct.pack(">f", 1.5)
    assert read_idx(data).tolist() == [[1.5]]


def test_compression_is_detected_by_magic_not_name(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "raw.gz", a, compress=False)
    raw_named_gz = write_idx(tmp_path / "packed.idx", a, compress=True)
    assert gz_named_raw.read_bytes()[:2] == b"\x00\x00"
    assert raw_named_gz.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(gz_named_raw), a)
    np.testing.assert_array_equal(read_idx(raw_named_gz), a)


def test_compress_default_follows_suffix_and_write_is_clean(tmp_path):
    a = np.arange(5, dtype=np.uint8)
    assert write_idx(tmp_path / "x.gz", a).read_bytes()[:2] == b"\x1f\x8b"
    assert write_idx(tmp_path / "x.idx", a).read_bytes()[:2] == b"\x00\x00"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gz", "x.idx"]  # no temp files left
    # deterministic gzip output (mtime 0)
    assert write_idx(tmp_path / "y.gz", a).read_bytes() == (tmp_path / "x.gz").read_bytes()


def test_accepts_bytes_bytearray_memoryview_and_file_objects():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    data = gzip.compress(encode_idx(a))
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(read_idx(source), a)


def test_empty_and_big_endian_inputs_round_trip():
    empty = np.zeros((0, 3), dtype=np.float32)
    got = read_idx(encode_idx(empty))
    assert got.shape == (0, 3) and got.dtype == np.float32
    be = np.arange(4, dtype=">i4")
    got = read_idx(encode_idx(be))
    assert got.dtype.isnative and got.tolist() == [0, 1, 2, 3]


DTYPES = st.sampled_from(["u1", "i1", "<i2", ">i2", "<i4", ">i4", "<f4", ">f4", "<f8", ">f8"])


@settings(max_examples=60, deadline=None)
@given(
    a=hnp.arrays(dtype=DTYPES, shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
    compress=st.booleans(),
)
def test_round_trip_property(a, compress):
    data = encode_idx(a)
    assert len(data) == 4 + 4 * a.ndim + a.nbytes
    if compress:
        data = gzip.compress(data)
    got = read_idx(data)
    native = a.dtype.newbyteorder("=")
    assert got.shape == a.shape and got.dtype == native and got.dtype.isnative
    assert got.tobytes() == a.astype(native).tobytes()  # bit-exact, NaN payloads included


def test_encode_rejects_what_idx_cannot_store():
    with pytest.raises(TypeError, match="bool"):
        encode_idx(np.zeros(3, dtype=bool))
    with pytest.raises(TypeError, match="int64"):
        encode_idx(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="0"):
        encode_idx(np.float32(1.0))


# --------------------------------------------------------------------------- checksums


def test_sha256_is_of_decompressed_bytes(tmp_path):
    a = np.arange(100, dtype=np.uint8)
    raw = encode_idx(a)
    digest = hashlib.sha256(raw).hexdigest()
    assert sha256_decompressed(write_idx(tmp_path / "a.gz", a)) == digest
    assert sha256_decompressed(write_idx(tmp_path / "a.idx", a)) == digest
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", sha256=digest), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx", sha256=digest.upper()), a)


def test_wrong_sha256_names_file_expected_and_actual(tmp_path):
    a = np.arange(100, dtype=np.uint8)
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", a)
    actual = hashlib.sha256(encode_idx(a)).hexdigest()
    wrong = "0" * 64
    with pytest.raises(DatasetError) as info:
        read_idx(path, sha256=wrong)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "SHA-256" in msg
    assert f"expected {wrong}" in msg and f"got {actual}" in msg


# --------------------------------------------------------------------------- corruption


def _error(data: bytes, name: str = "t10k-images-idx3-ubyte.gz") -> str:
    with pytest.raises(DatasetError) as info:
        read_idx(data, name=name)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert msg.startswith(f"{name}: "), msg
    return msg


def test_bad_magic():
    msg = _error(b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    assert "two zero bytes" in msg and "01 00 08 01" in msg


def test_too_short_for_magic():
    assert "4-byte magic" in _error(b"\x00\x00")


def test_unknown_type_code():
    msg = _error(_header(0x0A, (2,)) + b"ab")
    assert "0x0A" in msg and "0x08 (uint8)" in msg and "0x0E (float64)" in msg


def test_zero_dimensions():
    assert "0 dimensions" in _error(b"\x00\x00\x08\x00")


def test_truncated_header():
    msg = _error(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"))
    assert "truncated IDX header" in msg and "16 header bytes" in msg and "has 8" in msg


def test_truncated_payload_message():
    data = _header(0x08, (10000, 28, 28)) + bytes(7839000)
    msg = _error(gzip.compress(data, compresslevel=1))
    assert msg == (
        "t10k-images-idx3-ubyte.gz: truncated IDX payload: "
        "header says 10000x28x28 uint8 = 7840000 bytes, file has 7839000"
    )


def test_truncated_multibyte_payload():
    msg = _error(_header(0x0E, (2, 3)) + bytes(47))
    assert "truncated" in msg and "2x3 float64 = 48 bytes" in msg and "has 47" in msg


def test_trailing_bytes():
    msg = _error(_header(0x0C, (2,)) + bytes(8 + 3))
    assert "3 trailing bytes" in msg and "2 int32 = 8 bytes" in msg and "has 11" in msg


def test_truncated_gzip_stream():
    data = gzip.compress(encode_idx(np.arange(1000, dtype=np.int32)))
    msg = _error(data[: len(data) // 2])
    assert "gzip" in msg and "truncated" in msg


def test_corrupt_gzip_stream():
    data = bytearray(gzip.compress(encode_idx(np.arange(1000, dtype=np.int32))))
    data[-8] ^= 0xFF  # break the CRC-32 in the trailer
    assert "corrupt" in _error(bytes(data))
    data = bytearray(gzip.compress(encode_idx(np.arange(1000, dtype=np.int32))))
    data[2] = 0x07  # unknown compression method in the gzip header
    assert "gzip" in _error(bytes(data))
    data = bytearray(gzip.compress(encode_idx(np.arange(1000, dtype=np.int32))))
    data[10:20] = b"\xff" * 10  # garbage in the deflate stream
    assert "gzip" in _error(bytes(data))


def test_path_messages_use_the_path(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(_header(0x08, (5,)) + bytes(4))
    with pytest.raises(DatasetError, match="broken.gz: truncated IDX payload"):
        read_idx(path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing.gz")


def test_type_table_is_big_endian():
    for code, dt in IDX_DTYPES.items():
        assert dt.itemsize == 1 or dt.byteorder == ">", (code, dt)
