"""Shared pieces of the CLI tests (test_cli*.py): the real bundled MNIST with a 1000-image test split,
in-process ``xpcnn`` runs with captured output, and ``python -m xpcnn`` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpcnn import backend as B
from xpcnn import cli, cli_common
from xpcnn.datasets import Dataset, load_mnist

N_TEST = 1000
LIMIT = 1500
REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_mnist_dataset() -> Dataset:
    ds = load_mnist(progress=False)
    return Dataset(ds.x_train, ds.y_train, ds.x_test[:N_TEST], ds.y_test[:N_TEST])


@contextlib.contextmanager
def patched_data(dataset: Dataset):
    """Every `load_data` of the CLI returns ``dataset`` (the test split cut to 1000 images for speed)."""
    calls = []

    def load(name, data_dir):
        calls.append((name, data_dir))
        assert name == "mnist"
        return dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_common, "load_data", load)
        yield calls


@contextlib.contextmanager
def kept_backend():
    """`--backend` calls set_backend; never let a test leak its choice into the next one."""
    token = B._explicit.set(B._explicit.get())
    try:
        yield
    finally:
        B._explicit.reset(token)


def run_main(argv, dataset=None) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process: ``(exit status, stdout, stderr)``; SystemExit gives its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), kept_backend():
        try:
            if dataset is None:
                rc = cli.main(argv)
            else:
                with patched_data(dataset):
                    rc = cli.main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def train_argv(out: Path | None, *extra: str, limit: int = LIMIT, epochs: int = 1) -> list[str]:
    argv = ["train", "--limit", str(limit), "--epochs", str(epochs), "--no-progress", "--model", "lenet5", *extra]
    return argv + (["--out", str(out)] if out is not None else [])


def python_m(*args: str, env_extra: dict[str, str] | None = None, cwd: Path = REPO,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m xpcnn ARGS`` with $XPCNN_BACKEND unset (plus ``env_extra``)."""
    env = {k: v for k, v in os.environ.items() if k != B.ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "xpcnn", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(rc: int, stderr: str, code: int, *needles: str) -> None:
    """The CLI's error contract: exit ``code``, exactly one line on stderr naming the needles, no traceback."""
    assert rc == code, (rc, stderr)
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR" and b"IEND" in data[-12:]
