"""Splitting each global batch over the ranks, and random draws made for the global batch.

Every rank draws the same permutation (same seed), builds the same global batch of ``n`` samples and
keeps the rows ``shard_bounds(n, rank, size)``: contiguous, disjoint, sizes differing by at most one
(the first ``n % size`` ranks take one more).  Augmentation runs on the whole global batch with the
loader's generator before the rows are taken, and dropout masks are drawn for the whole global
batch and sliced (:class:`ShardedGenerator`), so every random number is the one a single process
draws, whatever the number of ranks.

>>> [shard_bounds(10, r, 3) for r in range(3)]
[(0, 4), (4, 7), (7, 10)]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend as B
from ..datasets import augment
from ..datasets.loader import BatchIterator

__all__ = ["Shard", "ShardedBatchIterator", "ShardedGenerator", "shard_bounds"]


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch of ``n`` rows that rank ``rank`` of ``size`` keeps."""
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class Shard:
    """The current step's shard: rows ``[start, stop)`` of a global batch of ``total`` rows."""

    start: int = 0
    stop: int = 0
    total: int = 0

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ShardedBatchIterator(BatchIterator):
    """A :class:`~xpcnn.datasets.loader.BatchIterator` over the *global* batches that yields this rank's rows.

    Same arguments as BatchIterator plus ``rank`` and ``size``; ``len()``, the generator and its
    ``state_dict`` are those of the global iterator (a checkpoint does not depend on the rank count).
    :attr:`shard` describes the batch last yielded.  Every batch must have at least ``size`` rows
    (checked when the iterator is built, ValueError otherwise), so no rank gets an empty shard.
    """

    def __init__(self, *args: Any, rank: int, size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.size = int(rank), int(size)
        smallest = min(stop - start for start, stop in self._bounds())
        if smallest < self.size:
            raise ValueError(f"a global batch of {smallest} samples cannot be split over {self.size} ranks "
                             f"({self.num_samples} samples, batch size {self.batch_size}); use a batch size and "
                             f"data set with at least {self.size} samples in every batch, or drop_last")
        self.shard = Shard()

    def _host_batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        for start, stop in self._bounds():
            idx = order[start:stop]
            a, b = shard_bounds(idx.shape[0], self.rank, self.size)
            if self.transform is not None:  # augment the global batch (one draw sequence), keep our rows
                xb = self.transform(self.x[idx].astype(self._x_np_dtype, copy=False), self.rng)[a:b]
            else:
                xb = self.x[idx[a:b]].astype(self._x_np_dtype, copy=False)
            yb = self.y[idx[a:b]].astype(self._y_np_dtype, copy=False)
            self.shard = Shard(a, b, int(idx.shape[0]))
            yield B.asarray(xb, backend=self.backend), B.asarray(yb, backend=self.backend)

    def _device_batches(self, order: np.ndarray) -> Iterator[tuple[Any, Any]]:
        xp = self.backend.xp
        order_dev = B.asarray(order.astype(np.int64), backend=self.backend)
        params = self._epoch_params()  # the whole epoch's augmentation draws, as one process makes them
        for start, stop in self._bounds():
            a, b = shard_bounds(stop - start, self.rank, self.size)
            idx = order_dev[start + a:start + b]
            xb = xp.take(self._x_dev, idx, axis=0)
            if params is not None:  # our rows' parameters
                with B.device_scope(self.backend):
                    xb = self.transform.apply(xb, augment.slice_params(params, start + a, start + b))
            self.shard = Shard(a, b, stop - start)
            yield xb, xp.take(self._y_dev, idx, axis=0)

    def __repr__(self) -> str:
        return f"Sharded{super().__repr__()[:-1]}, rank={self.rank}, size={self.size})"


class ShardedGenerator:
    """A host generator whose ``random(shape)`` draws for the global batch and returns this rank's rows.

    ``shard()`` returns the current :class:`Shard`; when ``shape[0]`` is its local row count, the draw is
    ``base.random((total, *shape[1:]))[start:stop]`` (exactly the numbers one process draws for
    those rows), otherwise a plain draw.  ``base()`` returns the wrapped generator (looked up at each
    call, so a reseeded global generator is followed).  Everything else goes to the wrapped generator.
    """

    def __init__(self, base: Any, shard: Any) -> None:
        self._base, self._shard = base, shard

    def random(self, shape: Any = None, dtype: Any = np.float64) -> Any:
        base, s = self._base(), self._shard()
        dims = (shape,) if isinstance(shape, int) else tuple(shape or ())
        if dims and s.total and dims[0] == s.rows:
            return base.random((s.total, *dims[1:]), dtype=dtype)[s.start:s.stop]
        return base.random(shape, dtype=dtype)

    @property
    def unwrapped(self) -> Any:
        """The wrapped generator itself (for draws that are not per-batch, such as an epoch's mask bank)."""
        return self._base()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base(), name)
