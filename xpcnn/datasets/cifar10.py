"""CIFAR-10 from the official *binary* release (``cifar-10-binary.tar.gz``); never the pickled Python version.

The release holds ``cifar-10-batches-bin/data_batch_1.bin`` ... ``data_batch_5.bin``
(training) and ``test_batch.bin`` (test), each :data:`RECORDS_PER_BATCH` = 10000
records of :data:`RECORD_BYTES` = 3073 bytes: one label byte (``0..9``) and
3072 pixel bytes, channel-major (1024 red, 1024 green, 1024 blue, each 32x32
row-major); ``batches.meta.txt`` lists the class names, one per line.

Where the data is looked for, first match wins:

1. the explicit ``path`` argument: the archive itself, the extracted
   ``cifar-10-batches-bin`` directory, or a directory holding either (directly
   or in a ``cifar-10/`` subdirectory).  Only this place is searched.
2. ``$XPCNN_DATA/cifar-10/`` (see :data:`~.sources.DATA_ENV_VAR`);
3. the user cache ``$XDG_CACHE_HOME/xpcnn/cifar-10/`` (default ``~/.cache/xpcnn/cifar-10/``);
4. a download of the archive from :data:`CIFAR10_MIRRORS` into the cache (162 MB,
   MD5-checked before it is put in place; see :func:`~.sources.download`).

In a directory, the archive ``cifar-10-binary.tar.gz`` is preferred to the
extracted batches, because only the archive has a published checksum; a
directory of batches counts only if it holds all six.

Checks: the archive's MD5 against the published :data:`CIFAR10_MD5` when given
the archive and ``verify=True`` (the dataset's page publishes MD5 only); always,
each batch's exact size (``records_per_batch * 3073`` bytes), every label in
``0..9``, and the class names in ``batches.meta.txt`` where that file is present.
Each failure raises :class:`~.idx.DatasetError` naming the file and what was expected.
Members are read from the archive in memory; nothing is extracted to disk.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import sources
from .arrays import Dataset
from .idx import DatasetError
from .sources import DATA_ENV_VAR, DatasetNotFoundError, cache_dir, data_root_dir, verify_digest

__all__ = [
    "ARCHIVE",
    "BATCHES",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MIRRORS",
    "RECORDS_PER_BATCH",
    "RECORD_BYTES",
    "load_cifar10",
]

#: The archive's file name.
ARCHIVE = "cifar-10-binary.tar.gz"
#: MD5 of the archive, as published on https://www.cs.toronto.edu/~kriz/cifar.html.
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
#: Base URLs tried in order; ``URL + ARCHIVE`` must serve the archive.
CIFAR10_MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
#: The directory inside the archive (and the name it extracts to).
MEMBER_DIR = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
#: The six batch files, training batches first.
BATCHES = (*TRAIN_BATCHES, TEST_BATCH)
META = "batches.meta.txt"
#: Records in each batch of the official release.
RECORDS_PER_BATCH = 10000
IMAGE_SHAPE = (3, 32, 32)
#: Bytes per record: one label byte, then 3 * 32 * 32 pixel bytes.
RECORD_BYTES = 1 + 3 * 32 * 32
#: Class names, indexed by label (the lines of ``batches.meta.txt``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NAME = "cifar-10"


# --------------------------------------------------------------------------- lookup


def _in_directory(directory: Path) -> tuple[Path | None, str]:
    """The archive or batch directory ``directory`` holds (``None`` if neither), and what it lacked."""
    if (directory / ARCHIVE).is_file():
        return directory / ARCHIVE, ""
    if not directory.is_dir():
        return None, "does not exist"
    notes = [f"no {ARCHIVE}"]
    for batches in (directory, directory / MEMBER_DIR):
        present = [b for b in BATCHES if (batches / b).is_file()]
        if len(present) == len(BATCHES):
            return batches, ""
        if present:
            notes.append(f"{batches} lacks {', '.join(b for b in BATCHES if b not in present)}")
    if len(notes) == 1:
        notes.append(f"no batch files ({', '.join(BATCHES)})")
    return None, "; ".join(notes)


def _locate(path: str | os.PathLike[str] | None, download: bool, progress: bool) -> Path:
    """The archive (a file) or the directory of batches to read, following the module's lookup order."""
    searched: list[str] = []
    if path is not None:
        root = Path(path).expanduser()
        if root.is_file():
            return root
        for directory in (root, root / NAME):
            found, lacks = _in_directory(directory)
            if found is not None:
                return found
            searched.append(f"{directory}: {lacks}")
        raise DatasetNotFoundError(
            f"CIFAR-10 not found at the explicit path {root}; searched:\n  " + "\n  ".join(searched)
        )
    env = data_root_dir(NAME)
    if env is not None:
        found, lacks = _in_directory(env)
        if found is not None:
            return found
        searched.append(f"${DATA_ENV_VAR} {env}: {lacks}")
    cache = cache_dir() / NAME
    found, lacks = _in_directory(cache)
    if found is not None:
        return found
    if download:
        return sources.download(ARCHIVE, cache, CIFAR10_MIRRORS, _check_archive, progress=progress)
    searched.append(f"cache {cache}: {lacks}")
    raise DatasetNotFoundError(
        "CIFAR-10 not found (download=False); searched:\n  "
        + "\n  ".join(searched)
        + f"\nPass path=... (the {ARCHIVE} archive or its extracted {MEMBER_DIR} directory), "
        f"set ${DATA_ENV_VAR} (a root with a {NAME}/ subdirectory), or allow download=True."
    )


def _check_archive(path: Path) -> None:
    verify_digest(path, CIFAR10_MD5, algorithm="md5", name=ARCHIVE)  # looked up at call time (monkeypatchable)


# --------------------------------------------------------------------------- reading


def _read_archive(archive: Path, expected: int) -> tuple[dict[str, bytes], str | None]:
    """The six batches' bytes (sizes checked before reading) and ``batches.meta.txt``'s text, if present."""
    wanted = {f"{MEMBER_DIR}/{b}": b for b in BATCHES}
    data: dict[str, bytes] = {}
    meta = None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one sequential pass: a gzip stream cannot seek back cheaply
                name = member.name.removeprefix("./")
                if name in wanted and wanted[name] not in data:
                    if not member.isfile():
                        raise DatasetError(f"{archive}: member {name} is not a regular file")
                    _check_size(f"{archive}: member {name}", member.size, expected)
                    data[wanted[name]] = _read_member(tar, member)
                elif name == f"{MEMBER_DIR}/{META}" and member.isfile() and member.size < 1 << 16:
                    meta = _read_member(tar, member).decode("ascii", errors="replace")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(
            f"{archive}: not a readable tar.gz archive ({type(exc).__name__}: {exc}); "
            "the file is damaged or not the CIFAR-10 binary release: delete it and fetch it again"
        ) from None
    missing = [f"{MEMBER_DIR}/{b}" for b in BATCHES if b not in data]
    if missing:
        raise DatasetError(f"{archive}: the archive lacks the member(s) {', '.join(missing)}")
    return data, meta


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise DatasetError(f"member {member.name} has no data")
    with f:
        return f.read()


def _read_directory(directory: Path, expected: int) -> tuple[dict[str, bytes], str | None]:
    data = {}
    for b in BATCHES:
        path = directory / b
        _check_size(str(path), path.stat().st_size, expected)
        data[b] = path.read_bytes()
    meta_path = directory / META
    meta = meta_path.read_text("ascii", errors="replace") if meta_path.is_file() else None
    return data, meta


def _check_size(what: str, size: int, expected: int) -> None:
    if size != expected:
        raise DatasetError(
            f"{what} has {size} bytes; expected {expected} ({expected // RECORD_BYTES} records of {RECORD_BYTES} "
            f"bytes: 1 label + 3072 pixels)"
        )


def _decode(raw: bytes, what: str, records: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (records, 3, 32, 32) uint8, labels (records,) uint8)`` from one batch's bytes."""
    _check_size(what, len(raw), records * RECORD_BYTES)
    table = np.frombuffer(raw, dtype=np.uint8).reshape(records, RECORD_BYTES)
    labels = table[:, 0].copy()
    if labels.size and int(labels.max()) >= len(CIFAR10_CLASSES):
        bad = int(np.argmax(labels >= len(CIFAR10_CLASSES)))
        raise DatasetError(f"{what}: labels must be in 0..9, found {int(labels[bad])} in record {bad}")
    return table[:, 1:].reshape(records, *IMAGE_SHAPE).copy(), labels


def _check_meta(meta: str, what: str) -> None:
    names = tuple(line.strip() for line in meta.splitlines() if line.strip())
    if names != CIFAR10_CLASSES:
        raise DatasetError(f"{what}: expected the class names {', '.join(CIFAR10_CLASSES)}; found {', '.join(names)}")


def _assemble(data: Mapping[str, bytes], where: str, records: int) -> Dataset:
    decoded = {b: _decode(data[b], f"{where}{b}", records) for b in BATCHES}
    x_train = np.concatenate([decoded[b][0] for b in TRAIN_BATCHES])
    y_train = np.concatenate([decoded[b][1] for b in TRAIN_BATCHES])
    return Dataset(x_train, y_train, *decoded[TEST_BATCH])


def load_cifar10(
    path: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    progress: bool = True,
    records_per_batch: int = RECORDS_PER_BATCH,
) -> Dataset:
    """Load CIFAR-10: ``x`` uint8 ``(50000|10000, 3, 32, 32)`` (NCHW, RGB), ``y`` uint8 ``(N,)`` in ``0..9``.

    Args:
        path: the archive, the extracted ``cifar-10-batches-bin`` directory, or a directory holding
            either (or a root with ``cifar-10/``); when given, nothing else is searched.
        verify: check the archive's MD5 against :data:`CIFAR10_MD5` (extracted batches have no
            published checksum; their sizes and labels are checked regardless).
        download: allow fetching the archive into the cache (see :func:`~.sources.cache_dir`).
        progress: show a progress bar while downloading.
        records_per_batch: records each of the six batch files must hold; 10000 in the official
            release.  Another value is only for files written in the same format (e.g. small test
            files); with it, pass ``verify=False`` as well, since the archive's MD5 is the official one's.

    Class names are in :data:`CIFAR10_CLASSES`.

    Example:
        >>> x_train, y_train, x_test, y_test = load_cifar10()  # doctest: +SKIP
        >>> x_train.shape, y_test.shape  # doctest: +SKIP
        ((50000, 3, 32, 32), (10000,))
    """
    if isinstance(records_per_batch, bool) or not isinstance(records_per_batch, (int, np.integer)) \
            or records_per_batch < 1:
        raise ValueError(f"records_per_batch must be an integer >= 1, got {records_per_batch!r}")
    expected = int(records_per_batch) * RECORD_BYTES
    source = _locate(path, download, progress)
    if source.is_file():
        if verify:
            verify_digest(source, CIFAR10_MD5, algorithm="md5")
        data, meta = _read_archive(source, expected)
        where, meta_name = f"{source}: member {MEMBER_DIR}/", f"{source}: member {MEMBER_DIR}/{META}"
    else:
        data, meta = _read_directory(source, expected)
        where, meta_name = f"{source}{os.sep}", str(source / META)
    if meta is not None:
        _check_meta(meta, meta_name)
    return _assemble(data, where, int(records_per_batch))
