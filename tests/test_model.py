"""Sequential: chaining, parameters, state dicts, config rebuild, backend moves, predict, summary, gradcheck."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import GradcheckError, gradcheck
from xpcnn.layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Tanh,
)
from xpcnn.model import Sequential

X_SHAPE = (4, 2, 6, 6)


def _layers(dtype="float64", seed=0):
    """conv(2->3, 3x3, pad 1) -> BN2D -> ReLU -> maxpool 2 -> flatten -> dense(27->5) -> tanh -> BN1D -> dense(5->3)"""
    return [
        Conv2D(2, 3, 3, padding=1, dtype=dtype, rng=seed),
        BatchNorm2D(3, dtype=dtype),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(27, 5, dtype=dtype, rng=seed + 1),
        Tanh(),
        BatchNorm1D(5, dtype=dtype),
        Dense(5, 3, dtype=dtype, rng=seed + 2),
    ]


def _randomize(model, rng):
    for ref in model.parameters():
        host = rng.standard_normal(tuple(ref.value.shape)) * 0.5 + (1.0 if ref.key == "gamma" else 0.0)
        ref.assign(B.to_device_like(host, ref.value))


def _host_state(model):
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def test_forward_backward_equal_manual_chaining(backend, rng):
    model = Sequential(*_layers())
    manual = _layers()
    x = B.asarray(rng.standard_normal(X_SHAPE), dtype="float64")
    y = model.forward(x, train=True)
    h = x
    for layer in manual:
        h = layer.forward(h, train=True)
    assert tuple(y.shape) == (4, 3) and y.dtype == backend.xp.float64
    np.testing.assert_array_equal(B.to_numpy(y), B.to_numpy(h))
    dout_h = rng.standard_normal((4, 3))
    assert model.backward(B.asarray(dout_h, dtype="float64")) is None  # the first layer skips dx
    d = B.asarray(dout_h, dtype="float64")
    for layer in reversed(manual):
        d = layer.backward(d)
    assert tuple(d.shape) == X_SHAPE
    for mine, theirs in zip(model.layers, manual):
        assert set(mine.grads) == set(theirs.grads)
        for key in theirs.grads:
            np.testing.assert_allclose(B.to_numpy(mine.grads[key]), B.to_numpy(theirs.grads[key]),
                                       rtol=1e-13, atol=1e-15)
    # eval mode too
    np.testing.assert_array_equal(B.to_numpy(model(x)), B.to_numpy(_chain(manual, x)))


def _chain(layers, x):
    for layer in layers:
        x = layer.forward(x, train=False)
    return x


def test_constructor(backend):
    layers = _layers()
    assert len(Sequential(layers)) == len(layers)  # a list is accepted
    model = Sequential(*layers)
    assert model[0] is layers[0] and list(model) == layers
    assert [layer.need_input_grad for layer in model] == [False] + [True] * (len(layers) - 1)
    with pytest.raises(TypeError, match="item 1 is function"):
        Sequential(ReLU(), lambda x: x)


def test_parameter_names_and_refs(backend, rng):
    model = Sequential(*_layers())
    names = [p.name for p in model.parameters()]
    assert names == ["0.W", "0.b", "1.gamma", "1.beta", "5.W", "5.b", "7.gamma", "7.beta", "8.W", "8.b"]
    for ref in model.parameters():
        index, key = ref.name.split(".")
        assert ref.owner is model[int(index)] and ref.key == key and ref.value is model[int(index)].params[key]
        assert ref.grad is None
    model.forward(B.asarray(rng.standard_normal(X_SHAPE), dtype="float64"), train=True)
    model.backward(B.asarray(rng.standard_normal((4, 3)), dtype="float64"))
    for ref in model.parameters():
        assert ref.grad is not None and tuple(ref.grad.shape) == tuple(ref.value.shape)
    expected_total = sum(int(np.prod(B.to_numpy(p.value).shape)) for p in model.parameters())
    assert model.num_params() == expected_total == 3 * 2 * 9 + 3 + 6 + 27 * 5 + 5 + 10 + 5 * 3 + 3


def test_state_dict_round_trip(backend, rng):
    src = Sequential(*_layers(seed=0))
    _randomize(src, rng)
    src.forward(B.asarray(rng.standard_normal(X_SHAPE), dtype="float64"), train=True)  # non-trivial buffers
    state = src.state_dict()
    assert {"1.running_mean", "1.running_var", "7.running_mean", "7.running_var", "0.W"} <= set(state)
    assert len(state) == len(src.parameters()) + 4
    dst = Sequential(*_layers(seed=10))
    dst.load_state_dict(state)
    x = B.asarray(rng.standard_normal(X_SHAPE), dtype="float64")
    np.testing.assert_array_equal(B.to_numpy(dst(x)), B.to_numpy(src(x)))
    for key, value in dst.state_dict().items():
        assert B.backend_name(value) == backend.name and value.dtype == state[key].dtype
        np.testing.assert_array_equal(B.to_numpy(value), B.to_numpy(state[key]))
    # a host (NumPy) state loads onto this lane too
    dst2 = Sequential(*_layers(seed=20))
    dst2.load_state_dict(_host_state(src))
    np.testing.assert_array_equal(B.to_numpy(dst2(x)), B.to_numpy(src(x)))
    assert all(B.backend_name(v) == backend.name for v in dst2.state_dict().values())


def test_loaded_state_does_not_alias_the_source(backend, rng):
    src = Sequential(Dense(3, 2, dtype="float64", rng=0))
    dst = Sequential(Dense(3, 2, dtype="float64", rng=1))
    host_state = _host_state(src)
    dst.load_state_dict(host_state)
    host_state["0.W"][...] = 7.0  # mutate the dict we loaded from
    assert not np.any(B.to_numpy(dst[0].params["W"]) == 7.0)
    dst.load_state_dict(src.state_dict())
    view = B.to_numpy(src[0].params["W"])  # a host view of the source's weights (zero-copy on CPU lanes)
    view[...] = 5.0
    assert not np.any(B.to_numpy(dst[0].params["W"]) == 5.0)


def test_load_state_dict_errors_name_the_problem(backend, rng):
    model = Sequential(*_layers())
    good = _host_state(model)
    before = _host_state(model)

    missing = dict(good)
    del missing["5.W"]
    with pytest.raises(ValueError, match=r"missing keys \['5.W'\]"):
        model.load_state_dict(missing)

    extra = dict(good, **{"9.W": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \['9.W'\]"):
        model.load_state_dict(extra)

    wrong_shape = dict(good, **{"5.W": np.zeros((5, 27))})
    with pytest.raises(ValueError, match=r"5\.W: expected shape \(27, 5\), got \(5, 27\)"):
        model.load_state_dict(wrong_shape)

    wrong_dtype = dict(good, **{"7.running_var": good["7.running_var"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"7\.running_var: expected dtype float64, got float32"):
        model.load_state_dict(wrong_dtype)

    # a failed load changes nothing, even when the bad entry comes after good ones
    changed = {k: v + 1.0 for k, v in good.items()}
    changed["8.b"] = np.zeros(4)
    with pytest.raises(ValueError, match="8.b"):
        model.load_state_dict(changed)
    after = _host_state(model)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_from_config_rebuilds(backend, rng):
    model = Sequential(Conv2D(2, 4, (3, 2), stride=(1, 2), padding=(1, 0), dtype="float64", rng=0),
                       LeakyReLU(0.2), AvgPool2D(2), Dropout(0.25, rng=0), Flatten(),
                       Dense(4 * 3 * 1, 3, bias=False, init="xavier_uniform", dtype="float64", rng=1))
    config = json.loads(json.dumps(model.config()))
    assert [c["type"] for c in config] == ["Conv2D", "LeakyReLU", "AvgPool2D", "Dropout", "Flatten", "Dense"]
    rebuilt = Sequential.from_config(config)
    assert rebuilt.config() == model.config()
    assert repr(rebuilt) == repr(model)
    assert [p.name for p in rebuilt.parameters()] == [p.name for p in model.parameters()]
    for mine, theirs in zip(rebuilt.parameters(), model.parameters()):
        assert tuple(mine.value.shape) == tuple(theirs.value.shape) and mine.value.dtype == theirs.value.dtype
    rebuilt.load_state_dict(model.state_dict())
    x = B.asarray(rng.standard_normal((3, 2, 6, 4)), dtype="float64")
    np.testing.assert_array_equal(B.to_numpy(rebuilt(x)), B.to_numpy(model(x)))
    assert [layer.need_input_grad for layer in rebuilt] == [layer.need_input_grad for layer in model]


@pytest.mark.parametrize("bad", [[{"type": "Lambda", "args": {}}], [{"args": {}}], ["ReLU"]])
def test_from_config_rejects_unknown_layers(bad):
    with pytest.raises(ValueError, match="bad layer config at index 0"):
        Sequential.from_config(bad)


def test_to_moves_between_numpy_and_torch(rng):
    torch = pytest.importorskip("torch")
    with B.using("numpy"):
        model = Sequential(*_layers(dtype="float32"))
        _randomize(model, rng)
        x_h = rng.standard_normal(X_SHAPE)
        y_numpy = B.to_numpy(model(B.asarray(x_h, dtype="float32"))).copy()
        before = _host_state(model)
    assert model.to("torch") is model
    for key, value in model.state_dict().items():
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float32
        np.testing.assert_array_equal(B.to_numpy(value), before[key])
    with B.using("torch"):
        y_torch = B.to_numpy(model(B.asarray(x_h, dtype="float32")))
    np.testing.assert_allclose(y_torch, y_numpy, rtol=1e-5, atol=1e-6)
    model.to("numpy")
    for key, value in model.state_dict().items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, before[key])


def _trained_model(rng, dtype="float64"):
    model = Sequential(*_layers(dtype=dtype)[:-1], Dropout(0.5, rng=0), Dense(5, 3, dtype=dtype, rng=9))
    _randomize(model, rng)
    for _ in range(2):  # move the batch-norm running statistics away from (0, 1)
        model.forward(B.asarray(rng.standard_normal(X_SHAPE) * 2 + 1, dtype=dtype), train=True)
    return model


@pytest.mark.parametrize("batch_size", [1, 3, 10, 512])
def test_predict_equals_eval_forward(backend, rng, batch_size):
    model = _trained_model(rng)
    x_h = rng.standard_normal((10, 2, 6, 6))
    x = B.asarray(x_h, dtype="float64")
    expected = B.to_numpy(model.forward(x, train=False))
    got = model.predict(x, batch_size=batch_size)
    assert tuple(got.shape) == (10, 3) and got.dtype == backend.xp.float64
    assert B.backend_name(got) == backend.name
    np.testing.assert_allclose(B.to_numpy(got), expected, rtol=1e-12, atol=1e-13)
    # predict is deterministic (eval mode: no dropout, running statistics untouched)
    state = _host_state(model)
    np.testing.assert_array_equal(B.to_numpy(model.predict(x, batch_size=batch_size)), B.to_numpy(got))
    for key, value in _host_state(model).items():
        np.testing.assert_array_equal(value, state[key])


def test_predict_moves_host_input_to_the_model(backend, rng):
    model = _trained_model(rng, dtype="float32")
    x_h = rng.standard_normal((5, 2, 6, 6)).astype(np.float32)
    got = model.predict(x_h, batch_size=2)
    assert B.backend_name(got) == backend.name and got.dtype == backend.xp.float32
    np.testing.assert_allclose(B.to_numpy(got), B.to_numpy(model(B.asarray(x_h))), rtol=1e-6, atol=1e-7)


def test_summary(backend, rng):
    model = Sequential(*_layers(dtype="float32"))
    text = model.summary(X_SHAPE)
    total = sum(int(np.prod(B.to_numpy(v).shape)) for layer in model for v in layer.params.values())
    assert f"{total:,}" in text.splitlines()[-1] and "total" in text.splitlines()[-1]
    h = B.asarray(rng.standard_normal(X_SHAPE), dtype="float32")
    lines = text.splitlines()
    body = [line for line in lines[1:-1] if not set(line) <= {"-"}]
    assert len(body) == len(model)
    for layer, line in zip(model, body):
        h = layer.forward(h)
        shape = ", ".join(["N", *map(str, tuple(h.shape)[1:])])
        assert f"({shape})" in line, (line, shape)
        assert type(layer).__name__ in line
        assert line.rstrip().endswith(f"{layer.num_params():,}")


def test_output_shapes_match_forward(backend, rng):
    model = Sequential(*_layers(dtype="float32"))
    shapes = model.output_shapes(X_SHAPE)
    h = B.asarray(rng.standard_normal(X_SHAPE), dtype="float32")
    for layer, shape in zip(model, shapes):
        h = layer.forward(h)
        assert tuple(h.shape) == shape


def test_full_network_gradcheck(backend, rng):
    """conv -> relu -> maxpool -> flatten -> dense, float64: every parameter by central differences."""
    model = Sequential(Conv2D(1, 2, 3, padding=1, dtype="float64", rng=0), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(2 * 3 * 3, 3, dtype="float64", rng=1))
    _randomize(model, rng)
    refs = model.parameters()
    assert [r.name for r in refs] == ["0.W", "0.b", "4.W", "4.b"]
    x = B.asarray(rng.standard_normal((2, 1, 6, 6)), dtype="float64")
    t = B.asarray(np.array([2, 0]), dtype="int64")

    def f(*params):
        for ref, value in zip(refs, params):
            ref.owner.params[ref.key] = value
        loss, probs = F.softmax_cross_entropy(model.forward(x, train=True), t)

        def backward(dout):
            model.backward(F.softmax_cross_entropy_backward(probs, t) * dout)
            return tuple(ref.grad for ref in refs)

        return loss, backward

    result = gradcheck(f, [r.value for r in refs])
    assert result.ok and len(result.max_abs_error) == 4
    # and the check has teeth: a wrong conv gradient is caught
    conv = model[0]
    original_backward = conv.backward

    def broken(dout):
        dx = original_backward(dout)
        conv.grads["W"] = conv.grads["W"] * 1.01
        return dx

    conv.backward = broken
    with pytest.raises(GradcheckError, match="gradient of input 0"):
        gradcheck(f, [r.value for r in refs])


def test_repr(backend):
    text = repr(Sequential(ReLU(), Dense(2, 3)))
    assert text.startswith("Sequential(") and "ReLU()" in text and "Dense(2, 3)" in text


def test_config_records_dtype_names_for_any_dtype_spelling():
    """Layers built with a NumPy dtype object (not a string) still rebuild from their config."""
    model = Sequential(Conv2D(1, 2, 3, dtype=np.float64, rng=0), Flatten(), Dense(2 * 4 * 4, 3, dtype=np.float64))
    assert [entry["args"].get("dtype") for entry in model.config()] == ["float64", None, "float64"]
    rebuilt = Sequential.from_config(model.config())
    assert [p.value.dtype for p in rebuilt.parameters()] == [p.value.dtype for p in model.parameters()]


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_backward_frees_each_layers_saved_activations(mode):
    """Saved activations are freed as the backward passes each layer (nested ones too), so a second
    backward needs a new forward, as in PyTorch; the gradients are those of the first backward."""
    from xpcnn import kernels, models

    model = models.resnet8(rng=0)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with kernels.using_kernels(mode):
        out = model.forward(x, train=True)
        cached = [leaf for _, leaf in model.named_leaves() if getattr(leaf, "_cache", None) is not None]
        assert cached  # the forward saved activations somewhere
        model.backward(np.ones_like(out))
        assert [name for name, leaf in model.named_leaves() if getattr(leaf, "_cache", None) is not None] == []
        with pytest.raises(RuntimeError, match="before forward"):
            model.backward(np.ones_like(out))
