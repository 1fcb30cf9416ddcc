"""The layer protocol, checked on every layer class and every lane.

Conv2D and the pooling layers get smoke coverage here only (their math has
its own tests).  For each layer: params/grads keys, shapes and dtypes after
backward; gradcheck in float64; float32 by default; dtype mismatches; backward
before forward; ``dout`` never modified; seeded initial weights identical on
every lane; ``config()`` round trip; ``output_shape`` agrees with ``forward``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn.gradient_check import gradcheck
from xpcnn.layers import (
    LAYER_TYPES,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sigmoid,
    Tanh,
)
from xpcnn.model import Sequential

# name -> (factory(dtype, seed) -> layer, input shape, takes a dtype)
SPECS = {
    "Conv2D": (lambda dt, s: Conv2D(2, 3, 3, padding=1, dtype=dt, rng=s), (2, 2, 5, 5), True),
    "Conv2D_stride": (lambda dt, s: Conv2D(2, 2, (3, 2), stride=2, dtype=dt, rng=s), (2, 2, 5, 6), True),
    "Conv2D_depthwise": (lambda dt, s: Conv2D(3, 6, 3, padding=1, groups=3, bias=False, dtype=dt, rng=s),
                         (2, 3, 5, 4), True),
    "MaxPool2D": (lambda dt, s: MaxPool2D(2), (2, 2, 4, 4), False),
    "GlobalAvgPool2D": (lambda dt, s: GlobalAvgPool2D(), (2, 3, 3, 5), False),
    "AvgPool2D": (lambda dt, s: AvgPool2D(2, stride=1, padding=1), (2, 2, 3, 3), False),
    "Dense": (lambda dt, s: Dense(6, 4, dtype=dt, rng=s), (3, 6), True),
    "Dense_xavier": (lambda dt, s: Dense(5, 2, bias=False, init="xavier_uniform", dtype=dt, rng=s), (3, 5), True),
    "Flatten": (lambda dt, s: Flatten(), (2, 3, 2, 2), False),
    "ReLU": (lambda dt, s: ReLU(), (3, 5), False),
    "LeakyReLU": (lambda dt, s: LeakyReLU(0.1), (2, 3, 2, 2), False),
    "Sigmoid": (lambda dt, s: Sigmoid(), (3, 5), False),
    "Tanh": (lambda dt, s: Tanh(), (3, 5), False),
    "Dropout": (lambda dt, s: Dropout(0.3, rng=s), (4, 5), False),
    "BatchNorm1D": (lambda dt, s: BatchNorm1D(5, dtype=dt), (6, 5), True),
    "BatchNorm2D": (lambda dt, s: BatchNorm2D(3, momentum=0.2, dtype=dt), (4, 3, 3, 3), True),
    "Residual": (lambda dt, s: Residual(
        Sequential(Conv2D(2, 2, 3, padding=1, dtype=dt, rng=s), BatchNorm2D(2, dtype=dt), Tanh()),
        shortcut=Conv2D(2, 2, 1, bias=False, dtype=dt, rng=s + 1)), (2, 2, 4, 3), True),
    "Sequential": (lambda dt, s: _nested(Sequential(Conv2D(2, 3, 2, dtype=dt, rng=s), Tanh(), Flatten(),
                                                    Dense(3 * 3 * 2, 2, dtype=dt, rng=s))), (2, 2, 4, 3), True),
}
NAMES = list(SPECS)


def _nested(model):
    """A Sequential as it behaves inside another layer: it returns dx."""
    model.need_input_grad = True
    return model
PARAM_LAYERS = ["Conv2D", "Dense", "BatchNorm1D", "BatchNorm2D"]


def _input(rng, shape, dtype):
    x = rng.standard_normal(shape)
    x = x + 0.05 * np.sign(x)  # away from the ReLU kink and from max-pool ties
    return B.asarray(x, dtype=dtype)


def _randomize_params(layer, rng):
    """Non-trivial parameter values (zero biases and unit gammas hide mistakes)."""
    for ref in layer.parameters():  # composites: nested names, written through the ParamRef
        host = rng.standard_normal(tuple(ref.value.shape)) * 0.5 + (1.0 if ref.key == "gamma" else 0.0)
        ref.assign(B.to_device_like(host, ref.value))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_params_and_grads_match_after_backward(backend, rng, name, dtype):
    make, shape, _ = SPECS[name]
    layer = make(dtype, 0)
    x = _input(rng, shape, dtype)
    y = layer.forward(x, train=True)
    assert y.dtype == getattr(backend.xp, dtype)
    assert tuple(y.shape) == layer.output_shape(shape)
    dx = layer.backward(B.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype))
    assert tuple(dx.shape) == shape and dx.dtype == getattr(backend.xp, dtype)
    assert set(layer.grads) == set(layer.params)
    for key, p in layer.params.items():
        g = layer.grads[key]
        assert tuple(g.shape) == tuple(p.shape), key
        assert g.dtype == p.dtype == getattr(backend.xp, dtype), key


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(backend, rng, name):
    make, shape, _ = SPECS[name]
    x = _input(rng, shape, "float64")
    if name == "Dropout":
        # each forward draws a new mask: check a freshly seeded layer per evaluation
        def f(x):
            layer = make("float64", 3)
            return layer.forward(x, train=True), layer.backward

        assert gradcheck(f, x).ok
        return
    layer = make("float64", 0)
    _randomize_params(layer, rng)
    result = gradcheck(layer, x)
    assert result.ok
    assert set(result.max_abs_error) == {"x", *layer.params}


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n][2]])
def test_float32_by_default(backend, name):
    default = {
        "Conv2D": lambda: Conv2D(2, 3, 3), "Conv2D_stride": lambda: Conv2D(2, 2, 3, stride=2),
        "Conv2D_depthwise": lambda: Conv2D(3, 6, 3, groups=3),
        "Dense": lambda: Dense(6, 4), "Dense_xavier": lambda: Dense(5, 2, bias=False),
        "BatchNorm1D": lambda: BatchNorm1D(5), "BatchNorm2D": lambda: BatchNorm2D(3),
        "Residual": lambda: Residual(Conv2D(2, 2, 3, padding=1)), "Sequential": lambda: Sequential(Dense(2, 3)),
    }[name]()
    assert default.params and all(p.dtype == backend.xp.float32 for p in default.params.values())
    assert all(v.dtype == backend.xp.float32 for v in default.buffers.values())
    assert default.dtype == backend.xp.float32


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n][2]])
def test_input_dtype_mismatch_raises(backend, rng, name):
    make, shape, _ = SPECS[name]
    with pytest.raises(TypeError, match="dtype"):
        make("float32", 0).forward(_input(rng, shape, "float64"), train=True)
    with pytest.raises(TypeError, match="dtype"):
        make("float64", 0).forward(_input(rng, shape, "float32"), train=False)


@pytest.mark.parametrize("name", NAMES)
def test_backward_before_forward_raises(backend, rng, name):
    make, shape, _ = SPECS[name]
    layer = make("float64", 0)
    out_shape = layer.output_shape(shape)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(B.asarray(np.ones(out_shape), dtype="float64"))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "Flatten"])  # Flatten keeps only its input shape
def test_eval_forward_drops_the_cache(backend, rng, name):
    """Eval mode caches nothing: a backward after it must refuse instead of using a stale train cache."""
    make, shape, _ = SPECS[name]
    layer = make("float64", 0)
    layer.forward(_input(rng, shape, "float64"), train=True)
    y = layer.forward(_input(rng, shape, "float64"), train=False)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(B.asarray(np.ones(tuple(y.shape)), dtype="float64"))


@pytest.mark.parametrize("name", NAMES)
def test_backward_does_not_modify_dout(backend, rng, name):
    make, shape, _ = SPECS[name]
    layer = make("float64", 0)
    y = layer.forward(_input(rng, shape, "float64"), train=True)
    dout = B.asarray(rng.standard_normal(tuple(y.shape)), dtype="float64")
    before = B.to_numpy(dout).copy()
    dx = layer.backward(dout)
    np.testing.assert_array_equal(B.to_numpy(dout), before)
    assert dx is not dout or name == "Flatten"  # Flatten may return a view of the same data


@pytest.mark.parametrize("name", ["Conv2D", "Conv2D_stride", "Dense", "Dense_xavier"])
def test_same_seed_same_initial_weights_on_every_lane(backend, name):
    make, _, _ = SPECS[name]
    with B.using("numpy"):
        reference = {k: B.to_numpy(v).copy() for k, v in make("float32", 1234).params.items()}
    layer = make("float32", 1234)
    assert set(layer.params) == set(reference)
    for key, value in layer.params.items():
        np.testing.assert_array_equal(B.to_numpy(value), reference[key])
    other = make("float32", 1235)
    assert not np.array_equal(B.to_numpy(other.params["W"]), reference["W"])


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(backend, rng, name):
    make, shape, _ = SPECS[name]
    layer = make("float64", 0)
    config = json.loads(json.dumps(layer.config()))  # JSON-able
    cls = LAYER_TYPES[type(layer).__name__]
    if isinstance(config, dict) and not layer.children():  # a leaf: the config is its constructor's keywords
        rebuilt = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    else:
        rebuilt = cls.from_config(config)
        rebuilt.need_input_grad = layer.need_input_grad
    assert type(rebuilt) is type(layer)
    assert rebuilt.config() == layer.config()
    assert repr(rebuilt) == repr(layer)
    assert set(rebuilt.params) == set(layer.params) and set(rebuilt.buffers) == set(layer.buffers)
    for key, value in layer.params.items():
        assert tuple(rebuilt.params[key].shape) == tuple(value.shape) and rebuilt.params[key].dtype == value.dtype
    rebuilt.load_state_dict(layer.state_dict())
    x = _input(rng, shape, "float64")
    np.testing.assert_array_equal(B.to_numpy(rebuilt.forward(x)), B.to_numpy(layer.forward(x)))
    assert rebuilt.num_params() == layer.num_params()


def test_every_registered_layer_is_covered():
    covered = {type(make("float32", 0)).__name__ for make, _, _ in SPECS.values()}
    assert covered == set(LAYER_TYPES)


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_matches_output_shape_and_dtype(backend, rng, name):
    make, shape, _ = SPECS[name]
    layer = make("float32", 0)
    y = layer.forward(_input(rng, shape, "float32"), train=False)
    assert tuple(y.shape) == layer.output_shape(shape) and y.dtype == backend.xp.float32


def test_num_params(backend):
    assert Conv2D(3, 4, (3, 2)).num_params() == 4 * 3 * 3 * 2 + 4
    assert Dense(6, 5, bias=False).num_params() == 30
    assert BatchNorm2D(7).num_params() == 14
    assert ReLU().num_params() == 0


def test_layer_to_moves_params_and_buffers(rng):
    pytest.importorskip("torch")
    with B.using("numpy"):
        layer = BatchNorm1D(3, dtype="float64")
        layer.forward(B.asarray(rng.standard_normal((5, 3)), dtype="float64"), train=True)
        before = {k: B.to_numpy(v).copy() for k, v in {**layer.params, **layer.buffers}.items()}
    assert layer.to("torch") is layer
    for key, value in {**layer.params, **layer.buffers}.items():
        assert B.backend_name(value) == "torch"
        np.testing.assert_array_equal(B.to_numpy(value), before[key])
    assert layer.grads == {}


def test_repr_shows_non_default_arguments():
    assert repr(ReLU()) == "ReLU()"
    assert "alpha=0.1" in repr(LeakyReLU(0.1))
    r = repr(Conv2D(1, 4, 3, padding=1))
    assert "padding=(1, 1)" in r and "stride" not in r
