"""What a training run leaves behind besides its checkpoint: ``metrics.json`` and the plots.

Plots need matplotlib (``pip install 'xpcnn[plots]'``); without it :func:`plots` says so once and
returns ``False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "plot_confusion_matrix", "plot_learning_curves", "plots", "write_metrics"]


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as ``out/metrics.json`` (indented JSON); returns the path."""
    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Counts ``cm[i, j]`` of samples of class ``i`` predicted as ``j``; y_true, y_pred: (N,) integers."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = num_classes if num_classes is not None else int(max(y_true.max(), y_pred.max())) + 1
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_learning_curves(plt: Any, path: Path, epochs: list[dict[str, float]], val_label: str = "validation") -> None:
    """Loss and accuracy per epoch (train, and the held-out set when the records have ``val_*``)."""
    ep = [e["epoch"] for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [e["loss"] for e in epochs], "o-", label="train")
    ax2.plot(ep, [e["accuracy"] for e in epochs], "o-", label="train")
    if epochs and "val_loss" in epochs[0]:
        ax1.plot(ep, [e["val_loss"] for e in epochs], "o-", label=val_label)
        ax2.plot(ep, [e["val_accuracy"] for e in epochs], "o-", label=val_label)
    for ax, name in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel("epoch"), ax.set_ylabel(name), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(plt: Any, path: Path, cm: np.ndarray, title: str = "test confusion matrix") -> None:
    """A heat map of ``cm`` (rows: true class, columns: predicted) with the counts written in."""
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_xticks(range(k)), ax.set_yticks(range(k))
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plots(out: Path, epochs: list[dict[str, float]], y_true: np.ndarray, y_pred: np.ndarray,
          val_label: str = "validation") -> bool:
    """Write ``learning_curves.png`` and ``confusion_matrix.png`` into ``out``; ``False`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib is not installed: skipping plots (pip install 'xpcnn[plots]')")
        return False
    plot_learning_curves(plt, Path(out) / "learning_curves.png", epochs, val_label)
    plot_confusion_matrix(plt, Path(out) / "confusion_matrix.png", confusion_matrix(y_true, y_pred))
    return True
