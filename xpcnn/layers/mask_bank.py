"""Dropout masks for a whole epoch, drawn on the host in one go and copied to the device once.

A :class:`~xpcnn.layers.Dropout` layer draws ``rng.random((B, *features)) >= p`` per step on the
host; on a device that would be one host-to-device copy per step.  When the training loop
announces an epoch of ``rows`` samples (:meth:`MaskBank.plan`), the first training forward on a
device array draws ``rng.random((rows, *features))`` instead (in chunks, so the host never holds
more than ``CHUNK`` doubles), copies the keep decisions to the device as one bool array, and
every step takes its next ``B`` rows there.  Since a generator's ``random`` fills its output in
order, the rows are exactly the per-step draws: a layer with its own generator (or the only one
on the shared generator) drops the same units as on the host.

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

__all__ = ["CHUNK", "MaskBank"]

#: Doubles drawn per host call while filling an epoch's masks (bounds the host's temporary).
CHUNK = 1 << 22


class MaskBank:
    """Keep decisions ``(rows, *features)`` on the device for the announced epoch; empty otherwise."""

    def __init__(self) -> None:
        self.rows = 0
        self.keep: Any = None
        self.pos = 0

    def plan(self, rows: int) -> None:
        """Announce ``rows`` training samples for the coming epoch (0 ends the epoch, dropping leftovers)."""
        self.rows, self.keep, self.pos = int(rows), None, 0

    def take(self, x: Any, p: float, rng: np.random.Generator) -> Any:
        """The mask ``0`` / ``1/(1-p)`` for ``x: (B, *features)`` (in ``x``'s dtype, on its device), or None.

        None (the caller draws per step, as before) for NumPy inputs, without a plan, or when
        ``x`` does not fit the plan (other features, more rows than announced).
        """
        if self.rows <= 0 or isinstance(x, np.ndarray) or x.ndim == 0:
            return None
        features = tuple(int(d) for d in x.shape[1:])
        n = int(x.shape[0])
        if self.keep is None:
            self.keep = self._draw(features, p, rng, x)
        elif tuple(self.keep.shape[1:]) != features:
            self.plan(0)
            return None
        if self.pos + n > self.rows:
            self.plan(0)
            return None
        xp = array_api_compat.array_namespace(x)
        rows = self.keep[self.pos:self.pos + n, ...]
        self.pos += n
        return xp.astype(rows, x.dtype) * (1.0 / (1.0 - p))

    def _draw(self, features: tuple[int, ...], p: float, rng: np.random.Generator, like: Any) -> Any:
        per_row = max(1, int(np.prod(features, dtype=np.int64)))
        step = max(1, CHUNK // per_row)
        keep = np.empty((self.rows, *features), dtype=bool)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.rows)
            keep[start:stop] = rng.random((stop - start, *features)) >= p
        xp = array_api_compat.array_namespace(like)
        with B.device_scope(like):  # one host-to-device copy per epoch
            return xp.asarray(keep, device=array_api_compat.device(like))
