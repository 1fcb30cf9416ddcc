"""Loss objects for the training loop: ``forward(output, target) -> 0-d loss``, ``backward() -> d output``."""

from __future__ import annotations

from typing import Any

from . import functional as F
from . import kernels


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits ``(N, C)`` against integer labels ``(N,)`` (op: softmax_cross_entropy)."""

    def __init__(self) -> None:
        self._cache: Any = None

    def forward(self, logits: Any, labels: Any) -> Any:
        F.check_labels(logits, labels)
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
