"""Mini-batches over host (NumPy) arrays, delivered on the backend.

>>> import numpy as np
>>> x = np.zeros((10, 1, 28, 28), np.float32); y = np.arange(10) % 3
>>> it = BatchIterator(x, y, batch_size=4, rng=0)
>>> len(it), [int(xb.shape[0]) for xb, yb in it]
(3, [4, 4, 2])

The backend is fixed when the iterator is built (``xpcnn.backend.get_backend()``
then, or the ``backend`` argument), so a later ``set_backend`` does not move an
existing iterator.  Shuffling draws one permutation per epoch (per ``iter()``)
from a host ``numpy.random.Generator``: an int seed gives the same sequence of
epochs on every backend and every run, while consecutive epochs differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import backend as B
from . import augment

__all__ = ["BatchIterator"]


class BatchIterator:
    """Iterate over ``(xb, yb)`` mini-batches of ``x: (N, ...)`` and ``y: (N, ...)``.

    Args:
        x, y: host arrays (anything ``numpy.asarray`` accepts, or backend arrays,
            which are copied to the host) with the same first dimension ``N >= 1``.
        batch_size: samples per batch (``>= 1``); the last batch may be smaller
            unless ``drop_last``.
        shuffle: draw a fresh permutation at the start of every epoch.
        rng: a ``numpy.random.Generator``, an int seed, or ``None`` for the global
            host generator (:func:`xpcnn.backend.seed`).  Kept as :attr:`rng`.
        drop_last: skip a final batch smaller than ``batch_size``.
        on_device: copy the whole (converted) data set to the backend once and
            gather batches there with ``xp.take``; otherwise gather on the host
            and copy each batch.  Both give identical batches.
        x_dtype: dtype of ``xb`` (``None`` keeps ``x``'s dtype).
        y_dtype: dtype of ``yb`` (default int64, the class-index dtype).
        backend: backend to deliver to (default: the current one at construction).
        transform: an augmentation ``transform(xb, rng) -> xb`` applied to each batch
            (after the dtype conversion) with this iterator's ``rng``; see
            :mod:`xpcnn.datasets.augment`.  With ``on_device`` it must also have
            ``draw``/``apply`` (all of :mod:`~xpcnn.datasets.augment`'s do): the epoch's
            parameters are drawn on the host at ``iter()``, in the order the host path
            draws them, copied to the device in one transfer and applied there, so both
            paths give the same batches.

    Yields:
        ``xb: (B, ...)`` of ``x_dtype`` and ``yb: (B, ...)`` of ``y_dtype``, on the backend.

    Labels: :attr:`label_range` is ``(min, max)`` of integer labels, read once on the host here,
    so the training loop checks them against the model's classes without reading the device.

    Checkpointing: :meth:`state_dict` (JSON-serialisable: the epoch count and
    ``rng.bit_generator.state``) taken between epochs and restored with
    :meth:`load_state_dict` continues with the same permutations.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        shuffle: bool = True,
        rng: np.random.Generator | int | None = None,
        drop_last: bool = False,
        on_device: bool = False,
        x_dtype: Any = "float32",
        y_dtype: Any = "int64",
        backend: str | B.Backend | None = None,
        transform: Any = None,
    ) -> None:
        x, y = np.asarray(B.to_numpy(x)), np.asarray(B.to_numpy(y))
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"x and y must have a leading sample axis, got shapes {x.shape} and {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different numbers of samples: {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("x and y are empty")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if backend is None:
            self.backend = B.get_backend()
        else:
            self.backend = backend if isinstance(backend, B.Backend) else B.resolve(backend)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.on_device = bool(on_device)
        if transform is not None and self.on_device and not augment.on_device(transform):
            raise ValueError(f"transform {transform!r} runs on the host only (it has no draw(n, rng) and "
                             "apply(xb, params)); use the transforms of xpcnn.datasets.augment or drop on_device")
        self.transform = transform
        self.rng = B.host_rng(rng)
        #: Number of epochs started (calls to ``iter()``).
        self.epoch = 0
        self._x_np_dtype = x.dtype if x_dtype is None else np.dtype(B.dtype_name(x_dtype))
        self._y_np_dtype = np.dtype(B.dtype_name(y_dtype))
        self.x, self.y = x, y
        #: ``(min, max)`` of integer labels (read on the host once), else None.
        self.label_range: tuple[int, int] | None = None
        if y.dtype.kind in "iub" and y.size:
            self.label_range = (int(y.min()), int(y.max()))
        self._x_dev = self._y_dev = None
        if self.on_device:
            self._x_dev = B.asarray(x, dtype=self._x_np_dtype, backend=self.backend)
            self._y_dev = B.asarray(y, dtype=self._y_np_dtype, backend=self.backend)

    @property
    def num_samples(self) -> int:
        """``N``, the number of samples."""
        return int(self.x.shape[0])

    @property
    def samples_per_epoch(self) -> int:
        """Samples delivered per epoch (``N``, less a dropped last batch)."""
        return len(self) * self.batch_size if self.drop_last else self.num_samples

    def __len__(self) -> int:
        """Batches per epoch."""
        n, bs = self.num_samples, self.batch_size
        return n // bs if self.drop_last else math.ceil(n / bs)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        # Draw the permutation now, not lazily, so the RNG state after iter() is well defined.
        n = self.num_samples
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.epoch += 1
        return self._device_batches(order) if self.on_device else self._host_batches(order)

    def _bounds(self) -> Iterator[tuple[int, int]]:
        for i in range(len(self)):
            start = i * self.batch_size
            yield start, min(start + self.batch_size, self.num_samples)

    def _host_batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        for start, stop in self._bounds():
            idx = order[start:stop]
            xb = self.x[idx].astype(self._x_np_dtype, copy=False)
            if self.transform is not None:
                xb = self.transform(xb, self.rng)
            yb = self.y[idx].astype(self._y_np_dtype, copy=False)
            yield B.asarray(xb, backend=self.backend), B.asarray(yb, backend=self.backend)

    def _device_batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        xp = self.backend.xp
        order_dev = B.asarray(order.astype(np.int64), backend=self.backend)  # one transfer per epoch
        params = self._epoch_params()  # drawn now, like the permutation: the host path's draws, in its order
        for start, stop in self._bounds():
            idx = order_dev[start:stop]
            xb = xp.take(self._x_dev, idx, axis=0)
            if params is not None:
                with B.device_scope(self.backend):
                    xb = self.transform.apply(xb, augment.slice_params(params, start, stop))
            yield xb, xp.take(self._y_dev, idx, axis=0)

    def _epoch_params(self) -> Any:
        """The transform's parameters for every batch of the epoch, on the device (one copy per leaf)."""
        if self.transform is None:
            return None
        host = augment.concat_params([self.transform.draw(stop - start, self.rng) for start, stop in self._bounds()])
        return augment.map_params(host, lambda a: B.asarray(a, backend=self.backend))

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": int, "rng": rng.bit_generator.state}``; JSON-serialisable (ints, strings)."""
        return {"epoch": self.epoch, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the next ``iter()`` continues where the saved run would."""
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        return (
            f"BatchIterator(N={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, on_device={self.on_device}, backend={self.backend})"
        )
