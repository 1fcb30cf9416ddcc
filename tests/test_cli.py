"""Tests for ``xpcnn train`` / ``evaluate`` / ``info`` (:mod:`xpcnn.cli` and its command modules).

Training runs use the real bundled MNIST: the first ``--limit`` training images and, to keep the
suite fast, the first 1000 test images (the loader is wrapped to slice the test split; everything
else is the real code path).  Results are checked against independent computations on the written
files: the held-out split rebuilt from the seed, the model evaluated again from its checkpoint.
Error cases live in test_cli_errors.py, ``predict`` in test_cli_predict.py.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from cli_helpers import LIMIT, N_TEST, kept_backend, png_ok, python_m, run_main, small_mnist_dataset, train_argv

from xpcnn import backend as B
from xpcnn import checkpoint, cli_common, train
from xpcnn.datasets import Dataset, to_float, train_val_split
from xpcnn.model import Sequential

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

N_VAL = round(LIMIT * 0.1)


@pytest.fixture(scope="module")
def small_mnist() -> Dataset:
    return small_mnist_dataset()


@pytest.fixture(scope="module")
def run(small_mnist, tmp_path_factory):
    """One real `xpcnn train` run shared by the tests that inspect its outputs; counts eval-mode samples."""
    out = tmp_path_factory.mktemp("cli") / "run"
    seen = []
    forward = Sequential.forward

    def counting(self, x, train=False):
        if not train:
            seen.append(int(x.shape[0]))
        return forward(self, x, train=train)

    with pytest.MonkeyPatch.context() as mp, kept_backend():
        mp.setattr(Sequential, "forward", counting)
        B.set_backend("numpy")
        rc, stdout, stderr = run_main(train_argv(out), small_mnist)
    assert rc == 0, stderr
    return out, stdout, json.loads((out / "metrics.json").read_text()), sum(seen), stderr


def _model_accuracy(model, x_uint8, y, stats) -> float:
    x = (to_float(x_uint8) - np.float32(stats["mean"])) / np.float32(stats["std"])
    logits = B.to_numpy(model.predict(x.astype(np.float32)))
    return float(np.mean(logits.argmax(axis=1) == y))


# ------------------------------------------------------------------------------------------- train


def test_train_writes_the_run_directory(run):
    out, stdout, _, _, stderr = run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "confusion_matrix.png",
                                                     "learning_curves.png", "metrics.csv", "metrics.json"]
    png_ok(out / "learning_curves.png")
    png_ok(out / "confusion_matrix.png")
    assert "total" in stdout and "test accuracy" in stdout
    assert stderr == ""  # not a terminal: no progress bar (item 11)


def test_metrics_json(run):
    _, _, metrics, _, _ = run
    assert metrics["model"] == "lenet5" and metrics["dataset"] == "mnist" and metrics["backend"] == "numpy"
    assert metrics["val_split"] == 0.1 and metrics["limit"] == LIMIT
    assert metrics["train_samples"] == LIMIT - N_VAL and metrics["val_samples"] == N_VAL
    assert metrics["test_samples"] == N_TEST
    assert metrics["recipe"]["epochs"] == 1 and metrics["recipe"]["lr"] == 2e-3
    assert [e["epoch"] for e in metrics["epochs"]] == [1] and metrics["evaluated_epoch"] == 1
    entry = metrics["epochs"][0]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time_s"):
        assert isinstance(entry[key], float) and np.isfinite(entry[key]), key
    assert metrics["test_accuracy"] > 0.5  # 1350 images, one epoch: clearly better than chance
    assert metrics["train_time_s"] == pytest.approx(entry["time_s"])


def test_validation_is_held_out_from_train_and_the_test_set_is_used_once(run, small_mnist):
    """Item 12: per-epoch metrics come from 10% of the training set, never from the test set."""
    out, _, metrics, eval_samples, _ = run
    model, meta = checkpoint.load_model(out / "checkpoint.npz")
    x, y = small_mnist.x_train[:LIMIT], small_mnist.y_train[:LIMIT]
    x_tr, _, x_val, y_val = train_val_split(x, y, 0.1, rng=B.seed_stream(0, "val_split"))
    stats = meta["extra"]["normalization"]
    # normalisation statistics come from the training part only (not the held-out images, not the test set)
    assert stats["mean"] == pytest.approx(to_float(x_tr).astype(np.float64).mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(to_float(x_tr).astype(np.float64).std(), rel=1e-9)
    assert metrics["epochs"][0]["val_accuracy"] == _model_accuracy(model, x_val, y_val, stats)
    assert metrics["test_accuracy"] == _model_accuracy(model, small_mnist.x_test, small_mnist.y_test, stats)
    # eval-mode forward passes: the validation part once per epoch, the test set exactly once (issue 8)
    assert eval_samples == N_VAL + N_TEST


def test_csv_log_matches_metrics_json(run):
    out, _, metrics, _, _ = run
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(metrics["epochs"])
    for row, entry in zip(rows, metrics["epochs"]):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(entry, rel=0, abs=0)


def test_evaluate_prints_the_same_test_accuracy(run, small_mnist):
    out, _, metrics, _, _ = run
    rc, stdout, stderr = run_main(["evaluate", str(out / "checkpoint.npz")], small_mnist)
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert result["test_accuracy"] == metrics["test_accuracy"] and result["test_samples"] == N_TEST
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-9)
    assert result["epoch"] == 1 and result["dataset"] == "mnist"


def test_evaluate_on_another_backend(run, small_mnist):
    pytest.importorskip("torch", reason="the torch backend needs PyTorch")
    out, _, metrics, _, _ = run
    rc, stdout, stderr = run_main(["evaluate", str(out / "checkpoint.npz"), "--backend", "torch"], small_mnist)
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert abs(result["test_accuracy"] - metrics["test_accuracy"]) <= 2 / N_TEST  # float32 ties at most
    assert result["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)


def test_val_split_0_trains_on_everything_without_per_epoch_held_out_metrics(small_mnist, tmp_path):
    out = tmp_path / "all"
    rc, stdout, stderr = run_main(train_argv(out, "--val-split", "0", limit=300), small_mnist)
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_samples"] == 300 and metrics["val_samples"] == 0
    assert "val_loss" not in metrics["epochs"][0] and "val_loss" not in stdout


def test_early_stop_and_save_best_select_on_validation(small_mnist, tmp_path, monkeypatch):
    """Scripted validation losses 1, 2, 3: patience 1 stops after epoch 2; the test runs on epoch 1's weights."""
    script = iter([1.0, 2.0, 3.0])
    real = train.evaluate

    def scripted(model, data, loss=None, batch_size=512, on_device=False):
        result = real(model, data, loss, batch_size, on_device)
        return {**result, "loss": next(script)}

    monkeypatch.setattr(train, "evaluate", scripted)
    out = tmp_path / "es"
    rc, _, stderr = run_main(train_argv(out, "--early-stop", "1", "--save-best", limit=300, epochs=3), small_mnist)
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_early_at"] == 2 and metrics["evaluated_epoch"] == 1
    best, meta = checkpoint.load_model(out / "best.npz")
    assert meta["epoch"] == 1
    stats = meta["extra"]["normalization"]
    assert metrics["test_accuracy"] == _model_accuracy(best, small_mnist.x_test, small_mnist.y_test, stats)


def test_without_matplotlib_plots_are_skipped(small_mnist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "noplots"
    rc, stdout, stderr = run_main(train_argv(out, limit=200), small_mnist)
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.csv", "metrics.json"]
    notices = [line for line in stdout.replace(str(tmp_path), "<tmp>").splitlines() if "matplotlib" in line]
    assert len(notices) == 1 and "skipping plots" in notices[0]


def test_on_device_run(small_mnist, tmp_path):
    """--on-device keeps the default lenet5 recipe's augmentation (applied on the device) and trains
    exactly like the host path (same seed: same batches, same numbers)."""
    runs = {}
    for name, flags in (("ondev", ("--on-device", "--check-every", "3")), ("host", ())):
        rc, _, stderr = run_main(train_argv(tmp_path / name, *flags, limit=200), small_mnist)
        assert rc == 0, stderr
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["ondev"]["recipe"]["augment"] == runs["host"]["recipe"]["augment"] != "none"
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    for a, b in zip(runs["ondev"]["epochs"], runs["host"]["epochs"], strict=True):
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys]
    assert (runs["ondev"]["test_loss"], runs["ondev"]["test_accuracy"]) == \
        (runs["host"]["test_loss"], runs["host"]["test_accuracy"])


# ------------------------------------------------------------------------------------------- run directories


def test_two_runs_in_the_same_second_get_their_own_directories(small_mnist, tmp_path, monkeypatch):
    """Item 2: on main both runs wrote runs/<model>-<dataset>-<time>/ and overwrote each other."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_common.time, "strftime", lambda fmt: "20260101-120000")
    results = [run_main(train_argv(None, "--seed", str(seed), limit=200), small_mnist) for seed in (1, 2)]
    assert [rc for rc, _, _ in results] == [0, 0]
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert dirs == ["lenet5-mnist-20260101-120000", "lenet5-mnist-20260101-120000-2"]
    seeds = [json.loads((tmp_path / "runs" / d / "metrics.json").read_text())["seed"] for d in dirs]
    assert seeds == [1, 2]


def test_make_run_dir_never_reuses_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_common.time, "strftime", lambda fmt: "T")
    made = [cli_common.make_run_dir(None, "m-d")[0] for _ in range(4)]
    assert len({str(p) for p in made}) == 4 and all(p.is_dir() for p in made)


# ------------------------------------------------------------------------------------------- resume


def _copy(run, tmp_path):
    ckpt = tmp_path / "from_run.npz"
    shutil.copy(run[0] / "checkpoint.npz", ckpt)
    return ckpt


def test_resume_continues_up_to_the_epoch_count(run, small_mnist, tmp_path):
    ckpt = _copy(run, tmp_path)
    out2 = tmp_path / "resumed"
    rc, stdout, stderr = run_main(["train", "--resume", str(ckpt), "--epochs", "2", "--out", str(out2),
                                   "--no-progress"], small_mnist)
    assert rc == 0, stderr
    assert f"resumed from {ckpt} at epoch 1" in stdout
    assert stdout.count("epoch 2/2") == 1 and "epoch 1/2" not in stdout  # only the missing epoch ran
    metrics2 = json.loads((out2 / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics2["epochs"]] == [1, 2]
    assert metrics2["epochs"][0] == run[2]["epochs"][0]  # the first epoch comes from the checkpoint
    # the run settings came from the checkpoint, not from the defaults
    assert (metrics2["limit"], metrics2["val_split"], metrics2["seed"]) == (LIMIT, 0.1, 0)
    assert metrics2["recipe"]["lr"] == 2e-3 and metrics2["resumed_from"] == str(ckpt)
    _, meta = checkpoint.load_model(out2 / "checkpoint.npz")
    assert meta["epoch"] == 2 and len(meta["history"]) == 2
    before, _ = checkpoint.load_model(ckpt)
    after, _ = checkpoint.load_model(out2 / "checkpoint.npz")
    assert meta["history"][1]["lr"] > 0.0  # the cosine schedule stretched to 2 epochs: epoch 2 learns
    assert not np.array_equal(B.to_numpy(before[0].params["W"]), B.to_numpy(after[0].params["W"]))


def test_resume_honours_lr_and_weight_decay_and_records_them(run, small_mnist, tmp_path):
    """Item 3: on main the checkpoint's lr silently won while metrics.json recorded the flag's value."""
    ckpt = _copy(run, tmp_path)
    out2 = tmp_path / "lr"
    rc, _, stderr = run_main(["train", "--resume", str(ckpt), "--epochs", "2", "--lr", "0.0005",
                              "--weight-decay", "0.01", "--out", str(out2), "--no-progress"], small_mnist)
    assert rc == 0, stderr
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["recipe"]["lr"] == 5e-4 and metrics["recipe"]["weight_decay"] == 0.01
    # cosine over 2 epochs from the new base: epoch 2 runs at 5e-4 * (1 + cos(pi / 2)) / 2
    assert metrics["epochs"][1]["lr"] == pytest.approx(2.5e-4, rel=1e-12)
    _, meta = checkpoint.load_model(out2 / "checkpoint.npz")
    assert meta["optimizer"]["hyper"]["weight_decay"] == 0.01


# ------------------------------------------------------------------------------------------- help, info


def test_train_help_shows_every_option_and_the_per_model_defaults():
    rc, stdout, _ = run_main(["train", "--help"])
    assert rc == 0
    for flag in ("--epochs", "--batch-size", "--lr", "--val-split", "--early-stop", "--save-best", "--resume"):
        assert flag in stdout
    from xpcnn.recipes import RECIPES

    for name, r in RECIPES.items():
        row = next(line for line in stdout.splitlines() if line.strip().startswith(name + " "))
        assert r.optimizer in row and f"{r.lr:g}" in row and str(r.epochs) in row and r.augment in row
    assert "(default: 0.1)" in " ".join(stdout.split())


def test_info_in_process():
    with kept_backend():
        B.set_backend("numpy")
        rc, stdout, _ = run_main(["info"])
    assert rc == 0
    result = json.loads(stdout)
    assert result["backend"] == "numpy" and result["device"] == "cpu"
    assert result["numpy"] == np.__version__
    assert "numpy" in result["available_backends"] and "array_api_strict" in result["available_backends"]
    from xpcnn import kernels

    assert result["kernel_mode"] == kernels.kernel_mode()
    assert result["kernel_sets"] == kernels.active_sets()
    if kernels.active_sets().get("numba_cpu") == "loaded":  # which GEMM the numba_cpu convolutions use
        from xpcnn.kernels.numba_cpu import blas

        assert (blas.LIBRARY in result["numba_cpu_gemm"]) if blas.AVAILABLE else "np.matmul" in result["numba_cpu_gemm"]


def test_python_m_xpcnn_info():
    proc = python_m("info")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backend"] == "numpy"  # the default, with $XPCNN_BACKEND unset
    assert isinstance(result["kernel_sets"], dict)
    proc = python_m("info", env_extra={B.ENV_VAR: "array_api_strict"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "array_api_strict"


def test_python_m_xpcnn_version():
    proc = python_m("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("xpcnn ")
