"""Data: the IDX format, MNIST / Fashion-MNIST loaders and a mini-batch iterator.

Everything here runs on the host (NumPy); :class:`BatchIterator` moves batches
to the current backend.

>>> from xpcnn.datasets import load_mnist, to_float, BatchIterator
>>> ds = load_mnist()                                   # doctest: +SKIP
>>> batches = BatchIterator(to_float(ds.x_train), ds.y_train, 128, rng=0)  # doctest: +SKIP
"""

from . import augment
from .idx import DatasetError, encode_idx, read_idx, sha256_decompressed, write_idx
from .loader import BatchIterator
from .mnist import (
    DATA_ENV_VAR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MIRRORS,
    FASHION_MNIST_SHA256,
    MNIST_MIRRORS,
    MNIST_SHA256,
    Dataset,
    DatasetNotFoundError,
    cache_dir,
    dataset_files,
    load_fashion_mnist,
    load_mnist,
    standardize,
    to_float,
    train_val_split,
)

__all__ = [
    "augment",
    "BatchIterator",
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
    "dataset_files",
    "encode_idx",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "sha256_decompressed",
    "standardize",
    "to_float",
    "train_val_split",
    "write_idx",
]
