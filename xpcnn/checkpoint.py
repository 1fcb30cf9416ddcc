"""Checkpoints without pickle: one ``.npz`` file of plain arrays plus JSON metadata, written atomically.

Layout of the file (an uncompressed zip, readable by ``numpy.load(..., allow_pickle=False)``):

* ``model/<name>``     every model parameter and buffer (``state_dict()`` names)
* ``optim/<slot>``     optimizer state arrays (``"0.W/m"``, ...)
* ``__meta__``         uint8 bytes of a JSON document: format and version, the
  model architecture (``Sequential.config()``), optimizer type, hyper-parameters
  and step, scheduler state, epoch, RNG states, training history, user extras.

Loading never executes code: the architecture is rebuilt from registered layer
types only, and every array is checked against the model's shapes and dtypes.
The file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then renamed over the target (and the directory ``fsync``-ed), so a
crash leaves either the old checkpoint or the new one, never a torn file.  The
file gets the usual permissions (``0666`` less the umask), not the temporary's
``0600``; temporaries a killed process left behind are removed by
:func:`remove_stale_temporaries` (``ModelCheckpoint`` calls it when it starts).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import backend as B
from .model import Sequential

__all__ = ["CheckpointError", "FORMAT", "VERSION", "load", "load_model", "remove_stale_temporaries", "restore",
           "save"]

FORMAT = "xpcnn-checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
    """The file is missing, truncated, corrupt, or does not match what it is loaded into."""


def save(path: str | os.PathLike[str], model: Sequential, optimizer: Any = None, *, scheduler: Any = None,
         epoch: int = 0, rng_state: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (+ optimizer, scheduler, epoch, RNG state, history) to ``path`` atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {f"model/{k}": B.to_numpy(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "epoch": int(epoch),
        "model_config": model.config(), "optimizer": None, "scheduler": None,
        "rng_state": rng_state, "history": history or [], "extra": extra or {},
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        arrays.update({f"optim/{k}": B.to_numpy(v) for k, v in state["slots"].items()})
        meta["optimizer"] = {k: v for k, v in state.items() if k != "slots"}
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    arrays[_META] = np.frombuffer(meta_bytes, dtype=np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            savez: Any = np.savez  # (numpy's stubs take a second positional for allow_pickle)
            savez(f, **arrays)
            f.flush()
            os.chmod(tmp, 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: fsync the directory entry (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries ``.<name>.*.tmp`` that an interrupted :func:`save` to ``path`` left; returns them.

    :func:`save` removes its temporary on any exception, ``SIGTERM`` included when the process turns it
    into one (``xpcnn train`` does); only ``SIGKILL`` or a power cut leave one behind.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def load(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a checkpoint: ``(meta, model_arrays, optimizer_arrays)``, arrays as host NumPy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {name: npz[name] for name in npz.files}
    except Exception as exc:  # BadZipFile, EOFError, ValueError, but also NotImplementedError, TokenError, ...
        raise CheckpointError(f"{path} is not a readable xpcnn checkpoint (truncated or corrupt?): {exc}") from exc
    if _META not in contents:
        raise CheckpointError(f"{path} has no {_META} entry: not an xpcnn checkpoint")
    raw_meta = contents.pop(_META)
    if not isinstance(raw_meta, np.ndarray) or raw_meta.dtype != np.uint8:
        raise CheckpointError(f"{path}: {_META} is not a uint8 array (a plain zip member?): not an xpcnn checkpoint")
    try:
        meta = json.loads(raw_meta.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: expected format {FORMAT!r}, got {found!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is not supported "
                              f"(this xpcnn reads version {VERSION})")
    missing = [key for key in ("epoch", "model_config") if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {missing}")
    model_arrays = {k[len("model/"):]: v for k, v in contents.items() if k.startswith("model/")}
    optim_arrays = {k[len("optim/"):]: v for k, v in contents.items() if k.startswith("optim/")}
    return meta, model_arrays, optim_arrays


def restore(path: str | os.PathLike[str], model: Sequential, optimizer: Any = None,
            scheduler: Any = None) -> dict[str, Any]:
    """Load a checkpoint into existing objects (on their backend); returns the metadata.

    The scheduler keeps its own settings and takes only its progress from the checkpoint
    (so a run resumed with more epochs stretches a cosine schedule to the new length).

    Raises :class:`CheckpointError` when the architecture or the optimizer type differs; then
    the model, optimizer and scheduler are left exactly as they were (all or nothing).
    """
    meta, model_arrays, optim_arrays = load(path)
    if meta["model_config"] != model.config():
        raise CheckpointError(f"{path}: the checkpoint's architecture differs from the model's:\n"
                              f"  checkpoint: {meta['model_config']}\n  model:      {model.config()}")
    # Host copies: loading writes into the flat stores' views (xpcnn.flat), which state_dict() returns.
    before_optim = None
    if optimizer is not None:
        before_optim = optimizer.state_dict()
        before_optim["slots"] = {k: B.to_numpy(v).copy() for k, v in before_optim["slots"].items()}
    before = ({k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}, before_optim,
              scheduler and scheduler.state_dict())
    try:
        model.load_state_dict(model_arrays)
        if optimizer is not None:
            if meta.get("optimizer") is None:
                raise CheckpointError(f"{path} holds no optimizer state")
            optimizer.load_state_dict({**meta["optimizer"], "slots": optim_arrays})
        if scheduler is not None and meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"], keep_config=True)
    except (ValueError, KeyError, TypeError) as exc:
        model.load_state_dict(before[0])
        if optimizer is not None:
            optimizer.load_state_dict(before[1])
        if scheduler is not None:
            scheduler.load_state_dict(before[2])
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path} does not match: {exc}") from exc
    return meta


def load_model(path: str | os.PathLike[str]) -> tuple[Sequential, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint on the current backend; returns ``(model, meta)``."""
    meta, model_arrays, _ = load(path)
    try:
        model = Sequential.from_config(meta["model_config"])
        model.load_state_dict(model_arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    return model, meta
