"""Where data files come from: the data root, the user cache, checksums and verified, atomic downloads.

Generic pieces shared by the data-set loaders (:mod:`.mnist`, :mod:`.cifar10`);
nothing here knows a particular data set.

- ``$XPCNN_DATA`` (:data:`DATA_ENV_VAR`) names a data *root* with one
  subdirectory per data set (``mnist/``, ``fashion-mnist/``, ``cifar-10/``), the
  same layout as the cache (:func:`cache_dir`).
- :func:`scan` finds named files in a directory; a ``NAME.gz`` may also be
  stored decompressed as ``NAME``.
- :func:`verify_digest` checks a file's SHA-256 or MD5 (optionally of its
  decompressed bytes) and raises :class:`~.idx.DatasetError` on a mismatch.
- :func:`download` fetches one file from the first mirror that serves bytes
  passing a check: each try goes to a temporary file in the target directory,
  is checked, and only then ``os.replace``-d into place; a mirror that fails or
  serves bad bytes is reported with a warning and the next one is tried.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .idx import DatasetError, sha256_decompressed

__all__ = [
    "DATA_ENV_VAR",
    "DOWNLOAD_TIMEOUT",
    "DatasetNotFoundError",
    "cache_dir",
    "data_root_dir",
    "download",
    "file_digest",
    "find_file",
    "scan",
    "verify_digest",
]

#: Environment variable naming a data root with one subdirectory per data set.
DATA_ENV_VAR = "XPCNN_DATA"
#: Seconds to wait on a mirror before giving up on it.
DOWNLOAD_TIMEOUT = 60.0

_DIGEST_LABELS = {"sha256": "SHA-256", "md5": "MD5"}


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No place holds the data set (and downloading was off or failed)."""


def cache_dir() -> Path:
    """The user cache root: ``$XDG_CACHE_HOME/xpcnn``, else ``~/.cache/xpcnn`` (data sets in subdirectories)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "xpcnn"


def data_root_dir(name: str) -> Path | None:
    """``$XPCNN_DATA/<name>`` when :data:`DATA_ENV_VAR` is set (and not blank), else ``None``."""
    root = os.environ.get(DATA_ENV_VAR, "").strip()
    return Path(root).expanduser() / name if root else None


def find_file(directory: Path, fname: str) -> Path | None:
    """``directory/NAME.gz`` or the decompressed ``directory/NAME``, whichever exists (``None`` if neither)."""
    for candidate in (directory / fname, directory / fname.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def scan(directory: Path, names: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """The files of ``names`` found in ``directory`` (see :func:`find_file`) and the names missing there."""
    found, missing = {}, []
    for fname in names:
        hit = find_file(directory, fname)
        if hit is None:
            missing.append(fname)
        else:
            found[fname] = hit
    return found, missing


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest (``"sha256"`` or ``"md5"``) of the file's bytes as stored, read in 1 MiB chunks."""
    if algorithm not in _DIGEST_LABELS:
        raise ValueError(f"unknown digest algorithm {algorithm!r}; expected one of {sorted(_DIGEST_LABELS)}")
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_digest(
    path: str | os.PathLike[str],
    expected: str,
    *,
    algorithm: str = "sha256",
    decompressed: bool = False,
    name: str | None = None,
) -> None:
    """Raise :class:`~.idx.DatasetError` unless the file's digest equals ``expected`` (hex, any case).

    Args:
        algorithm: ``"sha256"`` or ``"md5"`` (MD5 only where a publisher gives nothing better).
        decompressed: digest the gunzipped bytes (SHA-256 only), as the MNIST tables are published.
        name: how to call the file in the message (default: the path).
    """
    if decompressed:
        if algorithm != "sha256":
            raise ValueError("decompressed digests are SHA-256 only")
        actual = sha256_decompressed(path)
    else:
        actual = file_digest(path, algorithm)
    expected = expected.strip().lower()
    if actual != expected:
        what = " of the decompressed bytes" if decompressed else ""
        raise DatasetError(
            f"{name or os.fspath(path)}: {_DIGEST_LABELS[algorithm]} mismatch{what}: expected {expected}, got {actual}"
        )


def _fetch(url: str, dest: Path, fname: str, progress: bool) -> None:
    """Stream ``url`` into the file ``dest``, with a tqdm bar."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "xpcnn"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=fname, disable=not progress) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        if total is not None and done != total:
            raise OSError(f"connection closed after {done} of {total} bytes")


def download(
    fname: str,
    directory: Path,
    mirrors: Sequence[str],
    check: Callable[[Path], None],
    *,
    progress: bool = True,
) -> Path:
    """Download ``fname`` into ``directory`` from the first mirror whose bytes pass ``check``.

    Args:
        fname: the file name; ``mirror + fname`` is the URL (a ``/`` is added to a mirror lacking one).
        directory: where the file lands (created if needed).
        mirrors: base URLs tried in order.
        check: called on the downloaded temporary file; raises (e.g. :func:`verify_digest`'s
            :class:`~.idx.DatasetError`) to reject the mirror's bytes.
        progress: show a progress bar on stderr.

    Returns:
        ``directory / fname``, put in place with ``os.replace`` only after ``check`` passed.

    Raises:
        DatasetError: every mirror failed (each failure listed) or none is configured.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / fname
    errors = []
    for base in mirrors:
        url = base if base.endswith("/") else base + "/"
        url += fname
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{fname}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, fname, progress)
            check(tmp)
            os.replace(tmp, target)
            return target
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
            errors.append(f"{url}: {exc}")
            warnings.warn(f"downloading {url} failed: {exc}; trying the next mirror", stacklevel=3)
        finally:
            tmp.unlink(missing_ok=True)
    raise DatasetError(
        f"could not download {fname} into {directory}: "
        + ("no mirrors configured" if not errors else "every mirror failed:\n  " + "\n  ".join(errors))
    )
