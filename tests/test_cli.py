"""Tests for the ``xpcnn`` command line (:mod:`xpcnn.cli`), in-process and as ``python -m xpcnn``.

Training runs use the real bundled MNIST: the first ``--limit`` training images
and, to keep the suite fast, the first 1000 test images (the loader is wrapped
to slice the test split; everything else is the real code path).  Results are
checked against independent computations on the written files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import checkpoint, cli, cli_common
from xpcnn.datasets import Dataset, load_mnist, to_float

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_TEST = 1000
LIMIT = 1500
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_mnist() -> Dataset:
    ds = load_mnist(progress=False)
    return Dataset(ds.x_train, ds.y_train, ds.x_test[:N_TEST], ds.y_test[:N_TEST])


@contextlib.contextmanager
def _patched_data(dataset: Dataset):
    calls = []

    def load(name, data_dir):
        calls.append((name, data_dir))
        assert name == "mnist"
        return dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_common, "load_data", load)
        yield calls


@pytest.fixture(autouse=True)
def _keep_backend():
    """`--backend` calls set_backend; never let a test leak its choice into the next one."""
    token = B._explicit.set(B._explicit.get())
    yield
    B._explicit.reset(token)


def _main(argv, dataset=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if dataset is None:
            rc = cli.main(argv)
        else:
            with _patched_data(dataset):
                rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _train_argv(out: Path, *extra: str, limit: int = LIMIT, epochs: int = 1) -> list[str]:
    return ["train", "--limit", str(limit), "--epochs", str(epochs), "--out", str(out), "--no-progress",
            "--model", "lenet5", *extra]


@pytest.fixture(scope="module")
def run(small_mnist, tmp_path_factory):
    """One real `xpcnn train` run shared by the tests that inspect its outputs."""
    out = tmp_path_factory.mktemp("cli") / "run"
    with B.using("numpy"):
        rc, stdout, stderr = _main(_train_argv(out), small_mnist)
    assert rc == 0, stderr
    return out, stdout, json.loads((out / "metrics.json").read_text())


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR" and b"IEND" in data[-12:]


# ------------------------------------------------------------------------------------------- train


def test_train_writes_the_run_directory(run):
    out, stdout, metrics = run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "confusion_matrix.png",
                                                     "learning_curves.png", "metrics.json"]
    _png(out / "learning_curves.png")
    _png(out / "confusion_matrix.png")
    assert "total" in stdout and "test accuracy" in stdout


def test_metrics_json(run):
    _, _, metrics = run
    assert metrics["model"] == "lenet5" and metrics["dataset"] == "mnist" and metrics["backend"] == "numpy"
    assert metrics["train_samples"] == LIMIT
    assert metrics["recipe"]["epochs"] == 1
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    entry = metrics["epochs"][0]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time_s"):
        assert isinstance(entry[key], float) and np.isfinite(entry[key]), key
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_accuracy"] > 0.5  # 1500 images, one epoch: clearly better than chance
    # without --val-split the validation set is the test set
    assert entry["val_accuracy"] == metrics["test_accuracy"]
    assert entry["val_loss"] == pytest.approx(metrics["test_loss"], rel=1e-12)
    assert metrics["train_time_s"] == pytest.approx(entry["time_s"])


def test_metrics_agree_with_an_independent_evaluation(run, small_mnist):
    out, _, metrics = run
    model, meta = checkpoint.load_model(out / "checkpoint.npz")
    assert meta["epoch"] == 1
    stats = meta["extra"]["normalization"]
    x_limit = to_float(small_mnist.x_train[:LIMIT]).astype(np.float64)
    assert stats["mean"] == pytest.approx(x_limit.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(x_limit.std(), rel=1e-9)
    x_test = ((to_float(small_mnist.x_test) - np.float32(stats["mean"])) / np.float32(stats["std"]))
    logits = B.to_numpy(model.predict(x_test.astype(np.float32)))
    accuracy = float(np.mean(logits.argmax(axis=1) == small_mnist.y_test))
    assert accuracy == metrics["test_accuracy"]
    assert meta["history"] == metrics["epochs"]


def test_evaluate_prints_the_same_test_accuracy(run, small_mnist):
    out, _, metrics = run
    rc, stdout, stderr = _main(["evaluate", str(out / "checkpoint.npz")], small_mnist)
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert result["test_accuracy"] == metrics["test_accuracy"]
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-9)
    assert result["epoch"] == 1 and result["dataset"] == "mnist"


def test_evaluate_on_another_backend(run, small_mnist):
    pytest.importorskip("torch")
    out, _, metrics = run
    rc, stdout, stderr = _main(["evaluate", str(out / "checkpoint.npz"), "--backend", "torch"], small_mnist)
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert abs(result["test_accuracy"] - metrics["test_accuracy"]) <= 2 / N_TEST  # float32 ties at most
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)


def test_evaluate_missing_checkpoint(tmp_path):
    rc, _, stderr = _main(["evaluate", str(tmp_path / "nope.npz")])
    assert rc == 2
    assert "xpcnn: error:" in stderr and "nope.npz" in stderr


def test_evaluate_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    rc, _, stderr = _main(["evaluate", str(bad)])
    assert rc == 2
    assert "truncated or corrupt" in stderr


def test_resume_continues_up_to_the_epoch_count(run, small_mnist, tmp_path):
    out, _, metrics = run
    ckpt = tmp_path / "from_run.npz"
    shutil.copy(out / "checkpoint.npz", ckpt)
    out2 = tmp_path / "resumed"
    with B.using("numpy"):
        rc, stdout, stderr = _main(_train_argv(out2, "--resume", str(ckpt), epochs=2), small_mnist)
    assert rc == 0, stderr
    assert f"resumed from {ckpt} at epoch 1" in stdout
    assert stdout.count("epoch 2/2") == 1 and "epoch 1/2" not in stdout  # only the missing epoch ran
    metrics2 = json.loads((out2 / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics2["epochs"]] == [1, 2]
    assert metrics2["epochs"][0] == metrics["epochs"][0]  # the first epoch comes from the checkpoint
    model, meta = checkpoint.load_model(out2 / "checkpoint.npz")
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


def test_resume_into_another_model_is_an_error(run, small_mnist, tmp_path):
    out, _, _ = run
    argv = _train_argv(tmp_path / "other", "--resume", str(out / "checkpoint.npz"), epochs=2)
    argv[argv.index("lenet5")] = "simple"
    with B.using("numpy"):
        rc, _, stderr = _main(argv, small_mnist)
    assert rc == 2
    assert "architecture" in stderr and "Conv2D" in stderr


def test_resumed_extra_epoch_learns(run, small_mnist, tmp_path):
    """Resuming with a larger --epochs stretches the cosine schedule: the extra epoch has lr > 0."""
    out, _, _ = run
    ckpt = tmp_path / "from_run.npz"
    shutil.copy(out / "checkpoint.npz", ckpt)
    with B.using("numpy"):
        rc, _, stderr = _main(_train_argv(tmp_path / "r", "--resume", str(ckpt), epochs=2), small_mnist)
    assert rc == 0, stderr
    before, _ = checkpoint.load_model(ckpt)
    after, meta = checkpoint.load_model(tmp_path / "r" / "checkpoint.npz")
    assert meta["history"][1]["lr"] > 0.0
    assert not np.array_equal(B.to_numpy(before[0].params["W"]), B.to_numpy(after[0].params["W"]))


def test_without_matplotlib_plots_are_skipped(small_mnist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "noplots"
    with B.using("numpy"):
        rc, stdout, stderr = _main(_train_argv(out, limit=200), small_mnist)
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.json"]
    notices = [line for line in stdout.replace(str(tmp_path), "<tmp>").splitlines() if "matplotlib" in line]
    assert len(notices) == 1 and "skipping plots" in notices[0]


def test_on_device_run(small_mnist, tmp_path):
    """--on-device works with the default lenet5 recipe (whose augmentation runs on the host)."""
    out = tmp_path / "ondev"
    with B.using("numpy"):
        rc, stdout, stderr = _main(_train_argv(out, "--on-device", limit=200), small_mnist)
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["augment"] == "none"
    # asking for both explicitly is an error, with a message
    with B.using("numpy"):
        rc, _, stderr = _main(_train_argv(tmp_path / "x", "--on-device", "--augment", "shift1", limit=200),
                              small_mnist)
    assert rc == 2 and "on_device" in stderr


# ------------------------------------------------------------------------------------------- errors


def test_bad_backend_exits_2_and_names_the_choices(tmp_path):
    out = tmp_path / "never"
    rc, stdout, stderr = _main(_train_argv(out, "--backend", "nope"))
    assert rc == 2
    assert stderr.startswith("xpcnn: error:") and "'nope'" in stderr
    for name in ("numpy", "cupy", "torch", "array_api_strict"):
        assert name in stderr
    assert not out.exists()  # failed before doing anything
    assert B.get_backend().name == B._resolve(B._env_spec()).name  # the failed switch changed nothing
    rc, _, stderr = _main(["evaluate", str(tmp_path / "c.npz"), "--backend", "nope"])
    assert rc == 2 and "'nope'" in stderr


@pytest.mark.parametrize("argv, needle", [
    (["train", "--model", "resnet"], "lenet5"),
    (["train", "--optimizer", "lbfgs"], "adam"),
    (["train", "--epochs", "three"], "invalid int"),
    ([], "command"),
    (["frobnicate"], "invalid choice"),
])
def test_argparse_errors_exit_2(argv, needle):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert needle in err.getvalue()


# ------------------------------------------------------------------------------------------- info


def test_info_in_process():
    with B.using("numpy"):
        rc, stdout, _ = _main(["info"])
    assert rc == 0
    result = json.loads(stdout)
    assert result["backend"] == "numpy" and result["device"] == "cpu"
    assert result["numpy"] == np.__version__
    assert "numpy" in result["available_backends"] and "array_api_strict" in result["available_backends"]
    import xpcnn

    assert result["xpcnn"] == xpcnn.__version__


def _python_m(*args: str, env_backend: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != B.ENV_VAR}
    if env_backend is not None:
        env[B.ENV_VAR] = env_backend
    return subprocess.run([sys.executable, "-m", "xpcnn", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_python_m_xpcnn_info():
    proc = _python_m("info")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backend"] == "numpy"  # the default, with $XPCNN_BACKEND unset
    proc = _python_m("info", env_backend="array_api_strict")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "array_api_strict"


def test_python_m_xpcnn_exit_codes(tmp_path):
    proc = _python_m("train", "--backend", "nope", "--no-progress", "--out", str(tmp_path / "never"))
    assert proc.returncode == 2
    assert "unknown backend 'nope'" in proc.stderr
    proc = _python_m("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("xpcnn ")
