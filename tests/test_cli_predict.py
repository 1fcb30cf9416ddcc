"""``xpcnn predict`` (and ``evaluate``'s bad input): classify images from .npy, IDX and PNG files.

Oracles: the model's own logits on the same images normalised independently here; PNG files written
by an encoder in this file (one per PNG row filter, the filters written from the PNG specification)
and by matplotlib (Pillow); the pixels decoded must equal the pixels encoded.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_main

from xpcnn import backend as B
from xpcnn import checkpoint, cli_predict, models
from xpcnn.datasets import load_mnist, to_float

STATS = {"mean": 0.13, "std": 0.31}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A LeNet-5 checkpoint with the metadata `xpcnn train` writes (random weights are enough here)."""
    path = tmp_path_factory.mktemp("predict") / "checkpoint.npz"
    checkpoint.save(path, models.lenet5(rng=3), extra={"model": "lenet5", "dataset": "mnist",
                                                        "normalization": STATS, "input_shape": [1, 28, 28]})
    return path


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_mnist(progress=False)
    return ds.x_test[:12], ds.y_test[:12]


def _expected(ckpt: Path, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, _ = checkpoint.load_model(ckpt)
    x = (to_float(images_uint8) - np.float32(STATS["mean"])) / np.float32(STATS["std"])
    logits = B.to_numpy(model.predict(x.astype(np.float32))).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return logits.argmax(axis=1), p


def _predict_json(ckpt, *files, extra=()):
    rc, stdout, stderr = run_main(["predict", str(ckpt), *map(str, files), "--json", *extra])
    assert rc == 0, stderr
    return json.loads(stdout)


def test_npy_batch_and_single_image(ckpt, digits, tmp_path):
    images, _ = digits
    np.save(tmp_path / "batch.npy", images)
    np.save(tmp_path / "one.npy", images[3])
    np.save(tmp_path / "float.npy", images[:2].astype(np.float32) / 255)
    result = _predict_json(ckpt, tmp_path / "batch.npy", tmp_path / "one.npy", tmp_path / "float.npy",
                           extra=("--top", "3"))
    labels, probs = _expected(ckpt, images)
    assert [r["label"] for r in result[:12]] == labels.tolist()
    assert result[0]["image"] == f"{tmp_path / 'batch.npy'}[0]" and result[12]["image"] == str(tmp_path / "one.npy")
    assert result[12]["label"] == labels[3]
    assert [r["label"] for r in result[13:]] == labels[:2].tolist()  # x / 255 is what uint8 becomes
    for i, r in enumerate(result[:12]):
        assert len(r["top"]) == 3
        assert r["top"][0]["probability"] == pytest.approx(probs[i].max(), rel=1e-5)
        assert [t["probability"] for t in r["top"]] == sorted((t["probability"] for t in r["top"]), reverse=True)


def test_idx_file(ckpt, digits, tmp_path):
    images, _ = digits
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(__import__("gzip").compress(_idx_bytes(images)))
    result = _predict_json(ckpt, path)
    assert [r["label"] for r in result] == _expected(ckpt, images)[0].tolist()


def _idx_bytes(images: np.ndarray) -> bytes:
    """IDX3 by hand (magic 0x00000803, three big-endian sizes, the bytes), independent of the reader."""
    return struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes()


def _png(pixels: np.ndarray, filter_type: int, color: int = 0) -> bytes:
    """A PNG encoder from the specification (section 9: filters; 11.2.2: IHDR), independent of the reader."""
    h, w = pixels.shape[:2]
    bpp = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(h, w * bpp).astype(np.int64)
    raw = bytearray()
    prev = np.zeros(w * bpp, np.int64)
    for row in rows:
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if filter_type == 0:
            f = row
        elif filter_type == 1:
            f = row - left
        elif filter_type == 2:
            f = row - prev
        elif filter_type == 3:
            f = row - (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - up_left)
            f = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        raw.append(filter_type)
        raw += bytes((f % 256).astype(np.uint8))
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
def test_png_reader_every_filter(tmp_path, filter_type):
    rng = np.random.default_rng(filter_type)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    path = tmp_path / "g.png"
    path.write_bytes(_png(grey, filter_type))
    np.testing.assert_array_equal(cli_predict.read_png(path), grey)
    rgba = np.repeat(grey[:, :, None], 4, axis=2)
    rgba[..., 3] = 255
    path.write_bytes(_png(rgba, filter_type, color=6))
    np.testing.assert_array_equal(cli_predict.read_png(path), grey)  # R = G = B: grey is exact


def test_png_written_and_read_by_matplotlib(ckpt, digits, tmp_path):
    """matplotlib (Pillow) writes the files and decodes them independently: the pixels must agree."""
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib writes and reads the PNG oracle")
    from matplotlib.image import imread

    images, _ = digits
    files, decoded = [], []
    for i in range(3):
        files.append(tmp_path / f"d{i}.png")
        plt.imsave(files[-1], images[i], cmap="gray", vmin=0, vmax=255)  # an RGBA PNG, R = G = B
        theirs = np.rint(imread(files[-1])[..., 0] * 255).astype(np.uint8)
        decoded.append(cli_predict.read_png(files[-1]))
        np.testing.assert_array_equal(decoded[-1], theirs)
        assert np.abs(decoded[-1].astype(int) - images[i]).max() <= 1  # the colormap rounds by at most 1
    result = _predict_json(ckpt, *files)
    assert [r["label"] for r in result] == _expected(ckpt, np.stack(decoded))[0].tolist()


def test_text_output_is_one_line_per_image(ckpt, digits, tmp_path):
    np.save(tmp_path / "b.npy", digits[0][:4])
    rc, stdout, _ = run_main(["predict", str(ckpt), str(tmp_path / "b.npy")])
    assert rc == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{tmp_path / 'b.npy'}[0]\t")


# ------------------------------------------------------------------------------------------- bad input


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["missing"] = tmp_path / "missing.npy"
    (tmp_path / "d").mkdir()
    files["dir"] = tmp_path / "d"
    files["txt"] = tmp_path / "notes.txt"
    files["txt"].write_text("hello")
    files["size"] = tmp_path / "big.npy"
    np.save(files["size"], np.zeros((2, 32, 32), np.uint8))
    files["range"] = tmp_path / "range.npy"
    np.save(files["range"], np.full((1, 28, 28), 255.0, np.float32))
    files["nan"] = tmp_path / "nan.npy"
    np.save(files["nan"], np.full((1, 28, 28), np.nan, np.float32))
    files["dtype"] = tmp_path / "int.npy"
    np.save(files["dtype"], np.zeros((1, 28, 28), np.int32))
    files["rank"] = tmp_path / "rank.npy"
    np.save(files["rank"], np.zeros(28, np.uint8))
    files["pickle"] = tmp_path / "obj.npy"
    np.save(files["pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files["png"] = tmp_path / "broken.png"
    files["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    files["png16"] = tmp_path / "deep.png"
    body = struct.pack(">IIBBBBB", 2, 2, 16, 0, 0, 0, 0)
    files["png16"].write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + body + b"\0" * 4 +
                               struct.pack(">I", 1) + b"IDAT" + b"x" + b"\0" * 4)
    return files


@pytest.mark.parametrize("key, needles", [
    ("missing", ["missing.npy: no such file"]),
    ("dir", ["not a file"]),
    ("txt", ["unknown image file type", ".npy, .png or an IDX file"]),
    ("size", ["images of shape (1, 32, 32), but the model takes (1, 28, 28)"]),
    ("range", ["floating images must hold finite pixel values in [0, 1]", "[255, 255]"]),
    ("nan", ["floating images must hold finite pixel values in [0, 1]"]),
    ("dtype", ["expected uint8 or floating images, got dtype int32"]),
    ("rank", ["expected images of shape (H, W), (N, H, W) or (N, C, H, W), got (28,)"]),
    ("pickle", ["cannot read images", "pickle"]),
    ("png", ["truncated PNG"]),
    ("png16", ["unsupported PNG (bit depth 16"]),
])
def test_predict_bad_images(ckpt, tmp_path, key, needles):
    path = _bad_files(tmp_path)[key]
    rc, stdout, stderr = run_main(["predict", str(ckpt), str(path)])
    assert_one_line_error(rc, stderr, 2, *needles)
    assert stdout == ""


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_bad_checkpoints(tmp_path, command, digits):
    np.save(tmp_path / "x.npy", digits[0][:1])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip")
    bare = tmp_path / "bare.npz"
    checkpoint.save(bare, models.lenet5(rng=0))
    cases = [(tmp_path / "missing.npz", "no such checkpoint"), (garbage, "truncated or corrupt"),
             (tmp_path, "is a directory; pass the checkpoint file"),
             (bare, "has no normalization statistics; it was not written by `xpcnn train`")]
    for path, needle in cases:
        argv = [command, str(path)] + ([str(tmp_path / "x.npy")] if command == "predict" else [])
        rc, _, stderr = run_main(argv)
        assert_one_line_error(rc, stderr, 2, needle)


def test_predict_needs_images(ckpt):
    rc, _, stderr = run_main(["predict", str(ckpt)])
    assert_one_line_error(rc, stderr, 2, "the following arguments are required: IMAGE")


def test_evaluate_bad_arguments(ckpt, tmp_path):
    rc, _, stderr = run_main(["evaluate", str(ckpt), "--batch-size", "0"])
    assert_one_line_error(rc, stderr, 2, "--batch-size", "got 0")
    rc, _, stderr = run_main(["evaluate", str(ckpt), "--data-dir", str(tmp_path / "nowhere")])
    assert_one_line_error(rc, stderr, 2, "nowhere: no such file or directory")
    rc, _, stderr = run_main(["evaluate", str(ckpt), "--backend", "nope"])
    assert_one_line_error(rc, stderr, 2, "unknown backend 'nope'")
