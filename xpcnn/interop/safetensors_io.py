"""Model weights to and from ``.safetensors`` files (readable by ``safetensors.numpy`` and ``safetensors.torch``).

:func:`save_safetensors` writes every entry of ``model.state_dict()`` under xpcnn's names
(``"<layer index>.<key>"``: ``"0.W"``, ``"0.b"``, ``"1.gamma"``, ``"1.running_mean"``, ...; composites
nest, ``"3.body.0.W"``) in xpcnn's layouts (conv ``W: (F, C/groups, KH, KW)`` as in PyTorch, dense
``W: (in, out)``, the transpose of ``torch.nn.Linear.weight``).  With ``names="torch"`` it writes the
model's PyTorch twin's ``state_dict`` instead (``"0.weight"``, Linear weights transposed), which
``to_torch(model).load_state_dict(safetensors.torch.load_file(path))`` takes as it is.  The file's
metadata holds the architecture (``Sequential.config()`` as JSON), so :func:`load_safetensors` can
rebuild the model without code; no pickle is involved anywhere.

:func:`load_safetensors` reads either naming: a file saved by xpcnn, or a PyTorch ``state_dict``
saved with ``safetensors.torch.save_file`` (then ``model=`` gives the architecture).

>>> import os, tempfile
>>> from xpcnn import models
>>> model = models.lenet5(rng=0)
>>> path = os.path.join(tempfile.mkdtemp(), "lenet5.safetensors")
>>> save_safetensors(model, path)
>>> from safetensors.numpy import load_file
>>> load_file(path)["0.W"].shape
(6, 1, 5, 5)
>>> again = load_safetensors(path)                  # architecture from the file's metadata
>>> bool((again.layers[0].params["W"] == model.layers[0].params["W"]).all())
True
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from .. import backend as B
from ..model import Sequential
from .twins import InteropError, state_names, torch_state_to_xpcnn, xpcnn_state_to_torch

__all__ = ["FORMAT", "load_safetensors", "read_tensors", "save_safetensors"]

#: ``metadata["format"]`` of files written here
FORMAT = "xpcnn"


def save_safetensors(model: Sequential, path: str | os.PathLike[str], *, names: str = "xpcnn",
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s parameters and buffers to ``path`` atomically (temporary file, then rename).

    ``names``: ``"xpcnn"`` (xpcnn's state-dict names and layouts) or ``"torch"`` (the PyTorch twin's).
    ``metadata``: extra string entries for the file's header.
    """
    if names == "xpcnn":
        tensors = {k: np.ascontiguousarray(B.to_numpy(v)) for k, v in model.state_dict().items()}
    elif names == "torch":
        tensors = xpcnn_state_to_torch(model)
    else:
        raise ValueError(f"names must be 'xpcnn' or 'torch', got {names!r}")
    meta = {"format": FORMAT, "names": names, "architecture": json.dumps(model.config())}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata maps strings to strings, got {key!r}: {value!r}")
        meta[key] = value
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(name -> host array, metadata)`` of any ``.safetensors`` file, read with NumPy only."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged or foreign file
        raise InteropError(f"cannot read {path} as safetensors: {exc}") from exc
    return tensors, metadata


def load_safetensors(path: str | os.PathLike[str], model: Sequential | None = None) -> Sequential:
    """Load weights from ``path`` into ``model`` (or into a model rebuilt from the file's metadata).

    The file may use xpcnn's names or the PyTorch twin's (a ``state_dict`` saved by PyTorch); the
    names decide.  Arrays are cast to the model's dtypes.  Raises :class:`~xpcnn.interop.InteropError`
    when the names fit neither, naming what is missing and unexpected.
    """
    tensors, metadata = read_tensors(path)
    if model is None:
        if "architecture" not in metadata:
            raise InteropError(f"{path} has no xpcnn architecture in its metadata (not written by "
                               "save_safetensors?); pass model= to load it into a model you built")
        try:
            model = Sequential.from_config(json.loads(metadata["architecture"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise InteropError(f"{path}: cannot rebuild the model from its metadata: {exc}") from exc
    own = model.state_dict()
    if set(tensors) == set(own):
        model.load_state_dict({k: np.asarray(v).astype(B.dtype_name(own[k].dtype), copy=False)
                               for k, v in tensors.items()})
        return model
    torch_names = {t for _, t, _ in state_names(model)}
    if torch_names & set(tensors):
        model.load_state_dict(torch_state_to_xpcnn(model, tensors))
        return model
    raise InteropError(f"{path} fits neither the model's xpcnn names nor its PyTorch names: "
                       f"missing {sorted(set(own) - set(tensors))}, unexpected {sorted(set(tensors) - set(own))}")

