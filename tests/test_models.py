"""Tests for :mod:`xpcnn.models`: the ready-made networks.

Oracles that share no code with the implementation: an equivalent ``torch.nn``
network written out here layer by layer (its parameter count, and its forward
pass once the xpcnn weights are copied into it), and a parameter count summed
from the arrays themselves.
"""

from __future__ import annotations

import re

import array_api_compat
import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import models
from xpcnn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense

N = 3


def _images(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _summary_total(summary: str) -> int:
    last = summary.strip().splitlines()[-1]
    match = re.fullmatch(r"total\s+([\d,]+)", last.strip())
    assert match, f"no total row at the end of the summary:\n{summary}"
    return int(match.group(1).replace(",", ""))


def _torch_model(name: str, dropout: float = 0.3):
    """The same architecture as ``models.MODELS[name]``, written with torch.nn (index for index)."""
    nn = pytest.importorskip("torch").nn
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )
    if name == "simple":
        return nn.Sequential(
            nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(30 * 12 * 12, 100), nn.ReLU(),
            nn.Linear(100, 10),
        )
    if name == "wide":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )
    if name == "bn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(64 * 7 * 7, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, 10),
        )
    raise AssertionError(name)


def _copy_into_torch(model, tmodel) -> None:
    """Copy every xpcnn parameter and buffer into the torch model at the same index."""
    torch = pytest.importorskip("torch")
    assert len(model) == len(tmodel)

    def put(dst, src):
        src = torch.from_numpy(np.ascontiguousarray(B.to_numpy(src)))
        assert tuple(dst.shape) == tuple(src.shape)
        with torch.no_grad():
            dst.copy_(src)

    for layer, module in zip(model, tmodel):
        if isinstance(layer, Conv2D):
            put(module.weight, layer.params["W"])  # (F, C, KH, KW) in both
            assert (module.bias is None) == ("b" not in layer.params)
            if "b" in layer.params:
                put(module.bias, layer.params["b"])
        elif isinstance(layer, Dense):
            put(module.weight, B.to_numpy(layer.params["W"]).T)  # xpcnn (in, out), torch (out, in)
            assert (module.bias is None) == ("b" not in layer.params)
            if "b" in layer.params:
                put(module.bias, layer.params["b"])
        elif isinstance(layer, (BatchNorm1D, BatchNorm2D)):
            put(module.weight, layer.params["gamma"])
            put(module.bias, layer.params["beta"])
            put(module.running_mean, layer.buffers["running_mean"])
            put(module.running_var, layer.buffers["running_var"])
        else:
            assert not layer.params and not layer.buffers, f"{layer!r} has state this test does not copy"


def _randomize_bn(model, seed: int = 1) -> None:
    """Give every batch-norm layer non-trivial gamma, beta and running statistics."""
    rng = np.random.default_rng(seed)
    state = {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}
    for layer_index, layer in enumerate(model):
        if isinstance(layer, (BatchNorm1D, BatchNorm2D)):
            c = layer.num_features
            state[f"{layer_index}.gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            state[f"{layer_index}.beta"] = rng.normal(0.0, 0.5, c).astype(np.float32)
            state[f"{layer_index}.running_mean"] = rng.normal(0.0, 0.5, c).astype(np.float32)
            state[f"{layer_index}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_builds_and_outputs_logits_on_every_lane(name, backend):
    model = models.build(name, rng=0)
    x = B.asarray(_images())
    for train in (False, True):
        out = model.forward(x, train=train)
        assert tuple(out.shape) == (N, 10)
        xp = array_api_compat.array_namespace(out)
        assert out.dtype == xp.float32
        assert B.backend_name(out) == B.backend_name(x)
        assert np.all(np.isfinite(B.to_numpy(out)))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_num_classes_and_float64(name):
    model = models.build(name, num_classes=7, dtype="float64", rng=0)
    out = B.to_numpy(model.forward(B.asarray(_images(), dtype="float64")))
    assert out.shape == (N, 7) and out.dtype == np.float64


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_same_seed_same_weights_different_seed_different(name):
    a, b, c = models.build(name, rng=3), models.build(name, rng=3), models.build(name, rng=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(B.to_numpy(sa[k]), B.to_numpy(sb[k])) for k in sa)
    assert not np.array_equal(B.to_numpy(sa["0.W"]), B.to_numpy(sc["0.W"]))


def test_build_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'nope'.*lenet5"):
        models.build("nope")


# ------------------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_summary_total_is_sum_of_param_sizes(name):
    model = models.build(name, rng=0)
    by_arrays = sum(int(np.prod(B.to_numpy(p.value).shape)) for p in model.parameters())
    assert model.num_params() == by_arrays
    assert _summary_total(model.summary((1, 1, 28, 28))) == by_arrays
    # the summary's last per-layer output shape is the logits
    assert "(N, 10)" in model.summary((1, 1, 28, 28)).splitlines()[-3]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_param_count_equals_torch_equivalent(name):
    tmodel = _torch_model(name)
    torch_count = sum(p.numel() for p in tmodel.parameters())
    model = models.build(name, rng=0)
    assert model.num_params() == torch_count
    assert _summary_total(model.summary((1, 1, 28, 28))) == torch_count


# ------------------------------------------------------------------------------------------- forward vs torch


@pytest.mark.parametrize("name", ["lenet5", "simple", "wide"])
def test_forward_equals_torch_with_copied_weights(name, backend):
    torch = pytest.importorskip("torch")
    model = models.build(name, rng=11)
    tmodel = _torch_model(name).eval()
    _copy_into_torch(model, tmodel)
    x = _images(4, seed=5)
    got = B.to_numpy(model.forward(B.asarray(x), train=False))
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (4, 10)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_bn_cnn_eval_equals_torch_eval(backend):
    torch = pytest.importorskip("torch")
    model = models.bn_cnn(rng=2)
    _randomize_bn(model)
    tmodel = _torch_model("bn").eval()
    _copy_into_torch(model, tmodel)
    x = _images(4, seed=6)
    got = B.to_numpy(model.forward(B.asarray(x), train=False))
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    assert got.shape == (4, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # eval mode is deterministic (dropout off) and leaves the running statistics alone
    again = B.to_numpy(model.forward(B.asarray(x), train=False))
    np.testing.assert_array_equal(got, again)
    np.testing.assert_array_equal(B.to_numpy(model[1].buffers["running_mean"]),
                                  tmodel[1].running_mean.numpy())


def test_bn_cnn_train_mode_matches_torch_without_dropout():
    """Train-mode batch statistics and the running-statistics update agree with torch (dropout 0)."""
    torch = pytest.importorskip("torch")
    model = models.bn_cnn(rng=2, dropout=0.0)
    _randomize_bn(model)
    tmodel = _torch_model("bn", dropout=0.0).train()
    _copy_into_torch(model, tmodel)
    x = _images(8, seed=7)
    got = B.to_numpy(model.forward(B.asarray(x), train=True))
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for index in (1, 5, 11):
        np.testing.assert_allclose(B.to_numpy(model[index].buffers["running_mean"]),
                                   tmodel[index].running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(B.to_numpy(model[index].buffers["running_var"]),
                                   tmodel[index].running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_bn_cnn_dropout_is_active_in_train_mode_only():
    model = models.bn_cnn(rng=2, dropout=0.5)
    x = B.asarray(_images(4, seed=8))
    B.seed(0)
    a = B.to_numpy(model.forward(x, train=True))
    b = B.to_numpy(model.forward(x, train=True))
    assert not np.array_equal(a, b)  # fresh dropout masks
    e1, e2 = B.to_numpy(model.forward(x)), B.to_numpy(model.forward(x))
    np.testing.assert_array_equal(e1, e2)
