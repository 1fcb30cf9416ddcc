"""Model-planned fusion (``xpcnn.kernels.fusion``): what gets fused, and that it changes no result.

Oracles: the same model run layer by layer (fusion off) on the same kernel set, and the reference
kernels.  Parameters, gradients' keys, state dicts and configs are the unfused model's.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import kernels, models
from xpcnn import layers as L
from xpcnn.functional.pool import pool_geometry
from xpcnn.kernels import fusion
from xpcnn.model import Sequential


def unit_kinds(model):
    return [type(u).__name__ for u in fusion.plan(model.layers)]


def test_plan_fuses_exactly_conv_relu_maxpool():
    model = models.lenet5(rng=0)
    assert unit_kinds(model) == ["FusedConvReluPool", "FusedConvReluPool", "Flatten", "Dense", "ReLU", "Dense",
                                 "ReLU", "Dense"]
    other = Sequential(L.Conv2D(1, 2, 3, rng=0), L.LeakyReLU(), L.MaxPool2D(2),   # not ReLU
                       L.Conv2D(2, 2, 3, rng=0), L.ReLU(), L.AvgPool2D(2),       # not max pooling
                       L.Conv2D(2, 2, 1, rng=0), L.ReLU())                       # incomplete
    assert unit_kinds(other) == ["Conv2D", "LeakyReLU", "MaxPool2D", "Conv2D", "ReLU", "AvgPool2D", "Conv2D", "ReLU"]
    bn = models.bn_cnn(rng=0)  # Conv -> BN -> ReLU -> pool: the batch norm and the ReLU fuse
    assert unit_kinds(bn) == ["Conv2D", "FusedBatchNormReLU", "MaxPool2D", "Conv2D", "FusedBatchNormReLU", "MaxPool2D",
                              "Flatten", "Dropout", "Dense", "FusedBatchNormReLU", "Dropout", "Dense"]
    loose = Sequential(L.BatchNorm2D(2), L.LeakyReLU(), L.BatchNorm2D(2), L.Dropout(0.1), L.ReLU(), L.BatchNorm2D(2))
    assert unit_kinds(loose) == ["BatchNorm2D", "LeakyReLU", "BatchNorm2D", "Dropout", "ReLU", "BatchNorm2D"]


def test_fusion_is_off_in_reference_mode_and_when_disabled():
    model = models.lenet5(rng=0)
    with kernels.using_kernels("reference"):
        assert fusion.forward_units(model) == model.layers
    with fusion.using_fusion(False):
        assert fusion.forward_units(model) == model.layers
    with kernels.using_kernels("auto"), fusion.using_fusion(True):
        assert "FusedConvReluPool" in [type(u).__name__ for u in fusion.forward_units(model)]


def run_step(model, x, y_onehot_grad):
    out = model.forward(x, train=True)
    dx = model.backward(y_onehot_grad)
    return out, dx, {k: np.array(B.to_numpy(v)) for k, v in ((r.name, r.grad) for r in model.parameters())}


@pytest.mark.parametrize("name", ["lenet5", "wide"])
def test_fused_model_matches_unfused_and_reference(name):
    pytest.importorskip("numba", reason="numba is not installed: the fused kernel is numba_cpu's")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((19, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((19, 10)).astype(np.float32)
    results = {}
    for label, mode, fused in (("fused", "fast", True), ("unfused", "fast", False), ("reference", "reference", False)):
        model = models.build(name, rng=3)
        with kernels.using_kernels(mode), fusion.using_fusion(fused):
            if label == "fused":
                conv = model[0]
                g = pool_geometry((19, conv.out_channels, 28, 28), 2)
                assert fusion.conv2d_relu_max_pool2d.implementation(
                    x, conv.params["W"], conv.params["b"], conv.stride, conv.padding, conv.dilation, g) == "numba_cpu"
            results[label] = run_step(model, x, dout)
            state_keys, config = sorted(model.state_dict()), model.config()
    fused_out, _, fused_grads = results["fused"]
    for other in ("unfused", "reference"):
        out, _, grads = results[other]
        tol = 0.0 if other == "unfused" else 1e-5
        scale = float(np.max(np.abs(out)))
        assert float(np.max(np.abs(fused_out - out))) <= tol * scale
        assert grads.keys() == fused_grads.keys()
        for key in grads:
            err = float(np.max(np.abs(fused_grads[key] - grads[key]))) / float(np.max(np.abs(grads[key])))
            assert err <= (1e-6 if other == "unfused" else 1e-5), (other, key, err)
    assert state_keys == sorted(models.build(name, rng=3).state_dict())
    assert config == models.build(name, rng=3).config()


def test_fused_unit_backward_before_forward_is_an_error():
    model = models.lenet5(rng=0)
    unit = fusion.plan(model.layers)[0]
    with pytest.raises(RuntimeError, match="before forward"):
        unit.backward(np.zeros((1, 6, 14, 14), np.float32))


def test_fused_unit_validates_like_the_conv_layer():
    model = models.lenet5(rng=0)
    with pytest.raises(ValueError, match="channel mismatch"):
        model.forward(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        model.forward(np.zeros((2, 1, 28, 28), np.float64))


def test_fused_op_reference_runs_on_other_backends():
    """Where no fast set has the fused op (array_api_strict), its reference chains the three ops."""
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    outs = []
    for fused in (True, False):
        with B.using("array_api_strict"), fusion.using_fusion(fused):
            model = models.lenet5(rng=2)
            outs.append(np.array(B.to_numpy(model.forward(B.asarray(x_host), train=True))))
            model.backward(B.asarray(np.ones((3, 10), np.float32)))
            assert model[0].grads["W"].shape == (6, 1, 5, 5)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_layers_with_replaced_methods_are_not_fused():
    """A probe or hook put on a layer instance must run: such a layer is never fused away."""
    model = models.lenet5(rng=0)
    calls = []
    relu = model[1]
    original = relu.forward

    def probe(x, train=False):
        calls.append(x.shape)
        return original(x, train=train)

    relu.forward = probe
    x = np.zeros((2, 1, 28, 28), np.float32)
    with kernels.using_kernels("auto"), fusion.using_fusion(True):
        model.forward(x)
        assert calls == [(2, 6, 28, 28)]
        assert [type(u).__name__ for u in fusion.forward_units(model)][:4] == ["Conv2D", "ReLU", "MaxPool2D",
                                                                              "FusedConvReluPool"]


def test_nested_sequentials_fuse_inside_and_never_across_their_boundary():
    """A nested Sequential plans its own children; a pattern split by a boundary runs layer by layer."""
    inner_full = Sequential(L.Conv2D(1, 4, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2D(2))
    split = Sequential(L.Conv2D(4, 4, 3, padding=1, rng=1), L.ReLU())  # the pool is outside
    model = Sequential(inner_full, split, L.MaxPool2D(2), L.Flatten(), L.Dense(4 * 7 * 7, 3, rng=2))
    grouped = Sequential(L.Conv2D(4, 4, 3, padding=1, groups=2, rng=3), L.ReLU(), L.MaxPool2D(2))
    with kernels.using_kernels("auto"), fusion.using_fusion(True):
        assert [type(u).__name__ for u in fusion.forward_units(inner_full)] == ["FusedConvReluPool"]
        assert [type(u).__name__ for u in fusion.forward_units(split)] == ["Conv2D", "ReLU"]
        assert [type(u).__name__ for u in fusion.forward_units(model)] == ["Sequential", "Sequential", "MaxPool2D",
                                                                          "Flatten", "Dense"]
        assert [type(u).__name__ for u in fusion.forward_units(grouped)] == ["Conv2D", "ReLU", "MaxPool2D"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((5, 3)).astype(np.float32)
    results = []
    for fused in (True, False):
        with fusion.using_fusion(fused):
            y = model.forward(x, train=True)
            model.backward(dout)
            results.append((y, {r.name: np.array(r.grad) for r in model.parameters()}))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=0, atol=1e-6 * float(np.abs(results[1][0]).max()))
    for key, g in results[1][1].items():
        np.testing.assert_allclose(results[0][1][key], g, rtol=0, atol=1e-5 * float(np.abs(g).max()), err_msg=key)


@pytest.mark.parametrize("name", ["bn", "resnet8"])
def test_fused_batch_norm_relu_matches_unfused_and_reference(name):
    """Train step (outputs, every gradient, running statistics), then eval mode: fused = unfused bit for bit
    on the fast set, and within float32 rounding of the reference kernels."""
    pytest.importorskip("numba", reason="numba is not installed: the fused kernel is numba_cpu's")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((9, 10)).astype(np.float32)
    results = {}
    for label, mode, fused in (("fused", "fast", True), ("unfused", "fast", False), ("reference", "reference", False)):
        model = models.build(name, rng=3)
        model.set_rng(7)  # the same dropout masks
        with kernels.using_kernels(mode), fusion.using_fusion(fused):
            kinds = [type(u).__name__ for u in fusion.forward_units(model)]
            assert ("FusedBatchNormReLU" in kinds) == fused
            out, _, grads = run_step(model, x, dout)
            evaluated = np.array(model.forward(x, train=False))
        state = {k: np.array(B.to_numpy(v)) for k, v in model.state_dict().items()}
        results[label] = (out, evaluated, grads, state)
    for other, tol in (("unfused", 0.0), ("reference", 1e-5)):
        for a, b in zip(results["fused"][:2], results[other][:2]):
            assert float(np.max(np.abs(a - b))) <= tol * float(np.max(np.abs(b))), other
        for which in (2, 3):
            fused_arrays, arrays = results["fused"][which], results[other][which]
            assert fused_arrays.keys() == arrays.keys()
            for key in arrays:
                err = float(np.max(np.abs(fused_arrays[key] - arrays[key])))
                assert err <= tol * max(float(np.max(np.abs(arrays[key]))), 1.0), (other, key, err)


def test_fused_batch_norm_relu_unit_runs_a_synchronised_batch_norm_unfused():
    """A batch norm with ``sync`` set (data parallelism) must run its sync op: the pair is not fused then."""
    calls = []

    class Probe:
        def forward(self, *args):
            calls.append("forward")
            return kernels.batch_norm.forward(*args)

        def backward(self, dout, cache):
            calls.append("backward")
            return kernels.batch_norm.backward(dout, cache)

    norm, relu = L.BatchNorm2D(3), L.ReLU()
    unit = fusion.FusedBatchNormReLU(norm, relu)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    norm.sync = Probe()
    y = unit.forward(x, train=True)
    dx = unit.backward(np.ones_like(y))
    assert calls == ["forward", "backward"]
    norm.sync = None
    y2 = unit.forward(x, train=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_allclose(unit.backward(np.ones_like(y2)), dx, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="before forward"):
        fusion.FusedBatchNormReLU(L.BatchNorm2D(3), L.ReLU()).backward(np.ones_like(y))
    with pytest.raises(ValueError, match="channels"):
        unit.forward(np.zeros((4, 2, 5, 5), np.float32), train=True)
