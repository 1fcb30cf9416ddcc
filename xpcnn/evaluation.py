"""``evaluate``: mean loss and accuracy of a model on a data set, in eval mode, with one host read at the end.

    >>> import numpy as np
    >>> from xpcnn import models
    >>> from xpcnn.evaluation import evaluate
    >>> x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype("float32")
    >>> result = evaluate(models.lenet5(rng=0), (x, np.arange(8) % 10))
    >>> sorted(result), 0.0 <= result["accuracy"] <= 1.0
    (['accuracy', 'loss'], True)
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from . import backend as B
from . import distributed
from .datasets.loader import BatchIterator
from .fit_checks import _as_xy, _check_label_range, _model_dtype, _positive_int, check_data
from .losses import SoftmaxCrossEntropy, labels_prevalidated
from .model import Sequential
from .tally import Tally

__all__ = ["evaluate", "evaluate_with_predictions"]


def evaluate(model: Sequential, data: tuple[Any, Any], loss: Any = None, batch_size: int = 512,
             on_device: bool = False) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (eval mode) on ``(x, y)``: ``{"loss": ..., "accuracy": ...}``."""
    return evaluate_with_predictions(model, data, loss, batch_size, on_device)[0]


def evaluate_with_predictions(model: Sequential, data: tuple[Any, Any], loss: Any = None, batch_size: int = 512,
                              on_device: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate` and the predicted class of every sample, (N,) int64 on the host, in one pass.

    Data-parallel (:mod:`xpcnn.distributed`): every rank calls it; each evaluates a contiguous part and
    every rank gets the reduced metrics and all predictions.
    """
    dp = distributed.current()
    if dp is not None:
        x, y = _as_xy(data)
        check_data(model, x, y, "evaluation")
        return dp.evaluate(x, y, lambda part: _evaluate_here(model, part, loss, batch_size, on_device))
    return _evaluate_here(model, data, loss, batch_size, on_device)


def _evaluate_here(model: Sequential, data: tuple[Any, Any], loss: Any, batch_size: int,
                   on_device: bool) -> tuple[dict[str, float], np.ndarray]:
    loss = loss or SoftmaxCrossEntropy()
    x, y = _as_xy(data)
    check_data(model, x, y, "evaluation")
    batches = BatchIterator(x, y, _positive_int("batch_size", batch_size), shuffle=False, on_device=on_device,
                            x_dtype=_model_dtype(model))
    tally = Tally(check_every=None)
    predictions = []
    # labels checked on the host above; sums and predictions stay on the device until the end
    with B.device_scope(batches.backend), labels_prevalidated(loss):
        for xb, yb in batches:
            out = model.forward(xb, train=False)
            _check_label_range(batches, out)
            tally.add(loss.forward(out, yb), out, yb)
            xp = array_api_compat.array_namespace(out)
            predictions.append(xp.argmax(out, axis=1))
        result = tally.result()
        joined = predictions[0] if len(predictions) == 1 else xp.concat(predictions, axis=0)
        return result, np.asarray(B.to_numpy(joined)).astype(np.int64)
