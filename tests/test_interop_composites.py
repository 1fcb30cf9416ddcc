"""Interop with the composite layers: nested Sequential, Residual, GlobalAvgPool2D, grouped Conv2D.

The torch networks are written by hand (``torch.nn`` modules and the two twin modules of
:mod:`xpcnn.interop.pytorch`, whose forward is one line each); their forward passes are the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import backend as B
from xpcnn import layers as XL
from xpcnn.interop import UnsupportedModuleError, state_names

torch = pytest.importorskip("torch", reason="the PyTorch interop tests need torch (pip install 'xpcnn[torch]')")
nn = torch.nn
from xpcnn.interop.pytorch import GlobalAvgPool2d, Residual, from_torch, to_torch  # noqa: E402

TOL = {"float32": 1e-6, "float64": 1e-12}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(got, want) -> float:
    got = np.asarray(B.to_numpy(got), np.float64)
    want = np.asarray(want.detach().numpy() if isinstance(want, torch.Tensor) else B.to_numpy(want), np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.abs(got - want).max() / np.abs(want).max())


def small_resnet_torch(dtype: str = "float32") -> torch.nn.Sequential:
    """A hand-written small ResNet: stem, an identity block, a downsampling block, a grouped conv, head."""
    torch.manual_seed(0)

    def bn(n):
        m = nn.BatchNorm2d(n)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
        return m

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1, bias=False), bn(8))),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), bn(16)),
                 nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), bn(16))),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )
    return net.to(getattr(torch, dtype)).eval()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_small_resnet_same_logits_and_nested_names(dtype):
    net = small_resnet_torch(dtype)
    model = from_torch(net)
    assert isinstance(model.layers[3], XL.Residual) and isinstance(model.layers[3].body, xpcnn.Sequential)
    assert model.layers[5].shortcut is not None and model.layers[7].groups == 4
    assert isinstance(model.layers[8], XL.GlobalAvgPool2D)
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(dtype)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    assert rel_err(model(x), want) <= TOL[dtype]
    torch_names = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    assert {t for _, t, _ in state_names(model)} == torch_names
    assert ("5.shortcut.0.W", "5.shortcut.0.weight", False) in state_names(model)


def test_to_torch_and_back_keeps_the_structure_and_weights():
    model = from_torch(small_resnet_torch())
    twin = to_torch(model)
    assert isinstance(twin[3], Residual) and isinstance(twin[8], GlobalAvgPool2d)
    x = np.random.default_rng(1).standard_normal((3, 1, 12, 12)).astype(np.float32)
    with torch.no_grad():
        got = twin(torch.from_numpy(x))
    assert rel_err(got, model(x)) <= TOL["float32"]
    back = from_torch(twin)
    assert back.config() == model.config()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(B.to_numpy(back.state_dict()[key]), B.to_numpy(value), err_msg=key)


def test_adaptive_pool_without_flatten_or_other_sizes_is_refused():
    with pytest.raises(UnsupportedModuleError, match=r"position '1'.*followed by Flatten"):
        from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1)))
    with pytest.raises(UnsupportedModuleError, match=r"position '0'.*output_size"):
        from_torch(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()))


def test_onnx_export_of_composites(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx")
    ort = pytest.importorskip("onnxruntime", reason="checking the export needs onnxruntime")
    from xpcnn.interop import export_onnx

    model = from_torch(small_resnet_torch())
    path = tmp_path / "resnet.onnx"
    export_onnx(model, path, (1, 1, 12, 12))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(2).standard_normal((6, 1, 12, 12)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    assert rel_err(got, model(x)) <= 1e-5


def test_safetensors_with_nested_names(tmp_path):
    pytest.importorskip("safetensors", reason="needs safetensors")
    from safetensors.numpy import load_file

    from xpcnn.interop import load_safetensors, save_safetensors

    model = from_torch(small_resnet_torch())
    path = tmp_path / "r.safetensors"
    save_safetensors(model, path)
    assert "3.body.0.W" in load_file(str(path))
    again = load_safetensors(path)
    x = np.random.default_rng(3).standard_normal((2, 1, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(B.to_numpy(again(x)), B.to_numpy(model(x)))
