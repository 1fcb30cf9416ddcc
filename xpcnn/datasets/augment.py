"""Host-side data augmentation for image batches ``(B, C, H, W)``, drawn from the loader's RNG.

A transform is a callable ``transform(xb, rng) -> xb`` on a NumPy batch; the
:class:`~xpcnn.datasets.loader.BatchIterator` applies it before moving the batch
to the backend, with its own seeded host generator, so augmented runs are
reproducible, resume exactly, and give the same numbers on every backend.

On the device (``BatchIterator(..., on_device=True)``): every transform here also splits
into ``draw(n, rng)`` (its random parameters for ``n`` images, drawn on the host exactly as
``__call__`` draws them) and ``apply(xb, params)`` (any Array API namespace and device), so the
loader draws a whole epoch's parameters on the host, copies them to the device once and applies
them there: the same seed gives the same batches as the host path.

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
from typing import Any

import array_api_compat
import numpy as np

from ..backend import device_scope

__all__ = [
    "SPEC_HELP",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomShift",
    "Transform",
    "build",
    "concat_params",
    "map_params",
    "on_device",
    "parse_augment",
    "slice_params",
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
    return _translate_host(xb, s, fill, _draw_offsets(xb.shape[0], s, rng))


def _draw_offsets(n: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """``(2, n)`` window offsets in ``[0, 2 s]``: rows, then columns."""
    return rng.integers(0, 2 * s + 1, size=(2, n))


def _translate_host(xb: np.ndarray, s: int, fill: float, offsets: np.ndarray) -> np.ndarray:
    b, c, h, w = xb.shape
    padded = np.full((b, c, h + 2 * s, w + 2 * s), fill, dtype=xb.dtype)
    padded[:, :, s:s + h, s:s + w] = xb
    dy, dx = offsets
    rows = dy[:, None] + np.arange(h)  # (B, H): window start per image
    cols = dx[:, None] + np.arange(w)
    out = np.take_along_axis(padded, rows[:, None, :, None], axis=2)
    return np.take_along_axis(out, cols[:, None, None, :], axis=3)


def _translate_xp(xb: Any, s: int, fill: float, offsets: Any) -> Any:
    """:func:`_translate_host` on any namespace and device: one gather of a flat index.

    xb: (B, C, H, W); offsets: (2, B) integers on ``xb``'s device.
    """
    xp = array_api_compat.array_namespace(xb)
    dev = array_api_compat.device(xb)
    b, c, h, w = xb.shape
    hp, wp = h + 2 * s, w + 2 * s
    padded = xp.full((b, c, hp, wp), fill, dtype=xb.dtype, device=dev)
    padded[:, :, s:s + h, s:s + w] = xb
    offsets = xp.astype(offsets, xp.int64)
    rows = xp.reshape(offsets[0, ...], (b, 1, 1)) + xp.reshape(xp.arange(h, dtype=xp.int64, device=dev), (1, h, 1))
    cols = xp.reshape(offsets[1, ...], (b, 1, 1)) + xp.reshape(xp.arange(w, dtype=xp.int64, device=dev), (1, 1, w))
    flat = xp.reshape(rows * wp + cols, (b, 1, h * w))  # (B, 1, H*W): source pixel in the padded image
    out = xp.take_along_axis(xp.reshape(padded, (b, c, hp * wp)), xp.broadcast_to(flat, (b, c, h * w)), axis=2)
    return xp.reshape(out, (b, c, h, w))


def _apply_translate(xb: Any, s: int, fill: float, offsets: Any) -> Any:
    if isinstance(xb, np.ndarray):
        return _translate_host(xb, s, fill, np.asarray(offsets))
    with device_scope(xb):  # CuPy creates on the current GPU, whatever device= says
        return _translate_xp(xb, s, fill, offsets)


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

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """The parameters ``__call__`` would draw for ``n`` images: offsets ``(2, n)`` (None when a no-op)."""
        return None if self.max_shift == 0 else _draw_offsets(n, self.max_shift, rng)

    def apply(self, xb: Any, params: Any) -> Any:
        """Shift ``xb: (B, C, H, W)`` (any namespace) by the offsets from :meth:`draw`."""
        return xb if params is None else _apply_translate(xb, self.max_shift, self.fill, params)

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

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """The parameters ``__call__`` would draw for ``n`` images: offsets ``(2, n)`` (None when a no-op)."""
        return None if self.padding == 0 else _draw_offsets(n, self.padding, rng)

    def apply(self, xb: Any, params: Any) -> Any:
        """Crop ``xb: (B, C, H, W)`` (any namespace) at the offsets from :meth:`draw`."""
        return xb if params is None else _apply_translate(xb, self.padding, self.fill, params)

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

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The parameters ``__call__`` would draw for ``n`` images: which to flip, ``(n,)`` bool."""
        return rng.random(n) < self.p

    def apply(self, xb: Any, params: Any) -> Any:
        """Flip the images of ``xb: (B, C, H, W)`` (any namespace) that :meth:`draw` chose."""
        if isinstance(xb, np.ndarray):
            flip = np.asarray(params)
            out = xb.copy()
            out[flip] = xb[flip][..., ::-1]
            return out
        xp = array_api_compat.array_namespace(xb)
        mask = xp.reshape(params, (xb.shape[0],) + (1,) * (xb.ndim - 1))
        return xp.where(mask, xp.flip(xb, axis=-1), xb)

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

    def draw(self, n: int, rng: np.random.Generator) -> tuple[Any, ...]:
        """Each transform's parameters for ``n`` images, in order (the draws ``__call__`` makes)."""
        return tuple(t.draw(n, rng) for t in self.transforms)  # type: ignore[attr-defined]

    def apply(self, xb: Any, params: tuple[Any, ...]) -> Any:
        for t, p in zip(self.transforms, params, strict=True):
            xb = t.apply(xb, p)  # type: ignore[attr-defined]
        return xb

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def on_device(transform: Any) -> bool:
    """``transform`` can run on device arrays: it has ``draw(n, rng)`` and ``apply(xb, params)``
    (every transform here does; a Compose only if all its parts do)."""
    if isinstance(transform, Compose):
        return all(on_device(t) for t in transform.transforms)
    return callable(getattr(transform, "draw", None)) and callable(getattr(transform, "apply", None))


def concat_params(parts: Sequence[Any]) -> Any:
    """Parameters of consecutive batches joined along their last (image) axis, leaf by leaf.

    Leaves are host arrays whose last axis is the image (offsets ``(2, n)``, flips ``(n,)``) or None.
    """
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(concat_params([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate([np.asarray(p) for p in parts], axis=-1)


def map_params(params: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to every array leaf of ``params`` (None stays None)."""
    if params is None:
        return None
    if isinstance(params, tuple):
        return tuple(map_params(p, fn) for p in params)
    return fn(params)


def slice_params(params: Any, start: int, stop: int) -> Any:
    """The images ``start:stop`` of joined parameters (on the host or the device)."""
    return map_params(params, lambda a: a[..., start:stop])


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
