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
    if name in ("resnet8", "resnet20"):
        return _TorchResNet(1 if name == "resnet8" else 3)
    if name == "separable":
        layers, cin = [nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()], 32
        for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2)):
            layers += [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                       nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10))
    raise AssertionError(name)


def _torch_resnet_classes():
    torch = pytest.importorskip("torch")
    nn, TF = torch.nn, torch.nn.functional

    class Block(nn.Module):
        """He et al.'s basic block with a 1x1 projection shortcut where the shape changes."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.sc = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                       if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.b2(self.c2(TF.relu(self.b1(self.c1(x)))))
            return TF.relu(y + (x if self.sc is None else self.sc(x)))

    class ResNet(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for stage, cout in enumerate((16, 32, 64)):
                for i in range(n):
                    blocks.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.blocks(TF.relu(self.bn(self.conv(x)))).mean(dim=(2, 3)))

    return ResNet


def _TorchResNet(n):
    return _torch_resnet_classes()(n)


def _copy_in_order(model, tmodel) -> None:
    """Copy parameters, then batch-norm statistics, pairing xpcnn's and torch's in registration order."""
    torch = pytest.importorskip("torch")
    theirs = list(tmodel.parameters())
    mine = model.parameters()
    assert len(mine) == len(theirs)
    stats = [b for name, b in tmodel.named_buffers() if not name.endswith("num_batches_tracked")]
    buffers = list(model.buffers.values())
    assert len(stats) == len(buffers)
    with torch.no_grad():
        for ref, p in zip(mine, theirs):
            host = B.to_numpy(ref.value)
            host = host.T if isinstance(ref.owner, Dense) else host
            assert tuple(p.shape) == host.shape, ref.name
            p.copy_(torch.from_numpy(np.ascontiguousarray(host)))
        for value, b in zip(buffers, stats):
            b.copy_(torch.from_numpy(np.ascontiguousarray(B.to_numpy(value))))


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
    """Give every batch-norm layer (nested ones too) non-trivial gamma, beta and running statistics."""
    rng = np.random.default_rng(seed)
    state = {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}
    for name, layer in model.named_leaves():
        if isinstance(layer, (BatchNorm1D, BatchNorm2D)):
            c = layer.num_features
            dt = state[f"{name}.gamma"].dtype
            state[f"{name}.gamma"] = rng.uniform(0.5, 1.5, c).astype(dt)
            state[f"{name}.beta"] = rng.normal(0.0, 0.5, c).astype(dt)
            state[f"{name}.running_mean"] = rng.normal(0.0, 0.5, c).astype(dt)
            state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(dt)
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


# ------------------------------------------------------------------------------------------- residual and separable


@pytest.mark.parametrize("name", ["resnet8", "separable"])
def test_residual_and_separable_eval_equal_torch(name, backend):
    """Eval forward with copied weights and randomized batch-norm state vs the torch.nn twin (grouped convs too)."""
    torch = pytest.importorskip("torch")
    model = models.build(name, rng=4)
    _randomize_bn(model)
    tmodel = _torch_model(name).eval()
    _copy_in_order(model, tmodel)
    x = _images(3, seed=9)
    got = B.to_numpy(model.forward(B.asarray(x), train=False))
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_resnet8_train_step_gradients_equal_torch():
    """One training-mode forward/backward of ResNet-8 in float64: logits and every parameter gradient."""
    torch = pytest.importorskip("torch")
    from xpcnn import functional as F

    model = models.resnet8(dtype="float64", rng=5)
    _randomize_bn(model)
    tmodel = _torch_model("resnet8").double().train()
    _copy_in_order(model, tmodel)
    x = np.random.default_rng(3).standard_normal((4, 1, 28, 28))
    labels = np.array([1, 0, 9, 4])
    loss_t = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(labels))
    loss_t.backward()
    xb, t = B.asarray(x, dtype="float64"), B.asarray(labels, dtype="int64")
    loss, probs = F.softmax_cross_entropy(model.forward(xb, train=True), t)
    model.backward(F.softmax_cross_entropy_backward(probs, t))
    np.testing.assert_allclose(float(loss), float(loss_t.detach()), rtol=1e-10)
    for ref, p in zip(model.parameters(), tmodel.parameters()):
        want = p.grad.numpy().T if isinstance(ref.owner, Dense) else p.grad.numpy()
        np.testing.assert_allclose(B.to_numpy(ref.grad), want, rtol=1e-7, atol=1e-10 * np.abs(want).max(),
                                   err_msg=ref.name)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "separable"])
def test_three_channel_32x32_input(name):
    model = models.build(name, in_channels=3, rng=0)
    out = model.forward(B.asarray(np.zeros((2, 3, 32, 32), dtype=np.float32)))
    assert tuple(out.shape) == (2, 10) and model.output_shape((2, 3, 32, 32)) == (2, 10)
    assert tuple(model.parameters()[0].value.shape) == (16 if name != "separable" else 32, 3, 3, 3)
