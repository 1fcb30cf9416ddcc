"""MNIST and Fashion-MNIST: find, download, verify and load; small preprocessing helpers.

Where the four files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) are looked for,
first match wins:

1. the explicit ``path`` argument: the directory holding the files, or a data
   root with a ``mnist/`` (``fashion-mnist/``) subdirectory.  Only this place
   is searched; missing files raise :class:`DatasetNotFoundError`.
2. ``$XPCNN_DATA/mnist/`` or ``$XPCNN_DATA/fashion-mnist/``: ``XPCNN_DATA`` is a
   data *root* with one subdirectory per data set (the same layout as the
   cache), never the files themselves, because both data sets use the same file
   names.
3. the copy shipped inside the package (MNIST only, ``xpcnn/datasets/data/mnist``);
4. Debian's package ``dataset-fashion-mnist`` at ``/usr/share/datasets/fashion-mnist``
   (Fashion-MNIST only);
5. the user cache ``$XDG_CACHE_HOME/xpcnn/<name>/`` (default ``~/.cache/xpcnn/<name>/``);
6. a download from :data:`MNIST_MIRRORS` / :data:`FASHION_MNIST_MIRRORS` into the
   cache (only the files the cache lacks), with a progress bar.  Each file goes
   to a temporary file, is SHA-256-checked, and only then ``os.replace``-d into
   place; a mirror that fails or serves bad bytes is reported with a warning and
   the next one is tried.

A directory counts only if it holds all four files; each may be stored as
``NAME.gz`` or decompressed as ``NAME``.  With ``verify=True`` (default) every
file's decompressed bytes must match the published SHA-256 in
:data:`MNIST_SHA256` / :data:`FASHION_MNIST_SHA256`; downloads are always verified.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import backend as B
from .idx import DatasetError, read_idx, sha256_decompressed

__all__ = [
    "DATA_ENV_VAR",
    "Dataset",
    "DatasetNotFoundError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "cache_dir",
    "dataset_files",
    "load_fashion_mnist",
    "load_mnist",
    "standardize",
    "to_float",
    "train_val_split",
]

#: Environment variable naming a data root with ``mnist/`` and ``fashion-mnist/`` subdirectories.
DATA_ENV_VAR = "XPCNN_DATA"

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
#: The four file names, shared by MNIST and Fashion-MNIST.
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

#: Published SHA-256 of the *decompressed* MNIST files.
MNIST_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
#: Published SHA-256 of the *decompressed* Fashion-MNIST files.
FASHION_MNIST_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: Base URLs tried in order; ``URL + file name`` must serve the ``.gz`` file.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MIRRORS: tuple[str, ...] = ("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",)
#: Class names of Fashion-MNIST, indexed by label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

#: The MNIST copy shipped in the wheel.
PACKAGED_DIRS: dict[str, tuple[Path, ...]] = {"mnist": (Path(__file__).resolve().parent / "data" / "mnist",)}
#: Directories installed by system packages (Debian's ``dataset-fashion-mnist``).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}
#: Seconds to wait on a mirror before giving up on it.
DOWNLOAD_TIMEOUT = 60.0
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No place holds the data set (and downloading was off or failed)."""


class Dataset(NamedTuple):
    """A loaded data set: ``x_*`` uint8 ``(N, 28, 28)``, ``y_*`` uint8 ``(N,)`` in ``0..9``.

    Unpacks as ``x_train, y_train, x_test, y_test = load_mnist()``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------- lookup


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in ("mnist", "fashion-mnist"):
        raise ValueError(f"unknown data set {name!r}; expected 'mnist' or 'fashion-mnist'")
    return key


def _digests(name: str) -> Mapping[str, str]:
    return MNIST_SHA256 if name == "mnist" else FASHION_MNIST_SHA256  # looked up at call time (monkeypatchable)


def _mirrors(name: str) -> Sequence[str]:
    return MNIST_MIRRORS if name == "mnist" else FASHION_MNIST_MIRRORS


def cache_dir() -> Path:
    """The user cache root: ``$XDG_CACHE_HOME/xpcnn``, else ``~/.cache/xpcnn`` (data sets in subdirectories)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "xpcnn"


def _find(directory: Path, fname: str) -> Path | None:
    """``directory/NAME.gz`` or the decompressed ``directory/NAME``, whichever exists."""
    for candidate in (directory / fname, directory / fname.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _scan(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The files found in ``directory`` and the names missing there."""
    found, missing = {}, []
    for fname in FILES:
        hit = _find(directory, fname)
        if hit is None:
            missing.append(fname)
        else:
            found[fname] = hit
    return found, missing


def _candidates(name: str) -> list[tuple[str, Path]]:
    places = []
    root = os.environ.get(DATA_ENV_VAR, "").strip()
    if root:
        places.append((f"${DATA_ENV_VAR}", Path(root).expanduser() / name))
    places += [("packaged copy", d) for d in PACKAGED_DIRS.get(name, ())]
    places += [("system package", d) for d in SYSTEM_DIRS.get(name, ())]
    return places


def dataset_files(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Locate (and if needed download) the four files of ``name`` (``"mnist"`` or ``"fashion-mnist"``).

    Follows the lookup order in the module docstring.  Returns a dict from each
    name in :data:`FILES` to the path holding it.  Does not verify local files
    (:func:`load_mnist` does); downloaded files are always verified.

    Raises:
        DatasetNotFoundError: no place holds all four files and downloading is
            off; the message lists every place searched and what it lacked.
        DatasetError: every mirror failed for some file (each failure listed).
    """
    name = _canonical(name)
    searched: list[str] = []
    if path is not None:
        root = Path(path).expanduser()
        for directory in (root, root / name):
            found, missing = _scan(directory)
            if not missing:
                return found
            searched.append(f"{directory}: missing {', '.join(missing)}")
        raise DatasetNotFoundError(
            f"{name} not found at the explicit path {root}; searched:\n  " + "\n  ".join(searched)
        )
    for label, directory in _candidates(name):
        found, missing = _scan(directory)
        if not missing:
            return found
        what = "does not exist" if not directory.is_dir() else f"missing {', '.join(missing)}"
        searched.append(f"{label} {directory}: {what}")
    cache = cache_dir() / name
    found, missing = _scan(cache)
    if missing and download:
        for fname in missing:
            found[fname] = _download(fname, cache, _mirrors(name), _digests(name)[fname], progress=progress)
        missing = []
    if not missing:
        return found
    searched.append(f"cache {cache}: missing {', '.join(missing)}")
    raise DatasetNotFoundError(
        f"{name} not found (download=False); searched:\n  "
        + "\n  ".join(searched)
        + f"\nPass path=..., set ${DATA_ENV_VAR}, or allow download=True."
    )


# --------------------------------------------------------------------------- download


def _fetch(url: str, dest: Path, fname: str, progress: bool) -> None:
    """Stream ``url`` into the open-able file ``dest``, with a tqdm bar."""
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


def _download(fname: str, directory: Path, mirrors: Sequence[str], sha256: str, *, progress: bool) -> Path:
    """Download ``fname`` from the first mirror that serves the right bytes into ``directory``."""
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
            actual = sha256_decompressed(tmp)
            if actual != sha256:
                raise DatasetError(
                    f"{fname}: SHA-256 mismatch of the decompressed bytes: expected {sha256}, got {actual}"
                )
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


# --------------------------------------------------------------------------- loading


def _check(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(f"{x_name}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DatasetError(f"{y_name}: expected uint8 labels of shape (N,), got {y.dtype} {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{x_name} has {x.shape[0]} images but {y_name} has {y.shape[0]} labels")
    if y.size and int(y.max()) >= NUM_CLASSES:
        bad = int(np.argmax(y >= NUM_CLASSES))
        raise DatasetError(f"{y_name}: labels must be in 0..{NUM_CLASSES - 1}, found {int(y[bad])} at index {bad}")


def _load(name: str, path: Any, verify: bool, download: bool, progress: bool) -> Dataset:
    files = dataset_files(name, path, download=download, progress=progress)
    digests = _digests(name)
    arrays = {f: read_idx(p, sha256=digests[f] if verify else None) for f, p in files.items()}
    _check(arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS], str(files[TRAIN_IMAGES]), str(files[TRAIN_LABELS]))
    _check(arrays[TEST_IMAGES], arrays[TEST_LABELS], str(files[TEST_IMAGES]), str(files[TEST_LABELS]))
    return Dataset(*(arrays[f] for f in FILES))


def load_mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load MNIST: ``x`` uint8 ``(60000|10000, 28, 28)``, ``y`` uint8 ``(N,)`` in ``0..9``.

    Args:
        path: a directory holding the four files (or a root with ``mnist/``);
            when given, nothing else is searched.
        verify: check every file's decompressed SHA-256 against :data:`MNIST_SHA256`.
        download: allow fetching missing files into the cache (see :func:`cache_dir`).
        progress: show a progress bar while downloading.

    Example:
        >>> x_train, y_train, x_test, y_test = load_mnist()
        >>> x_train.shape, y_test.shape
        ((60000, 28, 28), (10000,))
    """
    return _load("mnist", path, verify, download, progress)


def load_fashion_mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load Fashion-MNIST (same shapes as :func:`load_mnist`; class names in :data:`FASHION_MNIST_CLASSES`)."""
    return _load("fashion-mnist", path, verify, download, progress)


# --------------------------------------------------------------------------- preprocessing (host side)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, H, W)`` or ``(N, C, H, W)`` -> float32 ``(N, 1|C, H, W)`` in ``[0, 1]``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim != 4:
        raise ValueError(f"to_float expects images of shape (N, H, W) or (N, C, H, W), got {images.shape}")
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def standardize(
    x: np.ndarray, mean: float | None = None, std: float | None = None
) -> tuple[np.ndarray, float, float]:
    """``(x - mean) / std`` as float32, with one scalar mean and std over all of ``x``.

    Compute the statistics on the training set and pass them for the others::

        x_train, mean, std = standardize(to_float(ds.x_train))
        x_test, _, _ = standardize(to_float(ds.x_test), mean, std)

    Returns:
        ``(x_standardized, mean, std)``; ``mean`` and ``std`` are Python floats.
    """
    x = np.asarray(x, dtype=np.float32)
    mean = float(x.mean(dtype=np.float64)) if mean is None else float(mean)
    std = float(x.std(dtype=np.float64)) if std is None else float(std)
    if not std > 0.0:
        raise ValueError(f"standardize needs a positive std, got {std}")
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False), mean, std


def train_val_split(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` at random into ``(x_train, y_train, x_val, y_val)``.

    ``round(N * val_fraction)`` samples go to validation, chosen with the host
    generator ``xpcnn.backend.host_rng(rng)`` (an int seed is reproducible).
    Both parts keep the original order of their samples; not stratified.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got shapes {x.shape} and {y.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = x.shape[0]
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} of {n} samples leaves an empty train or validation set")
    perm = B.host_rng(rng).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
