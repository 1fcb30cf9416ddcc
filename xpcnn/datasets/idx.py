"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number ``00 00 TT ND`` (``TT`` the type code,
``ND`` the number of dimensions), ``ND`` big-endian uint32 dimension sizes, then
``prod(dims)`` big-endian items.  The whole file may be gzip-compressed; that is
detected from the gzip magic ``1f 8b``, never from the file name.

==========  =========  =================
type code   items      NumPy dtype
==========  =========  =================
``0x08``    uint8      ``u1``
``0x09``    int8       ``i1``
``0x0B``    int16      ``>i2``
``0x0C``    int32      ``>i4``
``0x0D``    float32    ``>f4``
``0x0E``    float64    ``>f8``
==========  =========  =================

Every malformed input (bad magic, unknown type code, truncated or oversized
payload, a corrupt gzip stream, a SHA-256 mismatch) raises :class:`DatasetError`
with the file's name, what was expected and what was found.

Checksums are taken over the *decompressed* IDX bytes, so a file verifies the
same whether it is stored gzip-compressed or raw.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

__all__ = [
    "DatasetError",
    "IDX_DTYPES",
    "Source",
    "encode_idx",
    "read_idx",
    "sha256_decompressed",
    "write_idx",
]

#: What the readers accept: a path, the file's bytes, or a binary file object.
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]


class DatasetError(ValueError):
    """A data file is malformed, corrupt, or not the one expected."""


#: IDX type code -> the (big-endian) NumPy dtype of the items on disk.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_NAMES = {code: dt.name for code, dt in IDX_DTYPES.items()}
_KNOWN_CODES = ", ".join(f"0x{code:02X} ({name})" for code, name in _TYPE_NAMES.items())
_CODE_OF = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_source(source: Source, name: str | None) -> tuple[bytes, str]:
    """The raw (possibly compressed) bytes of ``source`` and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    if hasattr(source, "read"):
        return source.read(), name or str(getattr(source, "name", "<stream>"))
    path = os.fspath(source)
    with open(path, "rb") as f:
        return f.read(), name or str(path)


def _decompress(data: bytes, name: str) -> bytes:
    """``data`` gunzipped if it starts with the gzip magic, else unchanged."""
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(
            f"{name}: corrupt or truncated gzip stream ({type(exc).__name__}: {exc}); "
            f"the file is damaged: delete it and fetch it again"
        ) from None


def _check_digest(name: str, expected: str, data: bytes) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.strip().lower():
        raise DatasetError(
            f"{name}: SHA-256 mismatch of the decompressed bytes: expected {expected.strip().lower()}, "
            f"got {actual}; the file is corrupt or not the one expected (delete it and fetch it again)"
        )


def _parse(raw: bytes, name: str) -> np.ndarray:
    """Decode decompressed IDX bytes into a native-byte-order array of shape ``dims``."""
    if len(raw) < 4:
        raise DatasetError(f"{name}: not an IDX file: expected a 4-byte magic number, the data has {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0:
        raise DatasetError(
            f"{name}: not an IDX file: the magic number must start with two zero bytes, got {raw[:4].hex(' ')}"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DatasetError(f"{name}: unknown IDX type code 0x{code:02X}; expected one of {_KNOWN_CODES}")
    if ndim == 0:
        raise DatasetError(f"{name}: the IDX header declares 0 dimensions; expected at least 1")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(
            f"{name}: truncated IDX header: {ndim} dimensions need {header_len} header bytes, the data has {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    disk_dtype = IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * disk_dtype.itemsize
    got = len(raw) - header_len
    if got != expected:
        what = "truncated IDX payload" if got < expected else f"{got - expected} trailing bytes after the IDX payload"
        shape = "x".join(map(str, dims))
        raise DatasetError(
            f"{name}: {what}: header says {shape} {_TYPE_NAMES[code]} = {expected} bytes, file has {got}"
        )
    native = disk_dtype.newbyteorder("=")
    if count == 0:
        return np.empty(dims, dtype=native)
    return np.frombuffer(raw, dtype=disk_dtype, count=count, offset=header_len).reshape(dims).astype(native)


def read_idx(source: Source, sha256: str | None = None, *, name: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a NumPy array.

    Args:
        source: a path, the file's bytes, or a binary file object.
        sha256: if given, the expected hex SHA-256 of the *decompressed* bytes;
            a mismatch raises :class:`DatasetError` naming both digests.
        name: how to call the data in error messages (default: the path).

    Returns:
        A writable array of shape ``dims`` (e.g. ``(60000, 28, 28)``) in native
        byte order, dtype one of uint8, int8, int16, int32, float32, float64.

    Raises:
        DatasetError: malformed, truncated or corrupt data, or a checksum mismatch.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    data, label = _read_source(source, name)
    raw = _decompress(data, label)
    if sha256 is not None:
        _check_digest(label, sha256, raw)
    return _parse(raw, label)


def sha256_decompressed(source: Source) -> str:
    """The hex SHA-256 of the decompressed bytes of ``source`` (raw bytes if not gzip)."""
    data, label = _read_source(source, None)
    return hashlib.sha256(_decompress(data, label)).hexdigest()


def encode_idx(array: np.ndarray) -> bytes:
    """The raw (uncompressed) IDX bytes of ``array``.

    ``array`` must have 1 to 255 dimensions and dtype uint8, int8, int16,
    int32, float32 or float64 (any byte order); otherwise ``TypeError`` /
    ``ValueError``.
    """
    a = np.asarray(array)
    code = _CODE_OF.get((a.dtype.kind, a.dtype.itemsize))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {a.dtype}; use one of {', '.join(_TYPE_NAMES.values())}")
    if not 1 <= a.ndim <= 255:
        raise ValueError(f"IDX stores arrays with 1 to 255 dimensions, got {a.ndim}")
    if any(d >= 2**32 for d in a.shape):
        raise ValueError(f"IDX dimension sizes must fit in uint32, got shape {a.shape}")
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + np.ascontiguousarray(a, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically (temporary file, then ``os.replace``).

    Args:
        path: destination; its parent directory must exist.
        array: see :func:`encode_idx` for the dtypes and ranks allowed.
        compress: gzip the file; ``None`` (default) means "if ``path`` ends in ``.gz``".
            The gzip header's timestamp is zero, so equal arrays give equal files.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    data = encode_idx(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
