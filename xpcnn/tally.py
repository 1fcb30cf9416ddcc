"""Loss and accuracy summed on the device over an epoch, read every ``check_every`` steps (no per-step sync)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat

from . import backend as B

__all__ = ["Tally"]


class Tally:
    """Running loss and accuracy over an epoch, kept on the device: the one place batch results are summed.

    ``add(loss, logits, labels, step)`` with ``loss`` the batch mean (a 0-d array), logits (B, K),
    labels (B,): device operations only.  Every ``check_every`` steps (None: only at the end) the
    running loss sum is read once and, if it is not finite, the steps since the previous check are
    read one by one to name the first bad one (``diverged(value, step, first, last)`` builds the
    error).  ``result()`` reads the sums once: ``{"loss": ..., "accuracy": ...}`` (sample-weighted).
    """

    def __init__(self, check_every: int | None = 50,
                 diverged: Callable[[float, int, int, int], Exception] | None = None) -> None:
        if check_every is not None and (isinstance(check_every, bool) or int(check_every) < 1):
            raise ValueError(f"check_every must be an integer >= 1 or None, got {check_every!r}")
        self.check_every = None if check_every is None else int(check_every)
        self.diverged = diverged
        self.loss_sum: Any = None
        self.correct: Any = None
        self.seen = 0
        self._pending: list[tuple[int, Any]] = []
        self._read: dict[str, float] = {}
        self._wide: bool | None = None

    def add(self, loss: Any, logits: Any, labels: Any, step: int = 0) -> bool:
        """Sum one batch on the device; returns True when this call read the tally (a check)."""
        xp = array_api_compat.array_namespace(logits)
        n = int(labels.shape[0])
        if self._wide is None:  # sum in float64 where the device has it (asked once)
            self._wide = _has_float64(xp, loss)
        weighted = (xp.astype(loss, xp.float64) if self._wide else loss) * float(n)
        hits = xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels, xp.int64))
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.correct = hits if self.correct is None else self.correct + hits
        self.seen += n
        if self.diverged is not None:
            self._pending.append((step, loss))
        if self.check_every is not None and len(self._pending) >= self.check_every:
            self.check()
            return True
        return False

    def check(self) -> None:
        """Read the running loss sum (one device-to-host copy); raise if a pending step diverged."""
        if self.loss_sum is None:
            return
        total = float(B.to_numpy(self.loss_sum))
        self._read = {"loss": total / self.seen}
        if not math.isfinite(total) and self.diverged is not None and self._pending:
            first, last = self._pending[0][0], self._pending[-1][0]
            for step, loss in self._pending:  # the failure path only: read the pending steps
                value = float(B.to_numpy(loss))
                if not math.isfinite(value):
                    raise self.diverged(value, step, first, last)
            raise self.diverged(total, last, first, last)  # finite steps whose sum overflowed
        self._pending.clear()

    def result(self) -> dict[str, float]:
        self.check()
        correct = int(B.to_numpy(self.correct)) if self.correct is not None else 0
        return {"loss": self._read.get("loss", math.nan), "accuracy": correct / max(self.seen, 1)}

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self._read.get('loss', math.nan):.4f}"}


def _has_float64(xp: Any, x: Any) -> bool:
    """``x``'s device supports float64 (CPU, CUDA; not array-api-strict's ``no_float64`` device)."""
    try:
        return "float64" in xp.__array_namespace_info__().dtypes(device=array_api_compat.device(x),
                                                                 kind="real floating")
    except (AttributeError, TypeError):  # a namespace without the inspection API
        return True
