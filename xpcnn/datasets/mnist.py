"""MNIST and Fashion-MNIST: file names, published checksums, mirrors, lookup order and loading.

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

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .arrays import Dataset
from .idx import DatasetError, read_idx
from .sources import DATA_ENV_VAR, DatasetNotFoundError, cache_dir, data_root_dir, scan, verify_digest

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "FILES",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "dataset_files",
    "load_fashion_mnist",
    "load_mnist",
]

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
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


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


def _candidates(name: str) -> list[tuple[str, Path]]:
    places = []
    root = data_root_dir(name)
    if root is not None:
        places.append((f"${DATA_ENV_VAR}", root))
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
            found, missing = scan(directory, FILES)
            if not missing:
                return found
            searched.append(f"{directory}: missing {', '.join(missing)}")
        raise DatasetNotFoundError(
            f"{name} not found at the explicit path {root}; searched:\n  " + "\n  ".join(searched)
        )
    for label, directory in _candidates(name):
        found, missing = scan(directory, FILES)
        if not missing:
            return found
        what = "does not exist" if not directory.is_dir() else f"missing {', '.join(missing)}"
        searched.append(f"{label} {directory}: {what}")
    cache = cache_dir() / name
    found, missing = scan(cache, FILES)
    if missing and download:
        for fname in missing:
            check = _checker(fname, _digests(name)[fname])
            found[fname] = sources.download(fname, cache, _mirrors(name), check, progress=progress)
        missing = []
    if not missing:
        return found
    searched.append(f"cache {cache}: missing {', '.join(missing)}")
    raise DatasetNotFoundError(
        f"{name} not found (download=False); searched:\n  "
        + "\n  ".join(searched)
        + f"\nPass path=..., set ${DATA_ENV_VAR}, or allow download=True."
    )


def _checker(fname: str, sha256: str) -> Callable[[Path], None]:
    """A download check: the decompressed bytes must have the published SHA-256."""

    def check(tmp: Path) -> None:
        verify_digest(tmp, sha256, decompressed=True, name=fname)

    return check


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
        download: allow fetching missing files into the cache (see :func:`~.sources.cache_dir`).
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
