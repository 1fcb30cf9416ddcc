"""Loss objects for the training loop: ``forward(output, target) -> 0-d loss``, ``backward() -> d output``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import functional as F
from . import kernels


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits ``(N, C)`` against integer labels ``(N,)`` (op: softmax_cross_entropy).

    ``check_values``: also check that the labels lie in ``[0, C)``, which reads them back from
    the device (a host sync).  The training loop validates each data set's labels once on the
    host and turns this off for its steps (:func:`labels_prevalidated`); shapes and dtypes are
    always checked.
    """

    def __init__(self, check_values: bool = True) -> None:
        self._cache: Any = None
        self.check_values = bool(check_values)

    def forward(self, logits: Any, labels: Any) -> Any:
        F.check_labels(logits, labels, values=self.check_values)
        loss, self._cache = kernels.softmax_cross_entropy.forward(logits, labels)
        return loss

    __call__ = forward

    def backward(self) -> Any:
        """``(softmax - onehot) / N``, the gradient for an upstream gradient of 1."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return kernels.softmax_cross_entropy.backward(None, self._cache)


class MeanSquaredError:
    """``1/N * sum_n 1/2 ||y_n - t_n||^2`` for outputs and targets of equal shape."""

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def forward(self, y: Any, t: Any) -> Any:
        self._cache = (y, t)
        return F.mean_squared_error(y, t)

    __call__ = forward

    def backward(self) -> Any:
        if self._cache is None:
            raise RuntimeError("MeanSquaredError.backward called before forward")
        return F.mean_squared_error_backward(*self._cache)


@contextlib.contextmanager
def labels_prevalidated(loss: Any) -> Iterator[Any]:
    """Within the block, ``loss`` (if it has ``check_values``) skips its per-step label-range read.

    For a loop whose labels were validated once on the host; restores the setting afterwards.
    """
    if not hasattr(loss, "check_values"):
        yield loss
        return
    saved, loss.check_values = loss.check_values, False
    try:
        yield loss
    finally:
        loss.check_values = saved
