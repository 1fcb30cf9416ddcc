"""xpcnn.interop.safetensors_io: weights in .safetensors files, read back by safetensors itself (NumPy and torch)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import xpcnn
from xpcnn import backend as B
from xpcnn import layers as XL
from xpcnn import models
from xpcnn.interop import InteropError, state_names

pytest.importorskip("safetensors", reason="the safetensors tests need safetensors (pip install 'xpcnn[safetensors]')")
from safetensors.numpy import load_file, save_file  # noqa: E402

from xpcnn.interop.safetensors_io import load_safetensors, save_safetensors  # noqa: E402


def trained_like_bn_model(dtype: str = "float32"):
    """The BN model with running statistics that differ from their initial values."""
    model = models.bn_cnn(rng=7, dtype=dtype)
    for layer in model.layers:
        if "running_mean" in layer.buffers:
            n = layer.num_features
            layer.buffers["running_mean"] = B.asarray(np.linspace(-1, 1, n), dtype=dtype)
            layer.buffers["running_var"] = B.asarray(np.linspace(0.5, 1.5, n), dtype=dtype)
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_safetensors_numpy_reads_xpcnn_names_exactly(tmp_path, dtype):
    model = trained_like_bn_model(dtype)
    path = tmp_path / "bn.safetensors"
    save_safetensors(model, path)
    tensors = load_file(str(path))
    own = model.state_dict()
    assert set(tensors) == set(own)
    for key, value in own.items():
        assert tensors[key].dtype == np.dtype(dtype), key
        np.testing.assert_array_equal(tensors[key], B.to_numpy(value), err_msg=key)
    assert {"0.W", "1.gamma", "1.running_var", "10.W", "11.beta"} <= set(tensors)  # xpcnn's names, documented


def test_load_rebuilds_the_model_from_metadata_with_the_same_outputs(tmp_path):
    model = trained_like_bn_model()
    path = tmp_path / "bn.safetensors"
    save_safetensors(model, path, metadata={"note": "hello"})
    again = load_safetensors(path)
    assert again.config() == model.config()
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(B.to_numpy(again(x)), B.to_numpy(model(x)))
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    assert meta["note"] == "hello" and json.loads(meta["architecture"]) == model.config()


def test_load_into_a_given_model_casts_to_its_dtype(tmp_path):
    path = tmp_path / "l.safetensors"
    src = models.lenet5(rng=1, dtype="float64")
    save_safetensors(src, path)
    dst = load_safetensors(path, models.lenet5(rng=2, dtype="float32"))
    for key, value in dst.state_dict().items():
        assert B.dtype_name(value.dtype) == "float32"
        np.testing.assert_array_equal(B.to_numpy(value), B.to_numpy(src.state_dict()[key]).astype(np.float32))


def test_a_state_dict_with_torch_names_loads_with_numpy_only(tmp_path):
    """A PyTorch-style file (``0.weight``, Linear weights (out, in)) loads without torch being needed."""
    model = models.lenet5(rng=3)
    torch_like = {}
    for xname, tname, transposed in state_names(model):
        host = B.to_numpy(model.state_dict()[xname])
        torch_like[tname] = np.ascontiguousarray(host.T if transposed else host)
    path = tmp_path / "torch_names.safetensors"
    save_file(torch_like, str(path))
    loaded = load_safetensors(path, models.lenet5(rng=4))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(B.to_numpy(loaded.state_dict()[key]), B.to_numpy(value), err_msg=key)
    with pytest.raises(InteropError, match="no xpcnn architecture"):
        load_safetensors(path)


def test_names_that_fit_nothing_and_damaged_files_are_clear_errors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(InteropError, match=r"fits neither.*missing \['0.W'"):
        load_safetensors(path, models.lenet5(rng=0))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InteropError, match="cannot read .*bad.safetensors"):
        load_safetensors(bad, models.lenet5(rng=0))
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_save_is_atomic_and_validates_before_writing(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(models.lenet5(rng=0), path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="strings"):
        save_safetensors(models.lenet5(rng=1), path, metadata={"epoch": 3})
    with pytest.raises(ValueError, match="names must be"):
        save_safetensors(models.lenet5(rng=1), path, names="keras")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind


def test_same_size_as_npz_checkpoint_arrays(tmp_path):
    """The weights cost the same bytes in either format (plus small headers)."""
    model = models.lenet5(rng=0)
    path = tmp_path / "m.safetensors"
    save_safetensors(model, path)
    raw = sum(B.to_numpy(v).nbytes for v in model.state_dict().values())
    assert raw < path.stat().st_size < raw + 16_384


class TestWithTorch:
    torch = None

    @pytest.fixture(autouse=True)
    def _torch(self):
        TestWithTorch.torch = pytest.importorskip("torch", reason="reading with safetensors.torch needs torch")

    def test_safetensors_torch_reads_the_file(self, tmp_path):
        from safetensors.torch import load_file as torch_load

        model = trained_like_bn_model()
        path = tmp_path / "bn.safetensors"
        save_safetensors(model, path)
        tensors = torch_load(str(path))
        for key, value in model.state_dict().items():
            assert tensors[key].dtype == self.torch.float32
            np.testing.assert_array_equal(tensors[key].numpy(), B.to_numpy(value), err_msg=key)

    def test_torch_names_file_loads_straight_into_the_twin(self, tmp_path):
        from safetensors.torch import load_file as torch_load

        from xpcnn.interop import to_torch

        model = trained_like_bn_model()
        path = tmp_path / "bn-torch.safetensors"
        save_safetensors(model, path, names="torch")
        twin = to_torch(models.bn_cnn(rng=99))
        twin.load_state_dict(torch_load(str(path)), strict=False)  # num_batches_tracked is not in the file
        x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
        with self.torch.no_grad():
            got = twin(self.torch.from_numpy(x)).numpy()
        want = B.to_numpy(model(x))
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()

    def test_pytorch_state_dict_saved_by_pytorch(self, tmp_path):
        """``safetensors.torch.save_file(net.state_dict())`` -> from_torch / to_torch / load_safetensors."""
        from safetensors.torch import save_file as torch_save

        from xpcnn.interop import from_torch, to_torch

        nn = self.torch.nn
        self.torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(4 * 13 * 13, 10)).eval()
        with self.torch.no_grad():
            net[1].running_mean.copy_(self.torch.linspace(-1, 1, 4))
        path = tmp_path / "net.safetensors"
        torch_save(net.state_dict(), str(path))
        x = np.random.default_rng(2).standard_normal((5, 1, 28, 28)).astype(np.float32)
        with self.torch.no_grad():
            want = net(self.torch.from_numpy(x)).numpy()
        def architecture():  # the same net written in xpcnn, with its own random weights
            return xpcnn.Sequential(XL.Conv2D(1, 4, 3, rng=5), XL.BatchNorm2D(4), XL.ReLU(), XL.MaxPool2D(2),
                                    XL.Flatten(), XL.Dense(4 * 13 * 13, 10, rng=6))

        for loaded in (from_torch(path, model=architecture()), load_safetensors(path, architecture())):
            got = B.to_numpy(loaded(x))
            assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
        twin = to_torch(architecture(), weights=path)
        for key, value in net.state_dict().items():
            assert self.torch.equal(twin.state_dict()[key], value), key

