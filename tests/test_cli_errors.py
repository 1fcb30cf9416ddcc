"""Bad input and faults in ``xpcnn train``: every error is one line on stderr, with exit status 2 for
bad usage or input (before any training, leaving no run directory), 1 for a failed run, 130 for
Ctrl-C and 143 for SIGTERM; the last good checkpoint always survives.

Oracles: the exit status, the single stderr line naming the flag and the value received, the
file system afterwards (no directory made; the checkpoint of the last good epoch still loads).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import REPO, assert_one_line_error, python_m, run_main, small_mnist_dataset, train_argv

from xpcnn import checkpoint, cli_common, models, train
from xpcnn.datasets import Dataset

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def small_mnist() -> Dataset:
    return small_mnist_dataset()


@pytest.fixture(scope="module")
def ckpt(small_mnist, tmp_path_factory) -> Path:
    """A one-epoch checkpoint of `xpcnn train --limit 300 --seed 0` to resume from."""
    out = tmp_path_factory.mktemp("errors") / "base"
    rc, _, stderr = run_main(train_argv(out, limit=300), small_mnist)
    assert rc == 0, stderr
    return out / "checkpoint.npz"


# ------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("extra, needles", [
    (["--limit", "0"], ["--limit", "expected an integer >= 1, got 0"]),
    (["--limit", "-5"], ["--limit", "got -5"]),
    (["--epochs", "0"], ["--epochs", "expected an integer >= 1, got 0"]),
    (["--epochs", "-1"], ["--epochs", "got -1"]),
    (["--epochs", "three"], ["--epochs", "expected an integer, got 'three'"]),
    (["--epochs", "2.5"], ["--epochs", "got '2.5'"]),
    (["--batch-size", "0"], ["--batch-size", "got 0"]),
    (["--batch-size", "-3"], ["--batch-size", "got -3"]),
    (["--lr", "0"], ["--lr", "expected a number > 0, got 0"]),
    (["--lr", "-1"], ["--lr", "got -1"]),
    (["--lr", "nan"], ["--lr", "expected a finite number, got 'nan'"]),
    (["--lr", "inf"], ["--lr", "finite", "'inf'"]),
    (["--lr", "fast"], ["--lr", "expected a number, got 'fast'"]),
    (["--weight-decay", "-0.1"], ["--weight-decay", "expected a number >= 0, got -0.1"]),
    (["--weight-decay", "nan"], ["--weight-decay", "'nan'"]),
    (["--val-split", "1"], ["--val-split", "expected a fraction >= 0 and < 1, got 1"]),
    (["--val-split", "-0.1"], ["--val-split", "got -0.1"]),
    (["--val-split", "1.5"], ["--val-split", "got 1.5"]),
    (["--val-split", "nan"], ["--val-split", "'nan'"]),
    (["--seed", "-1"], ["--seed", "expected an integer >= 0, got -1"]),
    (["--augment", "shiftx"], ["--augment", "'shiftx'", "whole number of pixels"]),
    (["--augment", "rotate"], ["--augment", "unknown augmentation 'rotate'"]),
    (["--augment", "none,flip"], ["--augment", "cannot be combined"]),
    (["--model", "resnet"], ["--model", "'resnet'", "lenet5"]),
    (["--optimizer", "lbfgs"], ["--optimizer", "'lbfgs'", "adam"]),
    (["--schedule", "linear"], ["--schedule", "'linear'", "cosine"]),
    (["--dataset", "imagenet"], ["--dataset", "'imagenet'", "fashion-mnist"]),
    (["--early-stop", "0"], ["--early-stop", "got 0"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
])
def test_bad_flags_are_one_line_exit_2_and_make_nothing(tmp_path, extra, needles):
    out = tmp_path / "never"
    rc, stdout, stderr = run_main(train_argv(out, *extra) if extra[0] not in ("--limit", "--epochs")
                                  else ["train", "--no-progress", "--out", str(out), *extra])
    assert_one_line_error(rc, stderr, 2, *needles)
    assert stderr.startswith("xpcnn train: error: argument") or "unrecognized" in stderr
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("argv, needles", [
    ([], ["required", "train"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
])
def test_bad_commands(argv, needles):
    rc, _, stderr = run_main(argv)
    assert_one_line_error(rc, stderr, 2, *needles)


@pytest.mark.parametrize("extra, needles", [
    (["--limit", "1000000"], ["--limit 1000000 is more than the 60000 training images of mnist"]),
    (["--val-split", "0.0001"], ["--val-split 0.0001", "empty train or validation set"]),
    (["--save-best", "--val-split", "0"], ["--save-best", "--val-split is 0"]),
    (["--early-stop", "2", "--val-split", "0"], ["--early-stop", "never used for selection"]),
    (["--check-every", "0"], ["--check-every", "expected an integer >= 1, got 0"]),
    (["--backend", "nope"], ["unknown backend 'nope'", "numpy", "cupy", "torch", "array_api_strict"]),
])
def test_bad_combinations_fail_before_training(small_mnist, tmp_path, extra, needles):
    out = tmp_path / "never"
    rc, stdout, stderr = run_main(train_argv(out, *extra), small_mnist)
    assert_one_line_error(rc, stderr, 2, *needles)
    assert not out.exists() and "epoch" not in stdout


# ------------------------------------------------------------------------------------------- --out


def test_out_is_a_file(small_mnist, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    rc, _, stderr = run_main(train_argv(f, limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 2, f"--out {f} exists and is not a directory")
    assert f.read_text() == "keep me"


def test_out_below_a_file_is_unwritable(small_mnist, tmp_path):
    """Item 9: a file where a directory is expected (root ignores permissions, so not chmod)."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    rc, stdout, stderr = run_main(train_argv(out, limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 2, f"--out {out}", "cannot create the run directory")
    assert "epoch" not in stdout  # found before training, not after an epoch


def test_out_non_empty_directory_is_refused_and_left_alone(small_mnist, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    rc, _, stderr = run_main(train_argv(out, limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 2, f"--out {out} is not empty")
    assert [p.name for p in out.iterdir()] == ["metrics.json"] and (out / "metrics.json").read_text() == "{}"


def test_out_in_proc_is_refused(small_mnist):
    rc, _, stderr = run_main(train_argv(Path("/proc/xpcnn-run"), limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 2, "--out /proc/xpcnn-run")


def test_full_disk_found_before_training(small_mnist, tmp_path, monkeypatch):
    def full(directory, size):
        raise cli_common.CLIError(f"cannot write to the run directory {directory}: the disk is full")

    monkeypatch.setattr(cli_common, "probe_writable", full)
    out = tmp_path / "full"
    rc, stdout, stderr = run_main(train_argv(out, limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 2, "the disk is full")
    assert not out.exists() and "epoch" not in stdout


def test_probe_writable_reports_a_full_disk(tmp_path, monkeypatch):
    """The probe itself: a write that fails with ENOSPC (as on a full disk) is reported, the probe removed."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_common.os, "fsync", no_space)
    with pytest.raises(cli_common.CLIError, match="the disk is full"):
        cli_common.probe_writable(tmp_path, 1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_training_keeps_the_last_checkpoint(small_mnist, tmp_path, monkeypatch):
    real = checkpoint.save
    calls = []

    def save(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    out = tmp_path / "run"
    rc, _, stderr = run_main(train_argv(out, limit=200, epochs=3), small_mnist)
    assert_one_line_error(rc, stderr, 1, "No space left on device", f"last checkpoint is intact in {out}")
    assert checkpoint.load_model(out / "checkpoint.npz")[1]["epoch"] == 1


# ------------------------------------------------------------------------------------------- data, environment


@pytest.mark.parametrize("make, needles", [
    (lambda p: p / "missing", ["missing: no such file or directory"]),
    (lambda p: _write(p / "f.txt", b"x"), ["is not a directory"]),
    (lambda p: (p / "empty").mkdir() or p / "empty", ["empty", "train-images-idx3-ubyte"]),
])
def test_bad_data_dir(tmp_path, make, needles):
    data = make(tmp_path)
    out = tmp_path / "never"
    rc, _, stderr = run_main(train_argv(out, "--data-dir", str(data), limit=100))
    assert_one_line_error(rc, stderr, 2, *needles)
    assert not out.exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), "y_train": rng.integers(0, 10, 64),
              "x_test": rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), "y_test": rng.integers(0, 10, 16)}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_npz_dataset_trains(tmp_path):
    out = tmp_path / "run"
    rc, _, stderr = run_main(["train", "--dataset", "npz", "--data", str(_npz(tmp_path / "d.npz")), "--epochs", "1",
                              "--no-progress", "--out", str(out)])
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_samples"] + metrics["val_samples"] == 64 and metrics["test_samples"] == 16


@pytest.mark.parametrize("setup, needles", [
    (lambda p: None, ["--dataset npz needs --data PATH"]),
    (lambda p: _write(p / "g.npz", b"garbage"), ["g.npz: not a readable .npz file"]),
    (lambda p: _npz(p / "s.npz", x_train=np.arange(64 * 3 * 32 * 32).reshape(64, 3, 32, 32).astype(np.uint8),
                    x_test=np.ones((16, 3, 32, 32), np.uint8)), ["the images have 3 channels, but lenet5 takes 1"]),
    (lambda p: _npz(p / "k.npz", y_train=np.full(64, 2.5)), ["y_train"]),
])
def test_bad_npz(tmp_path, setup, needles):
    path = setup(tmp_path)
    out = tmp_path / "never"
    argv = ["train", "--dataset", "npz", "--epochs", "1", "--no-progress", "--out", str(out)]
    rc, _, stderr = run_main(argv + (["--data", str(path)] if path else []))
    assert_one_line_error(rc, stderr, 2, *needles)
    assert not out.exists()


@pytest.mark.parametrize("var, value, needles", [
    ("XPCNN_BACKEND", "nope", ["unknown backend 'nope'"]),
    ("XPCNN_KERNELS", "turbo", ["XPCNN_KERNELS must be one of auto, reference, fast; got 'turbo'"]),
    ("XPCNN_DATA", "/nonexistent/xpcnn", ["$XPCNN_DATA=/nonexistent/xpcnn is not a directory"]),
])
def test_bad_environment_variables(tmp_path, var, value, needles):
    out = tmp_path / "never"
    proc = python_m(*train_argv(out, limit=100), env_extra={var: value})
    assert_one_line_error(proc.returncode, proc.stderr, 2, *needles)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- --resume


def test_resume_errors(ckpt, small_mnist, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not a zip")
    bare = tmp_path / "bare.npz"
    checkpoint.save(bare, models.lenet5(rng=0))
    cases = [
        ([str(tmp_path / "missing.npz")], [], ["missing.npz: no such checkpoint"]),
        ([str(garbage)], [], ["truncated or corrupt"]),
        ([str(ckpt.parent)], [], ["is a directory; pass the checkpoint file"]),
        ([str(bare)], [], ["was not written by `xpcnn train`"]),
        ([str(ckpt)], ["--model", "simple"], ["trained with --model lenet5, this run asks for --model simple"]),
        ([str(ckpt)], ["--optimizer", "sgd"], ["trained with --optimizer adam, this run asks for --optimizer sgd"]),
        ([str(ckpt)], ["--seed", "1"], ["trained with --seed 0, this run asks for --seed 1"]),
        ([str(ckpt)], ["--dataset", "fashion-mnist"], ["trained with --dataset mnist, this run asks for --dataset "
                                                       "fashion-mnist"]),
        ([str(ckpt)], ["--val-split", "0.2"], ["trained with --val-split 0.1, this run asks for --val-split 0.2"]),
        ([str(ckpt)], ["--limit", "200"], ["trained with --limit 300, this run asks for --limit 200"]),
        ([str(ckpt)], ["--batch-size", "32"], ["--batch-size 64", "a resumed run keeps it"]),
        ([str(ckpt)], ["--epochs", "1"], ["nothing left to do", "epoch 1", "--epochs is 1"]),
    ]
    for resume, extra, needles in cases:
        out = tmp_path / "never"
        rc, stdout, stderr = run_main(["train", "--resume", *resume, "--no-progress", "--out", str(out), *extra],
                                      small_mnist)
        assert_one_line_error(rc, stderr, 2, *needles)
        assert not out.exists() and "epoch" not in stdout


def test_resume_default_epochs_of_a_finished_run_is_nothing_to_do(ckpt, small_mnist, tmp_path):
    """The checkpoint's recipe says --epochs 1 and it is at epoch 1: without --epochs there is nothing to do."""
    rc, _, stderr = run_main(["train", "--resume", str(ckpt), "--out", str(tmp_path / "n")], small_mnist)
    assert_one_line_error(rc, stderr, 2, "nothing left to do")


# ------------------------------------------------------------------------------------------- failures (exit 1)


def test_divergence_exits_1_and_leaves_nothing(small_mnist, tmp_path):
    out = tmp_path / "div"
    rc, _, stderr = run_main(train_argv(out, "--optimizer", "sgd", "--lr", "1e30", limit=300), small_mnist)
    assert_one_line_error(rc, stderr, 1, "training diverged", "loss became", "nothing was kept")
    assert not out.exists()  # item 9: no half-made run directory


def test_divergence_in_a_real_process_is_one_line(tmp_path):
    """Outside pytest's warning capture: NumPy's overflow warnings must not add lines to the error."""
    out = tmp_path / "div"
    proc = python_m(*train_argv(out, "--optimizer", "sgd", "--lr", "1e30", limit=300))
    assert_one_line_error(proc.returncode, proc.stderr, 1, "training diverged", "nothing was kept")


def test_nan_validation_loss_exits_1_and_keeps_the_good_checkpoint(small_mnist, tmp_path, monkeypatch):
    """Item 4: on main a NaN val loss overwrote the checkpoint and the run exited 0."""
    real = train.evaluate
    calls = []

    def nan_at_epoch_2(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return {**result, "loss": float("nan")} if len(calls) == 2 else result

    monkeypatch.setattr(train, "evaluate", nan_at_epoch_2)
    out = tmp_path / "nan"
    rc, _, stderr = run_main(train_argv(out, limit=200, epochs=3), small_mnist)
    assert_one_line_error(rc, stderr, 1, "validation loss became nan after epoch 2", "intact")
    assert checkpoint.load_model(out / "checkpoint.npz")[1]["epoch"] == 1


def test_nan_test_loss_exits_1(small_mnist, tmp_path, monkeypatch):
    real = train.evaluate_with_predictions

    def nan_test(model, data, *args, **kwargs):
        metrics, predictions = real(model, data, *args, **kwargs)
        is_test = data[0].shape[0] == 1000  # the validation part has 20 images
        return ({**metrics, "loss": float("nan")} if is_test else metrics), predictions

    monkeypatch.setattr(train, "evaluate_with_predictions", nan_test)
    out = tmp_path / "nantest"
    rc, stdout, stderr = run_main(train_argv(out, limit=200), small_mnist)
    assert_one_line_error(rc, stderr, 1, "test loss is nan")
    assert "test accuracy" not in stdout
    assert json.loads((out / "metrics.json").read_text())["test_loss"] is not None


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(small_mnist, tmp_path, monkeypatch):
    real = train.Trainer.train_epoch

    def interrupted(self, progress):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, progress)

    monkeypatch.setattr(train.Trainer, "train_epoch", interrupted)
    out = tmp_path / "int"
    rc, _, stderr = run_main(train_argv(out, limit=200, epochs=3), small_mnist)
    assert_one_line_error(rc, stderr, 130, "interrupted", f"intact in {out}", "--resume")
    assert checkpoint.load_model(out / "checkpoint.npz")[1]["epoch"] == 1


def test_ctrl_c_before_the_first_checkpoint_leaves_no_directory(small_mnist, tmp_path, monkeypatch):
    def interrupted(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.Trainer, "train_epoch", interrupted)
    out = tmp_path / "int0"
    rc, _, stderr = run_main(train_argv(out, limit=200), small_mnist)
    assert_one_line_error(rc, stderr, 130, "nothing was kept")
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_exits_143_and_the_checkpoint_survives(tmp_path):
    """A real process: SIGTERM while training; exit 143, the checkpoint loads, no temporary left."""
    out = tmp_path / "term"
    env = {k: v for k, v in os.environ.items() if k != "XPCNN_BACKEND"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "xpcnn", *train_argv(out, limit=2000, epochs=50)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (out / "checkpoint.npz").exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.3)  # land somewhere in the next epoch (or inside a save)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_one_line_error(proc.returncode, stderr, 143, "terminated (SIGTERM)", "intact")
    assert checkpoint.load_model(out / "checkpoint.npz")[1]["epoch"] >= 1
    assert not list(out.glob(".*.tmp"))


def test_unexpected_errors_during_training_are_one_line_exit_1(small_mnist, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(train, "fit", bug)
    rc, _, stderr = run_main(train_argv(tmp_path / "bug", limit=100), small_mnist)
    assert_one_line_error(rc, stderr, 1, "training failed: ZeroDivisionError: a bug; over two lines",
                          "nothing was kept")
    assert not (tmp_path / "bug").exists()


def test_internal_errors_elsewhere_are_one_line_too(monkeypatch):
    from xpcnn import cli_info

    def bug():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_info, "info", bug)
    rc, _, stderr = run_main(["info"])
    assert_one_line_error(rc, stderr, 1, "internal error: ZeroDivisionError: a bug")
