"""Composite layers: Residual, nested Sequential; nested names, input gradients, checkpoints, optimizers.

Oracles: a hand-written PyTorch twin of a small residual network (forward values, autograd gradients,
batch-norm running statistics), central differences (:func:`xpcnn.gradcheck`), a checkpoint written
by hand in the version-1 file format (flat models stay loadable), and manual chaining of the layers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import checkpoint, optim
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck
from xpcnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, ReLU, Residual
from xpcnn.model import Sequential

try:
    from . import reference as R
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as R


def _resnet(dtype="float64"):
    """stem conv -> BN -> ReLU -> identity block -> ReLU -> projection block (stride 2) -> ReLU -> GAP -> dense."""
    def cbr(cin, cout, stride, seed, relu=True):
        layers = [Conv2D(cin, cout, 3, stride, 1, bias=False, dtype=dtype, rng=seed), BatchNorm2D(cout, dtype=dtype)]
        return layers + ([ReLU()] if relu else [])

    return Sequential(
        *cbr(2, 4, 1, 0),
        Residual(Sequential(*cbr(4, 4, 1, 1), *cbr(4, 4, 1, 2, relu=False))),
        ReLU(),
        Residual(Sequential(*cbr(4, 6, 2, 3), *cbr(6, 6, 1, 4, relu=False)),
                 shortcut=Sequential(Conv2D(4, 6, 1, 2, bias=False, dtype=dtype, rng=5), BatchNorm2D(6, dtype=dtype))),
        ReLU(),
        GlobalAvgPool2D(),
        Dense(6, 3, dtype=dtype, rng=6),
    )


def _randomize(model, rng):
    for ref in model.parameters():
        host = rng.standard_normal(tuple(ref.value.shape)) * 0.5 + (1.0 if ref.key == "gamma" else 0.0)
        ref.assign(B.to_device_like(host, ref.value))


def _torch_twin(model):
    """The same network written out by hand in PyTorch, with the xpcnn model's current weights."""
    torch = pytest.importorskip("torch")
    nn, TF = torch.nn, torch.nn.functional
    state = {k: torch.tensor(np.array(B.to_numpy(v))) for k, v in model.state_dict().items()}

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v.clone()) for k, v in state.items()
                                       if not k.endswith(("running_mean", "running_var"))})
            self.stats = {k: v.clone() for k, v in state.items() if k.endswith(("running_mean", "running_var"))}

        def conv(self, name, x, stride=1, padding=1):
            return TF.conv2d(x, self.w[f"{name}_W".replace(".", "_")], None, stride, padding)

        def bn(self, name, x):
            return TF.batch_norm(x, self.stats[f"{name}.running_mean"], self.stats[f"{name}.running_var"],
                                 self.w[f"{name}_gamma".replace(".", "_")], self.w[f"{name}_beta".replace(".", "_")],
                                 training=True, momentum=0.1, eps=1e-5)

        def forward(self, x):
            h = TF.relu(self.bn("1", self.conv("0", x)))
            b = TF.relu(self.bn("3.body.1", self.conv("3.body.0", h)))
            b = self.bn("3.body.4", self.conv("3.body.3", b))
            h = TF.relu(b + h)
            b = TF.relu(self.bn("5.body.1", self.conv("5.body.0", h, stride=2)))
            b = self.bn("5.body.4", self.conv("5.body.3", b))
            s = self.bn("5.shortcut.1", self.conv("5.shortcut.0", h, stride=2, padding=0))
            h = TF.relu(b + s)
            h = h.mean(dim=(2, 3))
            return h @ self.w["8_W"] + self.w["8_b"]

    return Twin()


def test_residual_net_equals_hand_written_torch_twin(backend, rng):
    torch = pytest.importorskip("torch")
    model = _resnet()
    _randomize(model, rng)
    model.need_input_grad = True  # so the first conv returns dx as well
    twin = _torch_twin(model)
    x_h = rng.standard_normal((3, 2, 7, 6))
    labels = np.array([0, 2, 1])

    xt = torch.tensor(x_h, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(twin(xt), torch.tensor(labels))
    loss_t.backward()

    x, t = B.asarray(x_h, dtype="float64"), B.asarray(labels, dtype="int64")
    logits = model.forward(x, train=True)
    loss, probs = F.softmax_cross_entropy(logits, t)
    dx = model.backward(F.softmax_cross_entropy_backward(probs, t))
    np.testing.assert_allclose(float(loss), float(loss_t.detach()), rtol=1e-12)
    np.testing.assert_allclose(B.to_numpy(dx), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    names = [ref.name for ref in model.parameters()]
    assert "5.shortcut.0.W" in names and "3.body.4.gamma" in names and len(names) == len(twin.w)
    for ref in model.parameters():
        want = twin.w[ref.name.replace(".", "_")].grad.numpy()
        scale = np.abs(want).max()
        np.testing.assert_allclose(B.to_numpy(ref.grad), want, rtol=1e-9, atol=1e-12 * scale, err_msg=ref.name)
    for name, value in model.buffers.items():  # running statistics moved exactly like PyTorch's
        np.testing.assert_allclose(B.to_numpy(value), twin.stats[name].numpy(), rtol=1e-12, err_msg=name)


def test_only_the_outermost_first_layer_skips_dx(backend, rng):
    """A Residual first in the model skips dx all the way down; nested anywhere else, its body returns dx."""
    first = Sequential(Residual(Sequential(Conv2D(2, 2, 3, padding=1, dtype="float64", rng=0), ReLU())),
                       Flatten())
    assert first[0].need_input_grad is False and first[0].body[0].need_input_grad is False
    x = B.asarray(rng.standard_normal((2, 2, 3, 3)))
    first.forward(x, train=True)
    assert first.backward(B.asarray(rng.standard_normal((2, 18)))) is None

    body = Sequential(Conv2D(3, 3, 3, padding=1, dtype="float64", rng=1), ReLU())
    inner = Sequential(Conv2D(3, 3, 1, dtype="float64", rng=2))
    model = Sequential(Conv2D(2, 3, 1, dtype="float64", rng=3), Residual(body), inner, Flatten())
    assert [model[0].need_input_grad, body[0].need_input_grad, inner[0].need_input_grad] == [False, True, True]
    y = model.forward(x, train=True)
    dout = B.asarray(rng.standard_normal(tuple(y.shape)))
    model.backward(dout)
    # the nested pieces returned dx: check the first conv's weight gradient by central differences
    W = model[0].params["W"]

    def loss(Wv):
        model[0].params["W"] = Wv
        out = model.forward(x, train=True)
        return float(B.to_numpy(out * dout).sum())

    host = B.to_numpy(W).copy()
    eps, numeric = 1e-6, np.zeros_like(host)
    for idx in np.ndindex(*host.shape):
        plus, minus = host.copy(), host.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss(B.to_device_like(plus, W)) - loss(B.to_device_like(minus, W))) / (2 * eps)
    model[0].params["W"] = W
    np.testing.assert_allclose(B.to_numpy(model[0].grads["W"]), numeric, rtol=1e-6, atol=1e-8)
    # a nested Sequential itself returns dx when asked
    h = B.asarray(rng.standard_normal((2, 3, 3, 3)))
    inner.forward(h, train=True)
    assert tuple(inner.backward(B.asarray(rng.standard_normal((2, 3, 3, 3)))).shape) == (2, 3, 3, 3)


def test_residual_gradcheck_identity_and_projection(backend, rng):
    identity = Residual(Sequential(Conv2D(2, 2, 3, padding=1, dtype="float64", rng=0), BatchNorm2D(2, dtype="float64"),
                                   ReLU()))
    projection = Residual(Conv2D(2, 3, 3, stride=2, padding=1, dtype="float64", rng=1),
                          shortcut=Conv2D(2, 3, 1, stride=2, bias=False, dtype="float64", rng=2))
    for block in (identity, projection):
        _randomize(block, rng)
        result = gradcheck(block, B.asarray(rng.standard_normal((2, 2, 5, 5))))
        assert result.ok and set(result.max_abs_error) == {"x", *block.params}
    assert set(projection.params) == {"body.W", "body.b", "shortcut.W"}


def test_residual_rejects_mismatched_branches(backend, rng):
    block = Residual(Conv2D(2, 3, 3, padding=1, dtype="float64", rng=0))
    with pytest.raises(ValueError, match=r"body's output shape \(1, 3, 4, 4\) differs from the input \(identity "
                                         r"shortcut\) \(1, 2, 4, 4\)"):
        block.forward(B.asarray(np.zeros((1, 2, 4, 4))))
    with pytest.raises(ValueError, match=r"the body maps \(1, 2, 4, 4\) to \(1, 3, 4, 4\)"):
        block.output_shape((1, 2, 4, 4))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        block.backward(B.asarray(np.zeros((1, 3, 4, 4))))


def test_a_layer_object_may_appear_only_once():
    conv = Conv2D(2, 2, 3, padding=1, rng=0)
    with pytest.raises(ValueError, match=r"the same Conv2D object appears at '0' and '1.body'"):
        Sequential(conv, Residual(conv))
    with pytest.raises(TypeError, match=r"Residual takes xpcnn layers; body is function"):
        Residual(lambda x: x)


def test_composite_views_are_read_only(backend):
    model = _resnet()
    assert list(model.params)[:3] == ["0.W", "1.gamma", "1.beta"]
    with pytest.raises(TypeError):
        model.params["0.W"] = None
    assert model.num_params() == sum(int(np.prod(tuple(v.shape))) for v in model.params.values())


def test_nested_state_config_and_checkpoint_round_trip(backend, rng, tmp_path):
    model = _resnet()
    _randomize(model, rng)
    model.forward(B.asarray(rng.standard_normal((4, 2, 6, 6))), train=True)  # move the running statistics
    config = json.loads(json.dumps(model.config()))
    assert config[3]["type"] == "Residual" and config[5]["args"]["shortcut"]["type"] == "Sequential"
    rebuilt = Sequential.from_config(config)
    assert rebuilt.config() == model.config() and repr(rebuilt) == repr(model)
    assert rebuilt.need_input_grad is False and rebuilt[3].body[0].need_input_grad is True
    rebuilt.load_state_dict(model.state_dict())
    x = B.asarray(rng.standard_normal((2, 2, 6, 6)))
    np.testing.assert_array_equal(B.to_numpy(rebuilt(x)), B.to_numpy(model(x)))

    opt = optim.Adam(model.parameters(), lr=1e-2)
    model.forward(x, train=True)
    model.backward(B.asarray(rng.standard_normal((2, 3))))
    before = {ref.name: B.to_numpy(ref.value).copy() for ref in model.parameters()}
    opt.step()
    assert all(not np.array_equal(B.to_numpy(ref.value), before[ref.name]) for ref in model.parameters())
    assert "5.shortcut.0.W/exp_avg" in opt.state_dict()["slots"]
    path = checkpoint.save(tmp_path / "res.npz", model, opt, epoch=1)
    loaded, meta = checkpoint.load_model(path)
    np.testing.assert_array_equal(B.to_numpy(loaded(x)), B.to_numpy(model(x)))
    opt2 = optim.Adam(rebuilt.parameters(), lr=1e-2)
    checkpoint.restore(path, rebuilt, opt2)
    for name, value in opt.state_dict()["slots"].items():
        np.testing.assert_array_equal(B.to_numpy(opt2.state_dict()["slots"][name]), B.to_numpy(value))


def test_flat_checkpoint_in_the_version_1_format_still_loads(tmp_path, rng):
    """A checkpoint written by hand the way flat models were always stored (names ``<index>.<key>``)."""
    W0, b0 = rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2)
    W3 = rng.standard_normal((8, 3))
    meta = {"format": "xpcnn-checkpoint", "version": 1, "epoch": 2, "optimizer": None, "scheduler": None,
            "rng_state": None, "history": [], "extra": {},
            "model_config": [
                {"type": "Conv2D", "args": {"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3],
                                            "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "bias": True,
                                            "init": "he", "dtype": "float64"}},
                {"type": "ReLU", "args": {}}, {"type": "Flatten", "args": {}},
                {"type": "Dense", "args": {"in_features": 8, "out_features": 3, "bias": False, "init": "he",
                                           "dtype": "float64"}}]}
    path = tmp_path / "old.npz"
    np.savez(path, **{"model/0.W": W0, "model/0.b": b0, "model/3.W": W3,
                      "__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    model, _ = checkpoint.load_model(path)
    assert model.config() == meta["model_config"]
    assert [ref.name for ref in model.parameters()] == ["0.W", "0.b", "3.W"]
    x = rng.standard_normal((2, 1, 4, 4))
    want = np.maximum(R.conv2d(x, W0, b0), 0).reshape(2, 8) @ W3
    np.testing.assert_allclose(B.to_numpy(model(x)), want, rtol=1e-12)
    checkpoint.restore(path, Sequential.from_config(meta["model_config"]))


def test_to_moves_nested_layers(rng):
    pytest.importorskip("torch")
    with B.using("numpy"):
        model = _resnet(dtype="float32")
        x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
        want = B.to_numpy(model(B.asarray(x)))
    model.to("torch")
    assert all(B.backend_name(v) == "torch" for v in model.state_dict().values())
    with B.using("torch"):
        np.testing.assert_allclose(B.to_numpy(model(B.asarray(x))), want, rtol=1e-5, atol=1e-6)


def test_summary_lists_nested_layers(backend):
    text = _resnet().summary((1, 2, 8, 8))
    lines = text.splitlines()
    assert any(line.startswith("Residual") for line in lines)
    assert any(line.startswith("  shortcut: Sequential") and "(N, 6, 4, 4)" in line for line in lines)
    assert any(line.startswith("    Conv2D(4, 6, (1, 1), stride=(2, 2)") for line in lines)
    assert lines[-1].split()[-1] == f"{_resnet().num_params():,}"


def test_empty_and_nested_empty_sequential(backend, rng):
    """No layers: no parameters, identity forward and backward, and it still round-trips through its config."""
    model = Sequential(Sequential(), ReLU())
    assert model.parameters() == [] and model.state_dict() == {} and model.num_params() == 0
    x = B.asarray(rng.standard_normal((2, 3)))
    np.testing.assert_array_equal(B.to_numpy(model.forward(x, train=True)), np.maximum(B.to_numpy(x), 0))
    rebuilt = Sequential.from_config(json.loads(json.dumps(model.config())))
    assert rebuilt.config() == model.config() and len(rebuilt[0]) == 0
