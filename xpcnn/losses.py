"""Loss objects for the training loop: ``forward(output, target) -> 0-d loss``, ``backward() -> d output``."""

from __future__ import annotations

from typing import Any

from .functional import loss as Fl


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits ``(N, C)`` against integer labels ``(N,)``."""

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def forward(self, logits: Any, labels: Any) -> Any:
        loss, probs = Fl.softmax_cross_entropy(logits, labels)
        self._cache = (probs, labels)
        return loss

    __call__ = forward

    def backward(self) -> Any:
        """``(softmax - onehot) / N``, the gradient for an upstream gradient of 1."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return Fl.softmax_cross_entropy_backward(*self._cache)


class MeanSquaredError:
    """``1/N * sum_n 1/2 ||y_n - t_n||^2`` for outputs and targets of equal shape."""

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def forward(self, y: Any, t: Any) -> Any:
        self._cache = (y, t)
        return Fl.mean_squared_error(y, t)

    __call__ = forward

    def backward(self) -> Any:
        if self._cache is None:
            raise RuntimeError("MeanSquaredError.backward called before forward")
        return Fl.mean_squared_error_backward(*self._cache)

