"""xpcnn.interop.pytorch: PyTorch modules in (``from_torch``) and out (``to_torch``), checked against torch itself.

The torch networks here are written by hand with ``torch.nn`` (never built with ``to_torch``), and their
own forward passes are the oracle: logits must agree within 1e-6 of the largest logit in float32 and
1e-12 in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import backend as B
from xpcnn import layers as XL
from xpcnn import models
from xpcnn.interop import InteropError, UnsupportedModuleError, state_names

torch = pytest.importorskip("torch", reason="the PyTorch interop tests need torch (pip install 'xpcnn[torch]')")
nn = torch.nn
from xpcnn.interop import from_torch, to_torch  # noqa: E402  (after the importorskip)

TOL = {"float32": 1e-6, "float64": 1e-12}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's thread pool spins against other processes on a shared 2-core machine (20x slower there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(got, want) -> float:
    """``max |got - want| / max |want|`` on the host, in float64."""
    got = np.asarray(B.to_numpy(got), np.float64)
    want = np.asarray(want.detach().numpy() if isinstance(want, torch.Tensor) else want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.abs(got - want).max() / np.abs(want).max())


def randomize_norms(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch norm non-trivial affine parameters and running statistics (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return net


def every_module_net(dtype: str) -> torch.nn.Sequential:
    """A hand-written torch net with every supported module type, nested Sequentials included."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.1),
        nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),              # 12 -> 6
                      nn.Conv2d(6, 8, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 1))),  # -> 6x3
        nn.Tanh(),
        nn.AvgPool2d(2, stride=2, padding=1, ceil_mode=True),                             # 6x3 -> 4x2
        nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(8 * 4 * 2, 16), nn.BatchNorm1d(16), nn.Sigmoid(),
        nn.Linear(16, 5), nn.ReLU(),
        nn.Linear(5, 3, bias=False),
    )
    return randomize_norms(net).to(TORCH_DTYPE[dtype]).eval()


def lenet5_torch() -> torch.nn.Sequential:
    """LeNet-5 as a PyTorch user writes it."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).eval()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_every_module_type_same_logits(dtype):
    net = every_module_net(dtype)
    model = from_torch(net)

    def leaves(seq):
        for layer in seq.layers:
            yield from leaves(layer) if isinstance(layer, xpcnn.Sequential) else [layer]

    assert [type(layer).__name__ for layer in leaves(model)] == [
        "Conv2D", "BatchNorm2D", "LeakyReLU", "MaxPool2D", "Conv2D", "Tanh", "AvgPool2D", "Flatten", "Dropout",
        "Dense", "BatchNorm1D", "Sigmoid", "Dense", "ReLU", "Dense"]
    assert isinstance(model.layers[3], xpcnn.Sequential)  # the nested Sequential stays nested
    assert all(B.dtype_name(p.value.dtype) == dtype for p in model.parameters())
    x = np.random.default_rng(1).standard_normal((7, 1, 12, 12)).astype(dtype)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    assert rel_err(model(x), want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["lenet5", "bn", "simple"])
def test_to_torch_same_logits_and_back_exactly(name, dtype):
    model = models.build(name, rng=3, dtype=dtype)
    for layer in model.layers:  # running statistics as after training
        if "running_mean" in layer.buffers:
            n = layer.num_features
            layer.buffers["running_mean"] = B.asarray(np.linspace(-0.5, 0.5, n), dtype=dtype)
            layer.buffers["running_var"] = B.asarray(np.linspace(0.5, 2.0, n), dtype=dtype)
    net = to_torch(model)
    assert not net.training
    x = np.random.default_rng(2).standard_normal((9, 1, 28, 28)).astype(dtype)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    assert want.dtype == TORCH_DTYPE[dtype]
    assert rel_err(model(x), want) <= TOL[dtype]
    back = from_torch(net)

    def architecture(m):  # the initializer name is not part of the architecture (the weights are copied)
        return [{**c, "args": {k: v for k, v in c["args"].items() if k != "init"}} for c in m.config()]

    assert architecture(back) == architecture(model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(B.to_numpy(back.state_dict()[key]), B.to_numpy(value), err_msg=key)


def test_linear_weights_are_transposed_and_names_follow_torch():
    model = models.lenet5(rng=0)
    net = to_torch(model)
    torch_state = net.state_dict()
    for xname, tname, transposed in state_names(model):
        x = B.to_numpy(model.state_dict()[xname])
        t = torch_state[tname].numpy()
        np.testing.assert_array_equal(x.T if transposed else x, t, err_msg=f"{xname} -> {tname}")
    assert ("7.W", "7.weight", True) in state_names(model)  # Dense(400, 120): W (in, out) vs weight (out, in)
    assert tuple(torch_state["7.weight"].shape) == (120, 400)


def test_training_mode_batch_norm_updates_match():
    """Momentum and the unbiased running variance carry over: one train-mode step on both sides."""
    net = randomize_norms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.2), nn.ReLU(),
                                        nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8, eps=1e-3)))
    model = from_torch(net)
    x = np.random.default_rng(4).standard_normal((6, 1, 8, 8)).astype(np.float32)
    net.train()
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    assert rel_err(model.forward(x, train=True), want) <= 1e-5
    for xname, tname, transposed in state_names(model):
        want_state = net.state_dict()[tname].numpy()
        np.testing.assert_allclose(B.to_numpy(model.state_dict()[xname]), want_state.T if transposed else want_state,
                                   rtol=1e-5, atol=1e-6, err_msg=xname)


@pytest.mark.slow
def test_pytorch_trained_model_predicts_the_same_in_xpcnn():
    """A LeNet-5 trained for a few steps in PyTorch on real MNIST gives the same predictions in xpcnn."""
    ds = xpcnn.datasets.load_mnist(download=False, progress=False)
    x = (xpcnn.datasets.to_float(ds.x_train[:512]) - 0.1307) / 0.3081
    y = torch.from_numpy(ds.y_train[:512].astype(np.int64))
    net = lenet5_torch().train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for step in range(6):
        batch = slice(64 * step, 64 * (step + 1))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x[batch])), y[batch]).backward()
        opt.step()
    net.eval()
    x_test = ((xpcnn.datasets.to_float(ds.x_test[:256]) - 0.1307) / 0.3081).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x_test))
    got = from_torch(net).predict(x_test)
    assert rel_err(got, want) <= TOL["float32"]
    np.testing.assert_array_equal(np.argmax(B.to_numpy(got), axis=1), want.argmax(dim=1).numpy())


def test_state_dict_into_an_xpcnn_architecture():
    net = lenet5_torch()
    model = from_torch(net.state_dict(), model=models.lenet5(rng=9))
    x = np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    assert rel_err(model(x), want) <= TOL["float32"]
    twin = to_torch(models.lenet5(rng=10), weights=net.state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value), key


def test_state_dict_that_does_not_fit_names_the_keys():
    state = lenet5_torch().state_dict()
    state["99.weight"] = state.pop("0.weight")
    with pytest.raises(InteropError, match=r"missing \['0.weight'\], unexpected \['99.weight'\]"):
        from_torch(state, model=models.lenet5(rng=0))
    with pytest.raises(InteropError, match="pass model="):
        from_torch(lenet5_torch().state_dict())
    with pytest.raises(InteropError, match="do not fit"):
        to_torch(models.lenet5(rng=0), weights=state)


@pytest.mark.parametrize("net, position, named", [
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU()), "'1'", "torch.nn.GELU"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Softmax(dim=1))), "'1.1'",
     "torch.nn.Softmax"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")), "'0'", "padding_mode='reflect'"),
    (lambda: nn.Sequential(nn.ReLU(), nn.AvgPool2d(2, count_include_pad=False)), "'1'", "count_include_pad=False"),
    (lambda: nn.Sequential(nn.Flatten(0)), "'0'", "start_dim=0"),
    (lambda: nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), "'0'", "track_running_stats=False"),
    (lambda: nn.Sequential(nn.MaxPool2d(2, dilation=2)), "'0'", "dilated"),
])
def test_unsupported_module_names_module_and_position(net, position, named):
    with pytest.raises(UnsupportedModuleError) as info:
        from_torch(net())
    message = str(info.value)
    assert f"position {position}" in message and named in message, message


def test_custom_module_class_is_refused_with_its_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) * 2

    with pytest.raises(UnsupportedModuleError, match=r"position '<top>'.*Net"):
        from_torch(Net())
    with pytest.raises(UnsupportedModuleError, match=r"position '2'.*Net"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), Net()))


def test_to_torch_refuses_a_layer_without_twin():
    @XL.register
    class Scale(XL.Layer):
        def forward(self, x, train=False):
            return 2 * x

        def backward(self, dout):
            return 2 * dout

    model = xpcnn.Sequential(XL.Dense(2, 2, rng=0), Scale())
    with pytest.raises(UnsupportedModuleError, match=r"position '1'.*Scale"):
        to_torch(model)
    XL.LAYER_TYPES.pop("Scale")


def test_mixed_dtypes_are_refused():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(InteropError, match=r"float32.*float64"):
        from_torch(net)
    model = from_torch(net, dtype="float64")  # an explicit dtype converts everything
    assert all(B.dtype_name(p.value.dtype) == "float64" for p in model.parameters())
