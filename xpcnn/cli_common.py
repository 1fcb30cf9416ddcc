"""Pieces the ``xpcnn`` commands share: errors with exit codes, loading a data set by name, normalising
images with a run's statistics, making a run directory, and turning SIGTERM into an exception.

Exit codes: 0 success, 1 the training failed (diverged, disk full), 2 bad usage or input,
130 interrupted by Ctrl-C, 143 terminated by SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Dataset, images_as_float, load_arrays, load_fashion_mnist, load_mnist, standardize
from .datasets.sources import DATA_ENV_VAR

__all__ = ["CLIError", "DATASETS", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USAGE",
           "Terminated", "load_data", "make_run_dir", "normalize", "one_line", "probe_writable", "remove_if_unused",
           "sigterm_raises"]

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class CLIError(Exception):
    """An error the CLI reports as one line, with its exit ``code`` (2: bad usage or input, 1: failure)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """SIGTERM, raised like ``KeyboardInterrupt`` so that ``finally`` blocks (and atomic saves) clean up."""


def one_line(text: str) -> str:
    r"""``text`` with its lines joined by ``"; "`` (``" "`` after a colon) and runs of spaces collapsed.

    >>> one_line("searched:\n  a: missing\n  b: missing")
    'searched: a: missing; b: missing'
    """
    out = ""
    for part in (" ".join(line.split()) for line in str(text).splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------- data


def _load_npz(path: str | None) -> Dataset:
    if not path:
        raise CLIError("--dataset npz needs --data PATH, an .npz file with x_train, y_train, x_test, y_test")
    return load_arrays(path)


#: data sets the CLI can load by name: ``name -> loader(data_dir)``
DATASETS: dict[str, Callable[[str | None], Dataset]] = {
    "mnist": lambda d: load_mnist(d, progress=False),
    "fashion-mnist": lambda d: load_fashion_mnist(d, progress=False),
    "npz": _load_npz,
}


def load_data(name: str, data_dir: str | None) -> Dataset:
    """The data set ``name`` (a key of :data:`DATASETS`) from ``data_dir`` or the loaders' lookup order.

    A bad ``$XPCNN_DATA`` (set, but not a directory) or ``data_dir`` (missing) is an error before any
    search; the loaders' per-mirror download warnings are dropped (the error names every mirror).
    """
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env and not Path(env).expanduser().is_dir():
        raise CLIError(f"${DATA_ENV_VAR}={env} is not a directory (expected a data root with one "
                       "subdirectory per data set, e.g. mnist/)")
    if data_dir is not None and not Path(data_dir).expanduser().exists():
        raise CLIError(f"--data {data_dir}: no such file or directory")
    if data_dir is not None and name != "npz" and not Path(data_dir).expanduser().is_dir():
        raise CLIError(f"--data-dir {data_dir} is not a directory (expected the four IDX files of {name})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return DATASETS[name](data_dir)


def normalize(images: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Images (N, H, W) or (N, C, H, W), uint8 or floating -> float32 (N, C, H, W) standardised with the
    run's ``mean`` and ``std`` (uint8 pixels are scaled to ``[0, 1]`` first)."""
    return standardize(images_as_float(images), stats["mean"], stats["std"])[0]


# ------------------------------------------------------------------------------------------- run directory


def make_run_dir(out: str | None, default_stem: str) -> tuple[Path, bool]:
    """Create the run directory: ``out`` (new, or an existing empty directory), else a fresh
    ``runs/<default_stem>-<time>[-k]`` that no other run has (``mkdir`` is atomic, so two runs started
    in the same second get different names).  Raises :class:`CLIError` when ``out`` is a file, a
    non-empty directory or cannot be created.  Returns ``(path, created)``.
    """
    if out is not None:
        path = Path(out).expanduser()
        created = not path.exists()
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {out} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise CLIError(f"--out {out} is not empty; choose a new directory (runs never overwrite each other)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"--out {out}: cannot create the run directory: {exc.strerror or exc}") from None
    else:
        stem = Path("runs") / f"{default_stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            stem.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIError(f"cannot create {stem.parent}/ for the run directory: {exc.strerror or exc}") from None
        for k in range(1, 10_000):
            path = stem if k == 1 else stem.with_name(f"{stem.name}-{k}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise CLIError(f"cannot create the run directory {path}: {exc.strerror or exc}") from None
        created = True
    return path, created


def probe_writable(directory: Path, size: int) -> None:
    """Write, fsync and delete ``size`` bytes in ``directory`` (a full disk or a read-only place fails here,
    before training, instead of at the first checkpoint)."""
    probe = directory / ".xpcnn-write-test"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CLIError(f"cannot write to the run directory {directory}: {reason}") from None
    finally:
        with contextlib.suppress(OSError):
            if probe.is_file() and not probe.is_symlink():  # never anything but the regular file made here
                probe.unlink()


def remove_if_unused(directory: Path, created: bool, keep: str = "checkpoint.npz") -> bool:
    """When the run directory holds no ``keep`` file (a run that failed before its first checkpoint),
    delete it (``created``: this process made it) or empty it (it was an empty ``--out``); returns
    whether it did."""
    if not directory.is_dir() or (directory / keep).exists():
        return False
    if created:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        for child in directory.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    return True
