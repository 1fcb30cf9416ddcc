"""The CUDA kernel set behind the seam, on the NumPy-backed CuPy stand-in (kernels run through the CPU shim).

Each op of the set against the reference ops on the same stand-in arrays, the fused conv -> ReLU ->
max-pool pair against the three reference ops, the multi-tensor optimizer update bit for bit, and the
launch budget of one LeNet-5 training step (<= 40 launches, no host sync) with both paths training alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import kernels
from xpcnn.functional.pool import pool_geometry
from xpcnn.functional.updates import SLOTS
from xpcnn.kernels.cuda import cupy_set, dense_ops, shim
from xpcnn.kernels.cuda.budget import count_lenet5_steps
from xpcnn.kernels.cuda.standin import StandIn

pytestmark = pytest.mark.skipif(shim.compiler() is None, reason="no host C++ compiler (g++) for the CUDA CPU shim")

rng = np.random.default_rng(99)


@pytest.fixture(scope="module")
def sx() -> StandIn:
    ns = StandIn()
    cupy_set.install(ns)
    return ns


def host(a: object) -> np.ndarray:
    return np.array(a._a)  # type: ignore[attr-defined]


def close(got: object, want: object, rel: float = 2e-6) -> None:
    g, w = host(got), host(want)
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, w, rtol=0, atol=rel * max(1.0, float(np.abs(w).max())))


def both(op: kernels.Op, *args: object, **kwargs: object) -> tuple[tuple, tuple]:
    """``op.forward`` with the CUDA set and with the reference, on the same arguments."""
    with kernels.using_kernels("auto"):
        assert op.implementation(*args, **kwargs) == "cuda"
        fast = op.forward(*args, **kwargs)
    with kernels.using_kernels("reference"):
        ref = op.forward(*args, **kwargs)
    return fast, ref


CONVS = [  # N, C, H, W, F, KH, KW, stride, padding, dilation, bias
    (2, 3, 9, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1), True),
    (3, 2, 11, 10, 5, 3, 2, (2, 1), (0, 2), (1, 2), False),
    (1, 1, 28, 28, 6, 5, 5, (1, 1), (2, 2), (1, 1), True),
]


@pytest.mark.parametrize("geom", CONVS)
@pytest.mark.parametrize("need_dx", [True, False])
def test_conv2d_matches_reference(sx: StandIn, geom: tuple, need_dx: bool) -> None:
    N, C, H, W, F, KH, KW, s, p, d, bias = geom
    x = sx.from_numpy(rng.standard_normal((N, C, H, W)).astype(np.float32))
    Wt = sx.from_numpy(rng.standard_normal((F, C, KH, KW)).astype(np.float32))
    b = sx.from_numpy(rng.standard_normal(F).astype(np.float32)) if bias else None
    (y, cache), (y_ref, cache_ref) = both(kernels.conv2d, x, Wt, b, s, p, d)
    close(y, y_ref)
    dout = sx.from_numpy(rng.standard_normal(y_ref.shape).astype(np.float32))
    grads = kernels.conv2d.backward(dout, cache, need_dx)
    grads_ref = kernels.conv2d.backward(dout, cache_ref, need_dx)
    assert grads[0] is None if not need_dx else grads[0] is not None
    assert grads[2] is None if not bias else grads[2] is not None  # no bias: no db (the reference computes one)
    for got, want in zip(grads, grads_ref, strict=True):
        if got is not None:
            close(got, want)


@pytest.mark.parametrize("pool", [(2, 2, 0, False), (3, 2, 1, True), (2, 1, 0, False)])
def test_relu_and_max_pool_match_reference_exactly_on_the_conv_layout(sx: StandIn, pool: tuple) -> None:
    k, s, p, ceil = pool
    # the conv output's layout: (N, F, H, W) over (F, N, H, W) memory
    z = sx.from_numpy(rng.integers(-3, 4, (5, 2, 9, 8)).astype(np.float32)).transpose(1, 0, 2, 3)
    (r, rc), (r_ref, rc_ref) = both(kernels.relu, z)
    np.testing.assert_array_equal(host(r), host(r_ref))
    g = pool_geometry(r.shape, k, s, p, ceil)
    (y, pc), (y_ref, pc_ref) = both(kernels.max_pool2d, r, g)
    np.testing.assert_array_equal(host(y), host(y_ref))
    dout = sx.from_numpy(rng.standard_normal(y_ref.shape).astype(np.float32))
    dr, dr_ref = kernels.max_pool2d.backward(dout, pc), kernels.max_pool2d.backward(dout, pc_ref)
    np.testing.assert_array_equal(host(dr), host(dr_ref))
    assert dr.strides == r.strides  # the gradient keeps the forward input's layout
    dz, dz_ref = kernels.relu.backward(dr, rc), kernels.relu.backward(dr_ref, rc_ref)
    np.testing.assert_array_equal(host(dz), host(dz_ref))
    # a gradient in another layout than the forward output is brought into it
    other = sx.from_numpy(host(dr_ref))
    np.testing.assert_array_equal(host(kernels.relu.backward(other, rc)), host(dz_ref))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cublas", [False, True])
def test_dense_matches_reference(sx: StandIn, bias: bool, cublas: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if cublas:  # the large-problem path (cuBLAS GEMMs)
        monkeypatch.setattr(dense_ops, "DENSE_KERNEL_LIMIT", 0)
    x = sx.from_numpy(rng.standard_normal((9, 13)).astype(np.float32))
    W = sx.from_numpy(rng.standard_normal((13, 6)).astype(np.float32))
    b = sx.from_numpy(rng.standard_normal(6).astype(np.float32)) if bias else None
    (y, c), (y_ref, c_ref) = both(kernels.dense, x, W, b)
    close(y, y_ref)
    dout = sx.from_numpy(rng.standard_normal((9, 6)).astype(np.float32))
    grads = kernels.dense.backward(dout, c, True)
    assert (grads[2] is None) == (not bias)
    for got, want in zip(grads, kernels.dense.backward(dout, c_ref, True), strict=True):
        if got is not None:
            close(got, want)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_softmax_cross_entropy_matches_reference_and_tallies(sx: StandIn, label_dtype: type) -> None:
    logits = sx.from_numpy((rng.standard_normal((37, 10)) * 3).astype(np.float32))
    labels_host = rng.integers(0, 10, 37)
    labels = sx.from_numpy(labels_host.astype(label_dtype))
    k = cupy_set.kernels_for(sx)
    if k.tallies:
        cupy_set.tallies_of(k)  # reset
    (loss, c), (loss_ref, c_ref) = both(kernels.softmax_cross_entropy, logits, labels)
    close(loss, loss_ref, 1e-6)
    close(kernels.softmax_cross_entropy.backward(None, c), kernels.softmax_cross_entropy.backward(None, c_ref), 1e-6)
    half = sx.from_numpy(np.asarray(0.5, np.float32))
    close(kernels.softmax_cross_entropy.backward(half, c), kernels.softmax_cross_entropy.backward(half, c_ref), 1e-6)
    t = cupy_set.tallies_of(k)
    correct = int((np.argmax(host(logits), axis=1) == labels_host).sum())
    assert (t["correct"], t["seen"], t["bad_labels"]) == (correct, 37.0, 0.0)
    np.testing.assert_allclose(t["loss_sum"], float(host(loss_ref)) * 37, rtol=1e-5)


HYPER = {
    "sgd": {"lr": 0.1, "weight_decay": 0.01}, "momentum": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    "nesterov": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.001}, "adagrad": {"lr": 0.1, "eps": 1e-10,
                                                                                "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.01},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


@pytest.mark.parametrize("rule", sorted(HYPER))
def test_optimizer_update_is_bitwise_the_reference_and_one_launch_on_flat_buffers(sx: StandIn, rule: str) -> None:
    shapes = [(4, 3), (4,), (2, 2, 5)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    fast_p = [sx.from_numpy(a) for a in init]
    ref_p = [sx.from_numpy(a) for a in init]
    fast_s = [{n: sx.zeros(s, dtype=np.float32) for n in SLOTS[rule]} for s in shapes]
    ref_s = [{n: sx.zeros(s, dtype=np.float32) for n in SLOTS[rule]} for s in shapes]
    k = cupy_set.kernels_for(sx)
    for step in (1, 2, 3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        with kernels.using_kernels("reference"):
            ref_p = kernels.optimizer_update(ref_p, [sx.from_numpy(g) for g in grads], ref_s, [step] * 3, rule,
                                             HYPER[rule])
        group = cupy_set._group_of(k, fast_p)
        if group is not None:  # from step 2 on: gradients written where the backward kernels write them,
            fast_g = [group.view(group.grads, i) for i in range(3)]
            for view, g in zip(fast_g, grads, strict=True):
                view._a[...] = g
            if step == 3:  # but one from elsewhere (a reference op's) on step 3
                fast_g[1] = sx.from_numpy(grads[1])
        else:
            fast_g = [sx.from_numpy(g) for g in grads]
        sx.ledger.reset()
        with kernels.using_kernels("auto"):
            fast_p = kernels.optimizer_update(fast_p, fast_g, fast_s, [step] * 3, rule, HYPER[rule])
        if step == 2:
            assert sx.ledger.launches == {f"kernel:{cupy_set._RULE_KERNEL[rule]}": 1}  # the whole group at once
        if step == 3:
            assert sx.ledger.total == 2, sx.ledger.launches  # a copy of the foreign gradient + the update
        for got, want in zip(fast_p, ref_p, strict=True):
            np.testing.assert_array_equal(host(got).view(np.uint32), host(want).view(np.uint32))
        for got_s, want_s in zip(fast_s, ref_s, strict=True):
            for n in SLOTS[rule]:
                np.testing.assert_array_equal(host(got_s[n]).view(np.uint32), host(want_s[n]).view(np.uint32))
    # the optimizer's state now lives in the group's flat buffers
    group = cupy_set._group_of(k, fast_p)
    assert group is not None
    for i, s in enumerate(fast_s):
        for n in SLOTS[rule]:
            assert s[n].data.ptr == group.view(group.slots[n], i).data.ptr


def test_a_new_optimizer_over_grouped_parameters_keeps_its_own_state(sx: StandIn) -> None:
    shapes = [(3, 2), (4,)]
    p = [sx.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    with kernels.using_kernels("auto"):
        for step in (1, 2):  # an Adam moves the parameters into a flat group
            adam_slots = [{n: sx.zeros(s, dtype=np.float32) for n in SLOTS["adam"]} for s in shapes]
            g = [sx.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
            p = kernels.optimizer_update(p, g, adam_slots, [step] * 2, "adam", HYPER["adam"])
    p_ref = [sx.from_numpy(host(a)) for a in p]
    # a momentum optimizer whose state was loaded from elsewhere (non-zero buffers)
    buffers = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    slots = [{"momentum_buffer": sx.from_numpy(b)} for b in buffers]
    slots_ref = [{"momentum_buffer": sx.from_numpy(b)} for b in buffers]
    for step in (1, 2):
        g = [sx.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        with kernels.using_kernels("auto"):
            p = kernels.optimizer_update(p, g, slots, [step] * 2, "momentum", HYPER["momentum"])
        with kernels.using_kernels("reference"):
            p_ref = kernels.optimizer_update(p_ref, g, slots_ref, [step] * 2, "momentum", HYPER["momentum"])
        for a, b in zip(p, p_ref, strict=True):
            np.testing.assert_array_equal(host(a), host(b))
        for a, b in zip(slots, slots_ref, strict=True):
            np.testing.assert_array_equal(host(a["momentum_buffer"]), host(b["momentum_buffer"]))


def test_optimizer_update_with_different_step_counts_goes_tensor_by_tensor(sx: StandIn) -> None:
    shapes = [(3,), (5,)]
    p = [sx.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    p_ref = [sx.from_numpy(host(a)) for a in p]
    slots = [{n: sx.zeros(s, dtype=np.float32) for n in SLOTS["adam"]} for s in shapes]
    slots_ref = [{n: sx.zeros(s, dtype=np.float32) for n in SLOTS["adam"]} for s in shapes]
    g = [sx.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    with kernels.using_kernels("auto"):
        new = kernels.optimizer_update(p, g, slots, [1, 4], "adam", HYPER["adam"])
    with kernels.using_kernels("reference"):
        ref = kernels.optimizer_update(p_ref, g, slots_ref, [1, 4], "adam", HYPER["adam"])
    for a, b in zip(new, ref, strict=True):
        np.testing.assert_array_equal(host(a), host(b))


def test_fused_conv_relu_maxpool_matches_the_three_reference_ops(sx: StandIn) -> None:
    x = sx.from_numpy(rng.standard_normal((3, 2, 12, 12)).astype(np.float32))
    W = sx.from_numpy(rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    b = sx.from_numpy(rng.standard_normal(4).astype(np.float32))
    args = ((1, 1), (1, 1), (1, 1))
    g = pool_geometry((3, 4, 12, 12), 2)
    y, cache = cupy_set.conv_relu_maxpool_forward(x, W, b, *args, g)
    with kernels.using_kernels("reference"):
        z, cz = kernels.conv2d.forward(x, W, b, *args)
        r, cr = kernels.relu.forward(z)
        y_ref, cp = kernels.max_pool2d.forward(r, g)
    close(y, y_ref)
    dout = sx.from_numpy(rng.standard_normal(y_ref.shape).astype(np.float32))
    with kernels.using_kernels("reference"):
        dx_ref, dW_ref, db_ref = kernels.conv2d.backward(
            kernels.relu.backward(kernels.max_pool2d.backward(dout, cp), cr), cz, True)
    for got, want in zip(cupy_set.conv_relu_maxpool_backward(dout, cache), (dx_ref, dW_ref, db_ref), strict=True):
        close(got, want, 1e-5)


def test_ineligible_calls_use_the_reference(sx: StandIn) -> None:
    x64 = sx.from_numpy(rng.standard_normal((2, 3)))
    with kernels.using_kernels("auto"):
        assert kernels.relu.implementation(x64) == "reference"
        assert kernels.relu.implementation(sx.from_numpy(np.ones((2, 3), np.float32))) == "cuda"


def test_lenet5_training_step_within_the_launch_budget_and_equal_to_the_reference() -> None:
    c = count_lenet5_steps(batch=16, steps=3, optimizer="sgd")
    fast, ref = c.launches["cuda"], c.launches["reference"]
    assert max(fast[1:]) <= 40, c.kinds["cuda"]  # after the first step has built the flat buffers
    assert c.syncs["cuda"] == [0, 0, 0]
    assert min(ref) > max(fast[1:])  # the reference path on the same namespace launches more
    assert c.max_param_difference() < 1e-6
    np.testing.assert_allclose(c.losses["cuda"], c.losses["reference"], rtol=1e-5)
    # what a model-level planner fusing Conv2D -> ReLU -> MaxPool2D would launch, training alike
    assert max(c.launches["cuda+fused"][1:]) < min(fast[1:])
    assert c.max_param_difference("cuda+fused") < 1e-6


def test_lenet5_adam_steps_follow_the_reference() -> None:
    c = count_lenet5_steps(batch=8, steps=3, optimizer="adam")
    assert max(c.launches["cuda"][1:]) <= 40
    assert c.kinds["cuda"].get("kernel:adam_f32") == 1
    np.testing.assert_allclose(c.losses["cuda"], c.losses["reference"], rtol=1e-4)
