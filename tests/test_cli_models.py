"""``xpcnn train`` with the residual and separable models: 1-channel MNIST-like and 3-channel 32x32 arrays.

Oracle: the run's ``metrics.json`` and checkpoint (the model rebuilt from it has the architecture asked for,
with nested parameter names, and predicts the logged test accuracy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_main

from xpcnn import checkpoint
from xpcnn.datasets import load_arrays


def _npz(tmp_path, channels, size, n_train=48, n_test=16):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.integers(0, 256, (n_train, channels, size, size), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, channels, size, size),
                                                                       dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model, channels, size", [("resnet8", 3, 32), ("separable", 1, 28)])
def test_train_residual_and_separable_models_from_the_cli(tmp_path, model, channels, size):
    data = _npz(tmp_path, channels, size)
    out = tmp_path / "run"
    rc, stdout, stderr = run_main(["train", "--model", model, "--dataset", "npz", "--data", str(data), "--epochs",
                                   "1", "--batch-size", "16", "--val-split", "0", "--no-progress", "--out", str(out)])
    assert rc == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["model"] == model and metrics["recipe"]["augment"] == "crop2,flip"
    loaded, _ = checkpoint.load_model(out / "checkpoint.npz")
    names = [ref.name for ref in loaded.parameters()]
    assert tuple(loaded.parameters()[0].value.shape)[1] == channels
    if model == "resnet8":
        assert "5.body.0.W" in names and "5.shortcut.0.W" in names
    else:
        assert any(tuple(ref.value.shape)[1] == 1 and ref.key == "W" for ref in loaded.parameters())  # depthwise
    ds = load_arrays(data)
    assert loaded.output_shape((1, *ds.x_test.shape[1:])) == (1, 10)


def test_three_channel_data_with_a_one_channel_model_is_a_clear_error(tmp_path):
    data = _npz(tmp_path, 3, 28)
    rc, _, stderr = run_main(["train", "--model", "lenet5", "--dataset", "npz", "--data", str(data), "--epochs", "1",
                              "--no-progress", "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "the images have 3 channels, but lenet5 takes 1; use resnet8, resnet20 or separable" in stderr
