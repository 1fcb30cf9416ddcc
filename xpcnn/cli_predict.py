"""``xpcnn predict CHECKPOINT IMAGE...``: classify images from ``.npy``, IDX or PNG files.

Images are normalised with the run's statistics (stored in the checkpoint) exactly as in training:
uint8 pixels (``0..255``) are scaled to ``[0, 1]``, floating ``.npy`` images must already be in
``[0, 1]``.  They must have the size the model was trained on (28x28 for the MNIST recipes);
white-on-black like MNIST.  PNG support covers 8-bit greyscale, RGB, greyscale+alpha and RGBA
(non-interlaced), read with :mod:`zlib` only; colour is converted to grey (ITU-R BT.601 weights).
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import backend as B
from . import cli_common
from .cli_common import CLIError
from .cli_evaluate import load_checkpoint
from .datasets import DatasetError, read_idx

__all__ = ["cmd_predict", "read_images", "read_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _unfilter(raw: bytes, height: int, width: int, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth); returns (height, width * bpp) uint8."""
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError(f"image data has {len(raw)} bytes, expected {height * (stride + 1)}")
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for r in range(height):
        kind = raw[r * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, r * (stride + 1) + 1).astype(np.int64)
        cur = np.zeros(stride, dtype=np.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 0xFF
        else:
            raise ValueError(f"row {r} has an unknown filter type {kind}")
        out[r] = cur
        prev = cur
    return out


def read_png(path: Path) -> np.ndarray:
    """An 8-bit PNG as a uint8 greyscale image (H, W); ValueError naming what is unsupported or broken."""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file (bad signature)")
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError(f"{path}: truncated PNG ({kind!r} chunk)")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f"{path}: truncated PNG (no IHDR or IDAT chunk)")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in _CHANNELS or interlace:
        raise ValueError(f"{path}: unsupported PNG (bit depth {depth}, colour type {color}, interlace {interlace}); "
                         "expected 8-bit greyscale, RGB, grey+alpha or RGBA, not interlaced")
    channels = _CHANNELS[color]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"{path}: corrupt PNG image data ({exc})") from None
    try:
        pixels = _unfilter(raw, height, width, channels).reshape(height, width, channels)
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt PNG: {exc}") from None
    if channels >= 3:
        grey = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return pixels[..., 0].copy()


def read_images(path: Path) -> np.ndarray:
    """The images in one file as (N, H, W) or (N, C, H, W), uint8 or floating in [0, 1]."""
    if not path.is_file():
        raise CLIError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            images = np.load(path, allow_pickle=False)
        elif name.endswith(".png"):
            images = read_png(path)
        elif "idx" in name or "ubyte" in name:
            images = read_idx(path)
        else:
            raise CLIError(f"{path}: unknown image file type; expected .npy, .png or an IDX file (*-idx3-ubyte[.gz])")
    except (ValueError, DatasetError, OSError) as exc:
        raise CLIError(f"{path}: cannot read images: {exc}") from None
    if images.ndim == 2:
        images = images[None]
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise CLIError(f"{path}: expected images of shape (H, W), (N, H, W) or (N, C, H, W), got {images.shape}")
    if images.dtype.kind == "f":
        finite = np.isfinite(images)
        if not finite.all() or images.min() < 0.0 or images.max() > 1.0:
            got = (f"{images.size - int(finite.sum())} NaN or infinite values" if not finite.all()
                   else f"values in [{images.min():g}, {images.max():g}]")
            raise CLIError(f"{path}: floating images must hold finite pixel values in [0, 1] (uint8 images are "
                           f"scaled by 1/255); got {got}")
    elif images.dtype != np.uint8:
        raise CLIError(f"{path}: expected uint8 or floating images, got dtype {images.dtype}")
    return images


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the predicted class (and probability) of every image; returns 0."""
    if args.backend:
        B.set_backend(args.backend)
    model, meta, stats = load_checkpoint(args.checkpoint)
    input_shape = tuple((meta.get("extra") or {}).get("input_shape", (1, 28, 28)))
    results: list[dict[str, Any]] = []
    for file in args.images:
        path = Path(file)
        x = cli_common.normalize(read_images(path), stats)
        if tuple(x.shape[1:]) != input_shape:
            raise CLIError(f"{path}: images of shape {tuple(x.shape[1:])}, but the model takes {input_shape}")
        logits = B.to_numpy(model.predict(x)).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :args.top]
        for i in range(x.shape[0]):
            source = str(path) if x.shape[0] == 1 else f"{path}[{i}]"
            results.append({"image": source, "label": int(top[i, 0]),
                             "top": [{"label": int(k), "probability": float(probs[i, k])} for k in top[i]]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']}\t" + "  ".join(f"{t['label']} ({t['probability']:.4f})" for t in r["top"]))
    return 0
