"""xpcnn.interop.onnx_export: the exported graph passes onnx.checker and onnxruntime reproduces xpcnn's logits."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import backend as B
from xpcnn import checkpoint, models
from xpcnn import layers as XL
from xpcnn.interop import UnsupportedModuleError, main_export

onnx = pytest.importorskip("onnx", reason="the ONNX export tests need onnx (pip install 'xpcnn[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the ONNX export tests need onnxruntime (pip install 'xpcnn[onnx]')")
from xpcnn.interop.onnx_export import export_onnx  # noqa: E402

TOL = 1e-5  # max |onnxruntime - xpcnn| / max |xpcnn logit|, float32


@pytest.fixture(scope="module")
def mnist_images():
    """64 real MNIST test images, standardised as in training: float32 (64, 1, 28, 28)."""
    ds = xpcnn.datasets.load_mnist(download=False, progress=False)
    return ((xpcnn.datasets.to_float(ds.x_test[:64]) - 0.1307) / 0.3081).astype(np.float32)


def with_statistics(model):
    """Batch-norm running statistics away from their initial values (as after training)."""
    for layer in model.layers:
        if "running_mean" in layer.buffers:
            n = layer.num_features
            layer.buffers["running_mean"] = B.asarray(np.linspace(-0.3, 0.3, n), dtype="float32")
            layer.buffers["running_var"] = B.asarray(np.linspace(0.6, 1.8, n), dtype="float32")
    return model


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def rel_err(got, want) -> float:
    want = np.asarray(B.to_numpy(want), np.float64)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", ["lenet5", "bn"])
def test_onnxruntime_matches_xpcnn_on_mnist_batch_1_and_64(name, mnist_images, tmp_path):
    model = with_statistics(models.build(name, rng=0))
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, (1, 1, 28, 28))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    for batch in (1, 64):
        x = mnist_images[:batch]
        got = run_ort(path, x)
        want = model.predict(x)
        assert rel_err(got, want) <= TOL, f"batch {batch}"
        np.testing.assert_array_equal(got.argmax(axis=1), np.argmax(B.to_numpy(want), axis=1))


def test_every_layer_type(tmp_path):
    rng = np.random.default_rng(3)
    model = with_statistics(xpcnn.Sequential(
        XL.Conv2D(1, 4, 3, padding=1, bias=False, rng=1), XL.BatchNorm2D(4), XL.LeakyReLU(0.2),
        XL.MaxPool2D(3, stride=2, padding=1, ceil_mode=True),                      # 10 -> 6 (ceil)
        XL.Conv2D(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 1), rng=2), XL.Tanh(),  # -> 6x3
        XL.AvgPool2D(2, stride=2, padding=1, ceil_mode=True),                      # -> 4x2 (ceil)
        XL.Flatten(), XL.Dropout(0.5), XL.Dense(6 * 4 * 2, 8, rng=3), XL.BatchNorm1D(8), XL.Sigmoid(),
        XL.Dense(8, 5, bias=False, rng=4), XL.ReLU(), XL.Dense(5, 3, rng=5)))
    path = tmp_path / "all.onnx"
    export_onnx(model, path, (2, 1, 10, 10))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = rng.standard_normal((5, 1, 10, 10)).astype(np.float32)
    assert rel_err(run_ort(path, x), model(x)) <= TOL


def test_fixed_batch_and_opset_options(tmp_path):
    path = tmp_path / "fixed.onnx"
    export_onnx(models.lenet5(rng=0), path, (3, 1, 28, 28), opset=18, dynamic_batch=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {18}


def test_bad_arguments_are_clear_errors(tmp_path):
    model = models.lenet5(rng=0)
    with pytest.raises(ValueError, match=r"does not fit the model.*Conv2D expects \(N, 1, H, W\)"):
        export_onnx(model, tmp_path / "m.onnx", (1, 3, 28, 28))
    with pytest.raises(ValueError, match="positive integers"):
        export_onnx(model, tmp_path / "m.onnx", ("a", 1))
    with pytest.raises(ValueError, match="opset must be 17 or later"):
        export_onnx(model, tmp_path / "m.onnx", (1, 1, 28, 28), opset=13)

    @XL.register
    class Double(XL.Layer):
        def forward(self, x, train=False):
            return 2 * x

        def backward(self, dout):
            return 2 * dout

    try:
        with pytest.raises(UnsupportedModuleError, match=r"position '1'.*Double"):
            export_onnx(xpcnn.Sequential(XL.ReLU(), Double()), tmp_path / "d.onnx", (1, 4))
    finally:
        XL.LAYER_TYPES.pop("Double")
    assert not list(tmp_path.iterdir())  # nothing written by a failed export


def test_main_export_writes_a_working_file(tmp_path, capsys, mnist_images):
    model = with_statistics(models.bn_cnn(rng=1))
    ckpt = tmp_path / "bn.npz"
    checkpoint.save(ckpt, model)
    out = tmp_path / "bn.onnx"
    assert main_export([str(ckpt), str(out), "--input-shape", "1,1,28,28"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert rel_err(run_ort(out, mnist_images), model.predict(mnist_images)) <= TOL


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/missing.npz", "{tmp}/m.onnx"], "cannot load checkpoint"),
    (["{ckpt}", "{tmp}/m.onnx", "--input-shape", "1,x,28"], "--input-shape"),
    (["{ckpt}", "{tmp}/m.onnx", "--input-shape", "1,3,28,28"], "does not fit the model"),
    (["{ckpt}", "{tmp}/no/such/dir/m.onnx"], "does not exist"),
    (["{ckpt}"], "required"),
])
def test_main_export_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys):
    ckpt = tmp_path / "l.npz"
    checkpoint.save(ckpt, models.lenet5(rng=0))
    args = [a.format(tmp=tmp_path, ckpt=ckpt) for a in argv]
    assert main_export(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpcnn export: error:") and message in err, err
    assert not (tmp_path / "m.onnx").exists()
