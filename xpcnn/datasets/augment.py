"""Host-side data augmentation for image batches ``(B, C, H, W)``, drawn from the loader's RNG.

A transform is a callable ``transform(xb, rng) -> xb`` on a NumPy batch; the
:class:`~xpcnn.datasets.loader.BatchIterator` applies it before moving the batch
to the backend, with its own seeded host generator, so augmented runs are
reproducible, resume exactly, and give the same numbers on every backend.

Transforms: :class:`RandomShift` (random translation), :class:`RandomCrop` (pad,
then crop back to the input size at a random place: the ResNet CIFAR recipe),
:class:`RandomHorizontalFlip`, :class:`Compose`.  They work for any number of
channels.  :func:`parse_augment` builds one from a short spec (what the CLI's
``--augment`` takes; the grammar is :data:`SPEC_HELP`):

>>> parse_augment("crop4,flip")
Compose([RandomCrop(padding=4, fill=0.0), RandomHorizontalFlip(p=0.5)])
>>> parse_augment("none") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "SPEC_HELP",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomShift",
    "Transform",
    "build",
    "parse_augment",
]

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

#: The spec grammar :func:`parse_augment` accepts (for help texts).
SPEC_HELP = (
    "'none', or a comma list of: shift[N] (random shifts of up to N px per axis, default 2), "
    "crop[N] (pad N px, then a random crop back to the input size, default 4), "
    "flip (random horizontal flip, p=0.5); e.g. 'crop4,flip'"
)


def _translate(xb: np.ndarray, s: int, fill: float, rng: np.random.Generator) -> np.ndarray:
    """Each image of ``xb`` padded by ``s`` with ``fill`` and cropped back at a random offset.

    Draws ``rng.integers(0, 2 s + 1, size=(2, B))``: the window's top rows, then its left columns,
    so image ``b`` becomes ``out[b, :, i, j] = xb[b, :, i + dy - s, j + dx - s]`` (``fill`` outside).
    """
    b, c, h, w = xb.shape
    padded = np.full((b, c, h + 2 * s, w + 2 * s), fill, dtype=xb.dtype)
    padded[:, :, s:s + h, s:s + w] = xb
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, b))
    rows = dy[:, None] + np.arange(h)  # (B, H): window start per image
    cols = dx[:, None] + np.arange(w)
    out = np.take_along_axis(padded, rows[:, None, :, None], axis=2)
    return np.take_along_axis(out, cols[:, None, None, :], axis=3)


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
        if self.max_shift == 0:
            return xb
        return _translate(xb, self.max_shift, self.fill, rng)

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill})"


class RandomCrop:
    """Pad each image by ``padding`` pixels of ``fill`` on every side, then crop an ``H x W`` window at random.

    ``RandomCrop(4)`` on 32x32 images is the ResNet CIFAR recipe (``torchvision``'s
    ``RandomCrop(32, padding=4)``): every crop position in the padded image is
    equally likely, i.e. a random shift in ``[-padding, padding]`` per axis with
    ``fill`` coming in.  ``fill`` is a black pixel: ``0.0`` for inputs in ``[0, 1]``,
    ``-mean / std`` for standardised inputs (torchvision pads before normalising).
    The draws are those of :class:`RandomShift` with ``max_shift=padding``.
    """

    def __init__(self, padding: int = 4, fill: float = 0.0) -> None:
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if xb.ndim != 4:
            raise ValueError(f"RandomCrop expects (B, C, H, W), got shape {xb.shape}")
        if self.padding == 0:
            return xb
        return _translate(xb, self.padding, self.fill, rng)

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding}, fill={self.fill})"


class RandomHorizontalFlip:
    """Mirror each image left-right (all channels) with probability ``p``; draws ``rng.random(B) < p``."""

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


_SIZED = re.compile(r"(shift|crop)([0-9]*)")
_DEFAULT_PIXELS = {"shift": 2, "crop": 4}


def parse_augment(spec: str, fill: float = 0.0) -> Transform | None:
    """The transform a spec names (grammar: :data:`SPEC_HELP`), or ``None`` for ``"none"`` / ``""``.

    Items apply left to right (one :class:`Compose` for several); ``fill`` is the padding
    value of ``shift`` and ``crop`` (a black pixel: ``-mean / std`` for standardised inputs).
    Case and spaces around items are ignored.

    Raises:
        ValueError: an unknown item, a malformed pixel count (``'shiftx'``), or ``'none'``
            combined with other items; the message names the item and lists the grammar.
        TypeError: ``spec`` is not a string.
    """
    if not isinstance(spec, str):
        raise TypeError(f"augmentation spec must be a string, got {type(spec).__name__}")
    parts = [p.strip().lower() for p in spec.split(",") if p.strip()]
    if "none" in parts:
        if len(parts) > 1:
            raise ValueError(f"augmentation 'none' cannot be combined with other items in {spec!r}")
        return None
    transforms: list[Transform] = []
    for part in parts:
        if part == "flip":
            transforms.append(RandomHorizontalFlip())
            continue
        match = _SIZED.fullmatch(part)
        if match is not None:
            kind, digits = match.groups()
            pixels = int(digits) if digits else _DEFAULT_PIXELS[kind]
            transforms.append(RandomShift(pixels, fill) if kind == "shift" else RandomCrop(pixels, fill))
        elif part.startswith(("shift", "crop")):
            kind = "shift" if part.startswith("shift") else "crop"
            raise ValueError(
                f"invalid augmentation {part!r} in {spec!r}: {kind!r} takes an optional whole number of pixels "
                f"(e.g. '{kind}{_DEFAULT_PIXELS[kind]}'), got {part[len(kind):]!r}; expected {SPEC_HELP}"
            )
        else:
            raise ValueError(f"unknown augmentation {part!r} in {spec!r}; expected {SPEC_HELP}")
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else Compose(transforms)


def build(spec: str, fill: float = 0.0) -> Transform | None:
    """The former name of :func:`parse_augment` (same arguments, same result)."""
    return parse_augment(spec, fill)
