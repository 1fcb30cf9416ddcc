"""Losses: softmax cross-entropy from integer labels, and mean squared error.

Both return the loss as a 0-d array (no host sync) averaged over the batch,
and their backward passes return the gradient with respect to the network's
output for an upstream gradient of 1.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..checks import check_floating, check_rank, check_same_dtype, namespace
from .activation import log_softmax

__all__ = [
    "mean_squared_error",
    "mean_squared_error_backward",
    "one_hot",
    "check_label_range",
    "check_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
]


def one_hot(labels: Any, num_classes: int, dtype: Any) -> Any:
    """``labels: (N,)`` integers -> ``(N, num_classes)`` of 0/1 in ``dtype`` (a comparison, no scatter)."""
    xp = namespace(labels)
    # compare in int64: an arange in a narrow label dtype (uint8 from IDX files) wraps for num_classes > 256
    classes = xp.arange(num_classes, dtype=xp.int64, device=array_api_compat.device(labels))
    labels = xp.astype(labels, xp.int64, copy=False)
    return xp.astype(xp.reshape(labels, (-1, 1)) == xp.reshape(classes, (1, -1)), dtype)


def _check_labels(xp: Any, logits: Any, labels: Any, values: bool = True) -> None:
    """Shapes and dtypes (metadata only); with ``values``, also the label range (reads the device)."""
    check_rank(logits, 2, "logits", "(N, C)")
    check_rank(labels, 1, "labels", "(N,) integer class indices")
    check_floating(logits, "logits")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"batch size mismatch: logits have {logits.shape[0]} rows, labels have {labels.shape[0]}")
    if values and labels.shape[0] > 0:
        check_label_range(int(xp.min(labels)), int(xp.max(labels)), logits.shape[1])


def check_label_range(lo: int, hi: int, n_classes: int) -> None:
    """Labels whose smallest value is ``lo`` and largest ``hi`` must lie in ``[0, n_classes)``.

    Host integers only: the training loop reads a data set's range once, on the host
    (:attr:`xpcnn.datasets.BatchIterator.label_range`), and checks it here against the
    model's output width, instead of reading the device's labels every step.
    """
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}) for logits with {n_classes} classes, "
                         f"got values in [{lo}, {hi}]")


def softmax_cross_entropy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``; returns ``(loss, probs)``.

    logits: (N, C) float, labels: (N,) int in [0, C) -> loss: 0-d, probs: (N, C).
    ``L = -1/N * sum_n log softmax(logits_n)[t_n]``, computed via log-softmax
    so it stays finite for large logits.
    """
    xp = namespace(logits, labels)
    _check_labels(xp, logits, labels)
    logp = log_softmax(logits, axis=-1)
    t = one_hot(labels, logits.shape[1], logits.dtype)
    loss = -xp.sum(t * logp) / float(logits.shape[0])
    return loss, xp.exp(logp)


def _softmax_cross_entropy_forward(logits: Any, labels: Any) -> tuple[Any, tuple[Any, Any]]:
    """Unchecked forward for the kernel seam: ``(loss, (probs, labels))``."""
    xp = array_api_compat.array_namespace(logits)
    logp = log_softmax(logits, axis=-1)
    t = one_hot(labels, logits.shape[1], logits.dtype)
    return -xp.sum(t * logp) / float(logits.shape[0]), (xp.exp(logp), labels)


def _softmax_cross_entropy_backward(dout: Any, cache: tuple[Any, Any]) -> Any:
    """Unchecked backward for the kernel seam; ``dout`` is the loss's upstream gradient (None means 1)."""
    probs, labels = cache
    dlogits = (probs - one_hot(labels, probs.shape[1], probs.dtype)) / float(probs.shape[0])
    return dlogits if dout is None else dlogits * dout


def check_labels(logits: Any, labels: Any, values: bool = True) -> None:
    """Validate logits ``(N, C)`` and integer labels ``(N,)``; with ``values``, also that they lie in ``[0, C)``.

    ``values=True`` reads the label range from the labels' device (a host sync on a GPU);
    ``values=False`` checks only shapes and dtypes, for labels validated on the host before.
    """
    _check_labels(namespace(logits, labels), logits, labels, values)


def softmax_cross_entropy_backward(probs: Any, labels: Any) -> Any:
    """Fused gradient of softmax + cross-entropy: ``dlogits = (softmax - onehot) / N``."""
    namespace(probs, labels)
    return (probs - one_hot(labels, probs.shape[1], probs.dtype)) / float(probs.shape[0])


def mean_squared_error(y: Any, t: Any) -> Any:
    """``E = 1/N * sum_n 1/2 * ||y_n - t_n||^2`` (the sum-of-squares error, averaged over the batch).

    y, t: (N, ...) with equal shapes and dtypes -> 0-d loss.
    """
    xp = namespace(y, t)
    check_floating(y, "y")
    check_same_dtype(y, "y", t=t)
    if tuple(y.shape) != tuple(t.shape):
        raise ValueError(f"y and t must have the same shape, got {tuple(y.shape)} and {tuple(t.shape)}")
    diff = y - t
    return 0.5 * xp.sum(diff * diff) / float(y.shape[0])


def mean_squared_error_backward(y: Any, t: Any) -> Any:
    """``dE/dy = (y - t) / N``."""
    namespace(y, t)
    return (y - t) / float(y.shape[0])
