"""Dropout masks for a whole epoch, drawn on the host in one go and copied to the device once.

A :class:`~xpcnn.layers.Dropout` layer draws ``rng.random((B, *features)) >= p`` per call on the
host; on a device that would be one host-to-device copy per step.  When the training loop
announces an epoch of ``rows`` samples (:meth:`MaskBank.plan`), the first training forward draws
``rng.random((rows, *features))`` instead (in chunks, so the host never holds more than ``CHUNK``
doubles; in blocks of whole batches of at most ``BLOCK`` values), copies the keep decisions to the
device as one bool array, and every step takes its next ``B`` rows there.  Every backend does the
same (NumPy too), so a seed gives the same masks everywhere, host path or device path.  Since a
generator's ``random`` fills its output in order, the rows are exactly the per-call draws of a
layer that owns its generator (or is the only one on the model's shared generator).

>>> import numpy as np
>>> a = np.random.default_rng(0).random((5, 3))
>>> g = np.random.default_rng(0); b = np.concatenate([g.random((2, 3)), g.random((3, 3))])
>>> bool((a == b).all())
True
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .. import backend as B

__all__ = ["BLOCK", "CHUNK", "MaskBank"]

#: Doubles drawn per host call while filling an epoch's masks (bounds the host's temporary).
CHUNK = 1 << 22
#: Keep decisions held at once (bool: bytes), per layer; a block is a whole number of batches.
BLOCK = 1 << 27


class MaskBank:
    """Keep decisions ``(rows, *features)`` on the device for the announced epoch; empty otherwise."""

    def __init__(self) -> None:
        self.rows = 0  # rows of the epoch not yet drawn
        self.keep: Any = None  # the current block, (rows, *features) bool on the device
        self.pos = 0  # rows of the block already used
        #: data parallelism (:mod:`xpcnn.distributed`) sets a callable returning the step's shard (``start``,
        #: ``stop``, ``total``): the bank then steps through whole global batches and returns this rank's rows
        self.shard: Any = None

    def plan(self, rows: int) -> None:
        """Announce ``rows`` training samples for the coming epoch (0 ends the epoch, dropping leftovers)."""
        self.rows, self.keep, self.pos = int(rows), None, 0

    def take(self, x: Any, p: float, rng: np.random.Generator) -> Any:
        """The mask ``0`` / ``1/(1-p)`` for ``x: (B, *features)`` (in ``x``'s dtype, on its device), or None.

        None (the caller draws per call, as outside training) without a plan, or when ``x`` does
        not fit it (other features than the block's, more rows than announced).
        """
        if (self.rows <= 0 and self.keep is None) or x.ndim == 0:
            return None
        features = tuple(int(d) for d in x.shape[1:])
        n = int(x.shape[0])
        lo, hi = 0, n
        s = self.shard() if self.shard is not None else None
        if s is not None and s.total and s.stop - s.start == n:
            n, lo, hi = s.total, s.start, s.stop
            rng = getattr(rng, "unwrapped", rng)  # draw whole rows, not a generator's per-rank view
        if self.keep is not None and tuple(self.keep.shape[1:]) != features:
            self.plan(0)
            return None
        if self.keep is None or self.pos + n > int(self.keep.shape[0]):
            if self.keep is not None and self.pos < int(self.keep.shape[0]) or n > self.rows:
                self.plan(0)  # a batch across a block boundary, or past the epoch: not what was planned
                return None
            per_row = max(1, int(np.prod(features, dtype=np.int64)))
            block = min(self.rows, n * max(1, BLOCK // (per_row * n)))
            self.keep, self.pos = self._draw(block, features, p, rng, x), 0
            self.rows -= block
        xp = array_api_compat.array_namespace(x)
        rows = self.keep[self.pos + lo:self.pos + hi, ...]
        self.pos += n
        return xp.astype(rows, x.dtype) * (1.0 / (1.0 - p))

    @staticmethod
    def _draw(count: int, features: tuple[int, ...], p: float, rng: np.random.Generator, like: Any) -> Any:
        per_row = max(1, int(np.prod(features, dtype=np.int64)))
        step = max(1, CHUNK // per_row)
        keep = np.empty((count, *features), dtype=bool)
        for start in range(0, count, step):
            stop = min(start + step, count)
            keep[start:stop] = rng.random((stop - start, *features)) >= p
        if isinstance(like, np.ndarray):
            return keep
        xp = array_api_compat.array_namespace(like)
        with B.device_scope(like):  # one host-to-device copy per epoch
            return xp.asarray(keep, device=array_api_compat.device(like))
