"""Data: finding and verifying files, the MNIST / Fashion-MNIST / CIFAR-10 loaders, the user's own arrays,
preprocessing, augmentation and a mini-batch iterator.

Everything here runs on the host (NumPy); :class:`BatchIterator` moves batches
to the current backend.  Every loader returns a :class:`Dataset`, four host
arrays that unpack as ``x_train, y_train, x_test, y_test``.

Loaders (each raises :class:`DatasetError` with the file, what was expected and
what was found; :class:`DatasetNotFoundError` when no place holds the data):

- ``load_mnist(path=None)``, ``load_fashion_mnist(path=None)``: ``x`` uint8 ``(N, 28, 28)``,
  ``y`` uint8 in ``0..9``;
- ``load_cifar10(path=None)`` (the official binary release, archive or extracted): ``x`` uint8
  ``(N, 3, 32, 32)``, ``y`` uint8 in ``0..9``; class names in ``CIFAR10_CLASSES``;
- ``load_arrays(path)`` (an ``.npz``) and ``from_arrays(x_train, y_train, x_test, y_test)`` (NumPy
  arrays from a script): ``x`` ``(N, C, H, W)`` uint8 or floating (``(N, H, W)`` becomes
  ``(N, 1, H, W)``), ``y`` int64 ``>= 0``.

The lookup order of each loader (explicit path, ``$XPCNN_DATA/<name>/``, packaged
or system copies, the user cache ``~/.cache/xpcnn/<name>/``, a verified download)
is in its module: :mod:`.mnist`, :mod:`.cifar10`; the generic pieces (cache,
checksums, downloads) in :mod:`.sources`.  ``load_arrays`` reads an ``.npz`` with
exactly the keys ``x_train, y_train, x_test, y_test`` (``allow_pickle=False``);
:func:`count_classes` gives the number of classes its labels imply.

Preprocessing (:mod:`.preprocess`): :func:`to_float` (uint8 -> float32 in
``[0, 1]``, ``(N, 1|C, H, W)``), :func:`images_as_float` (uint8 as ``to_float``,
floating images kept as float32), :func:`standardize` (one scalar mean and std,
computed on the training set and reused), :func:`train_val_split` (seeded).

Augmentation (:mod:`.augment`): ``augment.parse_augment("crop4,flip", fill)``
turns a spec (grammar in ``augment.SPEC_HELP``: ``none``, ``shift[N]``,
``crop[N]``, ``flip``) into a transform for ``BatchIterator(transform=...)`` or
``train.fit(transform=...)``; bad specs raise ``ValueError`` naming the item.

>>> from xpcnn.datasets import load_mnist, to_float, BatchIterator
>>> ds = load_mnist()                                   # doctest: +SKIP
>>> batches = BatchIterator(to_float(ds.x_train), ds.y_train, 128, rng=0)  # doctest: +SKIP

Training on your own arrays from a script: see :mod:`.arrays`.
"""

from . import augment
from .arrays import ARRAY_KEYS, Dataset, count_classes, from_arrays, load_arrays
from .cifar10 import CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_MIRRORS, load_cifar10
from .idx import DatasetError, encode_idx, read_idx, sha256_decompressed, write_idx
from .loader import BatchIterator
from .mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MIRRORS,
    FASHION_MNIST_SHA256,
    MNIST_MIRRORS,
    MNIST_SHA256,
    dataset_files,
    load_fashion_mnist,
    load_mnist,
)
from .preprocess import images_as_float, standardize, to_float, train_val_split
from .sources import DATA_ENV_VAR, DatasetNotFoundError, cache_dir

__all__ = [
    "augment",
    "ARRAY_KEYS",
    "BatchIterator",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MIRRORS",
    "DATA_ENV_VAR",
    "Dataset",
    "DatasetError",
    "DatasetNotFoundError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "cache_dir",
    "count_classes",
    "dataset_files",
    "encode_idx",
    "from_arrays",
    "images_as_float",
    "load_arrays",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "sha256_decompressed",
    "standardize",
    "to_float",
    "train_val_split",
    "write_idx",
]
