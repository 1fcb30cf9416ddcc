"""Host-side data augmentation for image batches ``(B, C, H, W)``, drawn from the loader's RNG.

A transform is a callable ``transform(xb, rng) -> xb`` on a NumPy batch; the
:class:`~xpcnn.datasets.loader.BatchIterator` applies it before moving the batch
to the backend, with its own seeded generator, so augmented runs are
reproducible and resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Compose", "RandomHorizontalFlip", "RandomShift", "Transform", "build"]

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class RandomShift:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` per axis, filling with ``fill``.

    With standardised inputs, pass the standardised value of a black pixel as ``fill``.
    """

    def __init__(self, max_shift: int = 2, fill: float = 0.0) -> None:
        if int(max_shift) < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift, self.fill = int(max_shift), float(fill)

    def __call__(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if xb.ndim != 4:
            raise ValueError(f"RandomShift expects (B, C, H, W), got shape {xb.shape}")
        s = self.max_shift
        if s == 0:
            return xb
        b, c, h, w = xb.shape
        padded = np.full((b, c, h + 2 * s, w + 2 * s), self.fill, dtype=xb.dtype)
        padded[:, :, s:s + h, s:s + w] = xb
        dy, dx = rng.integers(0, 2 * s + 1, size=(2, b))
        rows = dy[:, None] + np.arange(h)  # (B, H): window start per image
        cols = dx[:, None] + np.arange(w)
        out = np.take_along_axis(padded, rows[:, None, :, None], axis=2)
        return np.take_along_axis(out, cols[:, None, None, :], axis=3)

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random(xb.shape[0]) < self.p
        out = xb.copy()
        out[flip] = xb[flip][..., ::-1]
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            xb = t(xb, rng)
        return xb

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build(spec: str, fill: float = 0.0) -> Transform | None:
    """A transform from a short spec: ``"none"``, ``"shift"`` (2 px), ``"shift,flip"``, ``"shift3"``..."""
    parts = [p.strip() for p in spec.split(",") if p.strip() and p.strip() != "none"]
    transforms: list[Transform] = []
    for part in parts:
        if part.startswith("shift"):
            transforms.append(RandomShift(int(part[5:] or 2), fill))
        elif part == "flip":
            transforms.append(RandomHorizontalFlip())
        else:
            raise ValueError(f"unknown augmentation {part!r} in {spec!r}; expected 'none', 'shift[N]' or 'flip'")
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else Compose(transforms)
