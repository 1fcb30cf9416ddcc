"""Data parallelism end to end: ``mpiexec -n 2|3`` runs of a small training against one process.

The oracle is the same training in this process with no launcher (no distributed code runs).
Needs ``mpiexec`` and mpi4py (``pip install 'xpcnn[mpi]'``); skipped with the reason otherwise.
Relative errors: ``max|a - b| / max|b|`` per tensor (float64), or over the whole model (float32, where
a tensor that started at zero, a batch-norm shift, carries the float32 rounding of a few Adam steps:
the one-process float32 run differs from the float64 one by as much, see the float32 test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402

MPIEXEC = shutil.which("mpiexec")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not (MPIEXEC and HAVE_MPI4PY),
                               reason="needs mpiexec and mpi4py: pip install 'xpcnn[mpi]'")
LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK",
               "MV2_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def mpirun(n: int, args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """``mpiexec -n n python args...`` from the repository root; returns the finished process."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def train_ranks(n: int, out: Path, args: list[str]) -> dict:
    proc = mpirun(n, [str(HERE / "distributed_worker.py"), str(out), *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return worker.load(out)


def train_single(out: Path, args: list[str]) -> dict:
    from xpcnn import distributed

    distributed.shutdown()
    assert distributed.current() is None, "the oracle must run as one plain process"
    worker.run([str(out), *args])
    return worker.load(out)


def rel_err(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|b|."""
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


def model_rel_err(a: dict, b: dict) -> float:
    """max|a - b| over the whole model / max|b| over the whole model."""
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b) / max(float(np.max(np.abs(b[k]))) for k in b)


_oracles: dict[tuple, dict] = {}


def oracle(tmp_path: Path, args: list[str]) -> dict:
    key = tuple(args)
    if key not in _oracles:
        _oracles[key] = train_single(tmp_path / "single.npz", args)
    return _oracles[key]


@needs_mpi
@pytest.mark.parametrize("model, ranks", [("lenet5", 2), ("lenet5", 3), ("bn", 2), ("bn", 3), ("resnet8", 3)])
def test_ranks_train_the_same_model_as_one_process_float64(tmp_path, model, ranks):
    """One epoch of 64 images in global batches of 20 (20, 20, 20, 4: uneven shards with 3 ranks),
    augmented (shift1, flip); the bn net has batch norm and dropout, ResNet-8 batch norm in residual blocks."""
    args = ["--model", model, "--dtype", "float64", "--n", "64", "--batch", "20", "--augment", "shift1,flip"]
    single = oracle(tmp_path, args)
    multi = train_ranks(ranks, tmp_path / "multi.npz", args)
    err = rel_err(multi["state"], single["state"])
    print(f"{model} float64, {ranks} ranks vs 1 process: max relative error {err:.2e}")
    assert err <= 1e-12
    assert multi["world_size"] == ranks and single["world_size"] == 1
    assert abs(multi["history"][0]["loss"] - single["history"][0]["loss"]) <= 1e-12 * single["history"][0]["loss"]
    assert multi["history"][0]["accuracy"] == single["history"][0]["accuracy"]


@needs_mpi
@pytest.mark.slow
@pytest.mark.parametrize("model, ranks, n, batch, optimizer", [("lenet5", 2, 160, 8, "adam"),
                                                               ("bn", 3, 200, 10, "momentum")])
def test_ranks_match_one_process_float32_for_up_to_20_steps(tmp_path, model, ranks, n, batch, optimizer):
    """20 steps in float32: within 1e-5 of one process, and of the order of the float32 rounding floor (how far
    the one-process float32 run is from the float64 one).

    The bn net runs with momentum SGD here: under Adam its float32 runs (even one process against
    itself in float64) differ by ~1e-5 after 10-20 steps, because Adam scales the rounding noise of
    gradients that cancel to ~0 (the dense layer feeding BatchNorm1D) up to full steps of size lr.
    Adam with batch norm and dropout is compared in float64 above.
    """
    args = ["--model", model, "--n", str(n), "--batch", str(batch), "--optimizer", optimizer]
    single = oracle(tmp_path, [*args, "--dtype", "float32"])
    multi = train_ranks(ranks, tmp_path / "multi.npz", [*args, "--dtype", "float32"])
    single64 = oracle(tmp_path, [*args, "--dtype", "float64"])
    err, floor = model_rel_err(multi["state"], single["state"]), model_rel_err(single["state"], single64["state"])
    print(f"{model} float32 ({optimizer}), {ranks} ranks vs 1 process after {n // batch} steps: relative error "
          f"{err:.2e} (model), {rel_err(multi['state'], single['state']):.2e} (worst tensor); "
          f"float32 vs float64: {floor:.2e}")
    assert err <= 1e-5
    assert err <= 5 * floor  # of the order of the float32 rounding itself


@needs_mpi
def test_rank_0_weights_are_broadcast_before_the_first_step(tmp_path):
    """Every rank starts from different random weights; rank 0's (those of the one process) win."""
    args = ["--model", "lenet5", "--n", "40", "--batch", "20"]
    single = oracle(tmp_path, args)
    multi = train_ranks(2, tmp_path / "multi.npz", [*args, "--init-offset"])
    assert rel_err(multi["state"], single["state"]) <= 1e-12


@needs_mpi
def test_resume_under_a_different_number_of_ranks(tmp_path):
    """Epoch 1 on 2 ranks, epoch 2 resumed on 3 ranks == 2 epochs in one process (bn net, dropout)."""
    args = ["--model", "bn", "--n", "48", "--batch", "16", "--augment", "flip"]
    ckpt = tmp_path / "ckpt.npz"
    train_ranks(2, tmp_path / "first.npz", [*args, "--epochs", "1", "--checkpoint", str(ckpt)])
    resumed = train_ranks(3, tmp_path / "resumed.npz", [*args, "--epochs", "2", "--resume", str(ckpt)])
    single = oracle(tmp_path, [*args, "--epochs", "2"])
    assert [e["epoch"] for e in resumed["history"]] == [1, 2]
    # two epochs of tiny batches: rounding differences grow (a wrong resume is off by > 1e-3)
    err, worst = model_rel_err(resumed["state"], single["state"]), rel_err(resumed["state"], single["state"])
    print(f"resumed 2 -> 3 ranks vs one process after 2 epochs: {err:.2e} (model), {worst:.2e} (worst tensor)")
    assert err <= 1e-12 and worst <= 1e-10


def _check_checkpoint_intact(ckpt: Path, epoch: int) -> None:
    from xpcnn import checkpoint

    _, meta = checkpoint.load_model(ckpt)
    assert meta["epoch"] == epoch
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")) == []  # no temporary files


@needs_mpi
@pytest.mark.parametrize("how", ["--die-at", "--kill-at"])
def test_a_dying_rank_aborts_the_others(tmp_path, how):
    """Rank 1 fails (exception, or SIGKILL) in epoch 2: every rank ends quickly, non-zero, with a message;
    rank 0's epoch-1 checkpoint is complete."""
    ckpt = tmp_path / "run" / "ckpt.npz"
    ckpt.parent.mkdir()
    args = [str(HERE / "distributed_worker.py"), str(tmp_path / "out.npz"), "--n", "40", "--batch", "10",
            "--epochs", "3", "--checkpoint", str(ckpt), how, "6"]  # 4 steps per epoch: step 6 is in epoch 2
    proc = mpirun(2, args, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    if how == "--die-at":
        assert "injected failure at step 6" in output and "rank 1 of 2 failed" in output
        assert "aborting all ranks" in output
    else:
        assert "KILLED" in output.upper() or "signal 9" in output, output
    assert not (tmp_path / "out.npz").exists()
    _check_checkpoint_intact(ckpt, 1)


@needs_mpi
def test_ranks_with_different_data_fail_at_the_start(tmp_path):
    proc = mpirun(2, [str(HERE / "distributed_worker.py"), str(tmp_path / "out.npz"), "--n", "20", "--batch", "10",
                      "--skew-data"], timeout=60)
    assert proc.returncode != 0
    assert "rank 1 differs from rank 0 in data" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.skipif(not MPIEXEC, reason="needs mpiexec: pip install 'xpcnn[mpi]'")
def test_a_launch_without_mpi4py_fails_with_the_install_command(tmp_path):
    """mpi4py hidden from both ranks: no training starts, each rank says how to install the extra."""
    code = ("import sys; sys.modules['mpi4py'] = None; from xpcnn.cli import main; "
            f"sys.exit(main(['train', '--limit', '40', '--epochs', '1', '--out', {str(tmp_path / 'run')!r}]))")
    proc = mpirun(2, ["-c", code], timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("pip install 'xpcnn[mpi]'") == 2, proc.stderr
    assert "rank 0 of 2" in proc.stderr and "rank 1 of 2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr  # one line per rank (plus launcher lines)
    assert not (tmp_path / "run").exists()


@needs_mpi
@pytest.mark.slow
def test_cli_under_mpiexec_writes_one_run_directory_and_resumes_on_another_rank_count(tmp_path):
    """``mpiexec -n 2 xpcnn train`` then ``mpiexec -n 3 xpcnn train --resume``: rank 0 alone prints and writes,
    metrics.json says world_size; the weights match ``xpcnn train`` in one process (float32, 6 steps)."""
    from xpcnn import checkpoint, cli, distributed

    # 60 training images in full batches of 20 (a small last batch makes float32 Adam far noisier)
    flags = ["--model", "lenet5", "--limit", "80", "--val-split", "0.25", "--batch-size", "20", "--schedule", "none",
             "--no-progress", "--seed", "0"]
    first, second, single = tmp_path / "first", tmp_path / "second", tmp_path / "single"
    proc = mpirun(2, ["-m", "xpcnn", "train", *flags, "--epochs", "1", "--out", str(first)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("run directory") == 1, proc.stdout
    proc = mpirun(3, ["-m", "xpcnn", "train", *flags, "--epochs", "2", "--out", str(second),
                      "--resume", str(first / "checkpoint.npz")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("resumed from") == 1
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["world_size"] == 3 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert json.loads((first / "metrics.json").read_text())["world_size"] == 2

    distributed.shutdown()
    assert cli.main(["train", *flags, "--epochs", "2", "--out", str(single)]) == 0
    assert json.loads((single / "metrics.json").read_text())["world_size"] == 1
    multi_model, _ = checkpoint.load_model(second / "checkpoint.npz")
    single_model, _ = checkpoint.load_model(single / "checkpoint.npz")
    from xpcnn import backend as B

    a = {k: B.to_numpy(v) for k, v in multi_model.state_dict().items()}
    b = {k: B.to_numpy(v) for k, v in single_model.state_dict().items()}
    assert model_rel_err(a, b) <= 1e-5
    assert abs(metrics["test_accuracy"] - json.loads((single / "metrics.json").read_text())["test_accuracy"]) < 0.01


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        return 0


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(_gpu_count() < 2, reason="the NCCL path needs 2 GPUs (NCCL refuses two ranks on one device)")
def test_nccl_ranks_train_the_same_model_as_one_process(tmp_path, monkeypatch):
    """CuPy arrays, gradients over NCCL: never run yet (no multi-GPU machine); float64 like the host test."""
    monkeypatch.setenv("XPCNN_BACKEND", "cupy")
    args = ["--model", "bn", "--dtype", "float64", "--n", "64", "--batch", "20"]
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(HERE / "distributed_worker.py"),
                           str(tmp_path / "multi.npz"), *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from xpcnn import backend as B

    with B.using("cupy"):
        single = train_single(tmp_path / "single.npz", args)
    assert rel_err(worker.load(tmp_path / "multi.npz")["state"], single["state"]) <= 1e-12


@needs_mpi
def test_a_cli_error_on_rank_0_ends_every_rank_with_its_exit_code(tmp_path):
    """Only rank 0 creates the run directory; its refusal (--out not empty) must not leave rank 1 waiting."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    proc = mpirun(2, ["-m", "xpcnn", "train", "--limit", "40", "--epochs", "1", "--out", str(out)], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("is not empty") == 1 and "rank 0 of 2 failed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["something"]
