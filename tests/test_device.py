"""Device placement without a GPU: the ``strict:device1`` and ``current-device`` lanes (tests/device_lanes.py).

Oracles: the device each array reports (array-api-strict refuses to mix devices, so a
misplaced array also raises), the NumPy lane's numbers for the same seed, and the
``current-device`` lane's own misbehaviour (shown below) that the backend must work around.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_lanes import LANE_NAMES, activate, lane_backend, on_lane, strict

from xpcnn import backend as B
from xpcnn import kernels, models, optim
from xpcnn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpcnn.losses import SoftmaxCrossEntropy
from xpcnn.model import Sequential


@pytest.fixture(params=LANE_NAMES)
def lane(request, monkeypatch):
    """The lane's Backend, set (not entered) for the test, like ``XPCNN_BACKEND`` would."""
    be = lane_backend(request.param, monkeypatch)
    with activate(be):
        yield be


def small_net(seed: int = 0, dtype: str = "float32") -> Sequential:
    """Conv (padded) + batch norm + pooling + dropout + dense: every layer kind that creates arrays."""
    return Sequential(Conv2D(1, 3, 3, padding=1, rng=seed, dtype=dtype), BatchNorm2D(3, dtype=dtype), ReLU(),
                      MaxPool2D(2, ceil_mode=True), Flatten(), Dropout(0.25, rng=seed + 1),
                      Dense(3 * 4 * 4, 5, rng=seed + 2, dtype=dtype))


# ------------------------------------------------------------------------------ the lanes themselves

def test_current_device_lane_ignores_device_argument(monkeypatch):
    """The lane reproduces the bug class: creation outside the device's scope lands on the CPU."""
    be = lane_backend("current-device", monkeypatch)
    assert strict.zeros(3, device=be.device).device == strict.Device()  # device= ignored
    with be.scope():
        assert strict.zeros(3).device == be.device
        assert strict.full((2,), 1.0).device == be.device
    with pytest.raises(ValueError, match="different devices"):
        strict.zeros(3, device=be.device) + B.asarray(np.zeros(3), backend=be)


def test_strict_device_spec_resolves():
    be = B.resolve("array_api_strict:device1")
    assert be.device == strict.Device("device1") and be.spec == "array_api_strict:device1"
    assert B.resolve("array_api_strict:cpu").spec == "array_api_strict"
    with pytest.raises(B.BackendError, match="device3"):
        B.resolve("array_api_strict:device3")


def test_backend_is_hashable_and_compares_by_spec(monkeypatch):
    a, b = B.resolve("array_api_strict:device1"), B.resolve("array_api_strict")
    fake = lane_backend("current-device", monkeypatch)
    table = {a: 1, b: 2, fake: 3, B.resolve("numpy"): 4}
    assert len(table) == 4 and table[B.Backend(a.name, a.xp, a.device, a.spec)] == 1
    assert a != b and a == B.Backend(a.name, a.xp, object(), a.spec)


def test_using_enters_the_device(monkeypatch):
    be = lane_backend("current-device", monkeypatch)
    with B.using(be) as active:
        assert active is be and B.get_backend() is be
        assert strict.zeros(2).device == be.device
    assert strict.zeros(2).device == strict.Device()


# ------------------------------------------------------------------------------ creation and transfers

def test_creation_helpers_land_on_the_device(lane):
    assert on_lane(B.full((2, 3), 0.5, "float32"), lane)
    x = B.asarray(np.ones((2, 2)), "float32")
    z = B.zeros_like(x)
    assert on_lane(z, lane) and z.dtype == strict.float32 and tuple(z.shape) == (2, 2)
    np.testing.assert_array_equal(B.to_numpy(z), 0.0)


def test_asarray_accepts_device_arrays(lane, rng):
    host = rng.standard_normal((3, 4))
    x = B.asarray(host, "float64")
    y = B.asarray(x)  # device -> same device: a copy, no numpy.asarray on the device array
    assert on_lane(y, lane) and y is not x
    np.testing.assert_array_equal(B.to_numpy(y), host)
    y32 = B.asarray(x, "float32")
    assert y32.dtype == strict.float32
    np.testing.assert_allclose(B.to_numpy(y32), host.astype(np.float32), rtol=0, atol=0)
    cpu = B.asarray(x, backend="array_api_strict")  # device -> CPU of the same library
    assert cpu.device == strict.Device()
    np.testing.assert_array_equal(B.to_numpy(cpu), host)
    to_np = B.asarray(x, backend="numpy")  # across libraries: through the host, explicitly
    assert isinstance(to_np, np.ndarray)
    np.testing.assert_array_equal(to_np, host)


def test_to_device_like_accepts_device_arrays(lane, rng):
    host = rng.standard_normal((2, 5))
    like = B.asarray(np.zeros((1,)), "float32")
    moved = B.to_device_like(B.asarray(host, "float64", backend="array_api_strict"), like)  # CPU strict -> device1
    assert on_lane(moved, lane) and moved.dtype == strict.float32
    np.testing.assert_array_equal(B.to_numpy(moved), host.astype(np.float32))
    src = B.asarray(host, "float32")
    again = B.to_device_like(src, like)
    assert on_lane(again, lane) and again is not src
    np.testing.assert_array_equal(B.to_numpy(again), B.to_numpy(src))
    onto_numpy = B.to_device_like(src, np.zeros(1, np.float64))
    assert isinstance(onto_numpy, np.ndarray) and onto_numpy.dtype == np.float64


# ------------------------------------------------------------------------------ models and optimizers

def test_model_and_optimizer_state_live_on_the_device(lane):
    model = small_net()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    for name, value in model.state_dict().items():
        assert on_lane(value, lane), name
    for slots in opt.state.values():
        for slot in slots.values():
            assert on_lane(slot, lane)


def _steps(model, opt, x, y, steps: int) -> list[float]:
    loss_fn, losses = SoftmaxCrossEntropy(), []
    for _ in range(steps):
        out = model.forward(x, train=True)
        losses.append(loss_fn.forward(out, y))
        model.backward(loss_fn.backward())
        opt.step()
    return [float(B.to_numpy(v)) for v in losses]


def test_training_steps_in_scope_match_numpy(lane, rng):
    """A few steps of every layer kind on the lane (inside its scope) reproduce the NumPy lane."""
    x = rng.standard_normal((6, 1, 7, 7)).astype(np.float64)
    y = np.array([0, 1, 2, 3, 4, 0])

    def run(be):
        with B.using(be):
            model = small_net(dtype="float64")
            opt = optim.Adam(model.parameters(), lr=1e-2)
            losses = _steps(model, opt, B.asarray(x), B.asarray(y, "int64"), 3)
            return losses, {k: B.to_numpy(v) for k, v in model.state_dict().items()}

    with kernels.using_kernels("reference"):  # the same algorithm as the lane's: NumPy's reference kernels
        ref_losses, ref_state = run(B.resolve("numpy"))
    losses, state = run(lane)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for key, value in ref_state.items():
        np.testing.assert_allclose(state[key], value, rtol=0, atol=1e-12 * max(1.0, np.abs(value).max()))


def test_lenet5_built_on_the_lane(lane):
    model = models.lenet5(rng=0)
    assert all(on_lane(p.value, lane) for p in model.parameters())
    with lane.scope():
        out = model.forward(B.asarray(np.zeros((2, 1, 28, 28)), "float32"))
    assert on_lane(out, lane) and tuple(out.shape) == (2, 10)


def test_dropout_and_dense_bias_on_the_lane(lane):
    layer = Dense(4, 3, rng=0)
    assert on_lane(layer.params["b"], lane)
    drop = Dropout(0.5, rng=1)
    with lane.scope():
        out = drop.forward(B.asarray(np.ones((2, 4)), "float32"), train=True)
    assert on_lane(out, lane)
    values = set(np.unique(B.to_numpy(out)).tolist())
    assert values <= {0.0, 2.0}


# ------------------------------------------------------------------------------ TF32 (logic only: no GPU here)

def test_tf32_switch_sets_the_cublas_math_mode(monkeypatch):
    calls = []

    class FakeCublas:
        CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3

        @staticmethod
        def setMathMode(handle, mode):
            calls.append((handle, mode))

    assert B.set_cupy_tf32(True, FakeCublas, handle=7) == 3
    assert B.set_cupy_tf32(False, FakeCublas, handle=7) == 0
    assert calls == [(7, 3), (7, 0)]
    for value, expected in (("1", True), ("0", False), ("", False), ("yes", False), ("2", True)):
        monkeypatch.setenv("CUPY_TF32", value)
        assert B.tf32_requested() is expected


def test_predict_moves_input_and_enters_the_device(lane, rng):
    model = small_net(dtype="float64")
    host = rng.standard_normal((5, 1, 7, 7))
    out = model.predict(host, batch_size=2)  # a host array, moved; the pads created inside the scope
    assert on_lane(out, lane) and tuple(out.shape) == (5, 5)
    cpu = B.asarray(host, "float64", backend="array_api_strict")  # same library, other device
    np.testing.assert_array_equal(B.to_numpy(model.predict(cpu, batch_size=2)), B.to_numpy(out))
    with B.using("numpy"):
        ref = small_net(dtype="float64")
        np.testing.assert_allclose(B.to_numpy(out), ref.predict(host, batch_size=2), rtol=1e-12)


def test_env_var_selects_the_strict_device(monkeypatch):
    token = B._explicit.set(None)
    monkeypatch.setenv(B.ENV_VAR, "array_api_strict:device1")
    B._env_spec.cache_clear()
    try:
        be = B.get_backend()
        assert be.spec == "array_api_strict:device1" and be.device == strict.Device("device1")
        assert B.asarray(np.zeros(2)).device == be.device
    finally:
        B._explicit.reset(token)
        monkeypatch.delenv(B.ENV_VAR)
        B._env_spec.cache_clear()
