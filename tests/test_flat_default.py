"""The flat store by default (:mod:`xpcnn.flat`) and the optimizer's one-call update through it.

Oracles: the same model after :func:`xpcnn.flat.detach` (per-array storage, the per-parameter update;
same seed, same batches), ``np.shares_memory`` against the store's buffers for "the views are intact",
and the entry table for where the gaps are.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from xpcnn import checkpoint as ckpt
from xpcnn import flat, kernels, models, optim
from xpcnn.layers import Conv2D, Dense, Flatten, ReLU, Residual
from xpcnn.losses import SoftmaxCrossEntropy
from xpcnn.model import Sequential

OPTIMIZERS = {  # every rule, with and without weight decay
    "sgd": (optim.SGD, {"lr": 0.05}),
    "sgd_wd": (optim.SGD, {"lr": 0.05, "weight_decay": 0.01}),
    "momentum": (optim.Momentum, {"lr": 0.05, "momentum": 0.9}),
    "momentum_wd": (optim.Momentum, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "nesterov": (optim.Nesterov, {"lr": 0.05, "momentum": 0.9}),
    "nesterov_wd": (optim.Nesterov, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "adagrad": (optim.AdaGrad, {"lr": 0.05}),
    "adagrad_wd": (optim.AdaGrad, {"lr": 0.05, "weight_decay": 0.01}),
    "rmsprop": (optim.RMSProp, {"lr": 0.01}),
    "rmsprop_wd": (optim.RMSProp, {"lr": 0.01, "weight_decay": 0.01}),
    "adam": (optim.Adam, {"lr": 1e-2}),
    "adam_wd": (optim.Adam, {"lr": 1e-2, "weight_decay": 0.01}),
    "adamw": (optim.AdamW, {"lr": 1e-2, "weight_decay": 0.0}),
    "adamw_wd": (optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05}),
}


def tiny(seed=0):
    """Entries of 54, 6, 120 and 3 elements: every one but the last is followed by a gap."""
    return Sequential(Conv2D(1, 6, 3, rng=seed), ReLU(), Flatten(), Dense(6 * 2 * 2, 3, rng=seed + 1))


def batch(step, n=5):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


def step_once(model, opt, step):
    loss = SoftmaxCrossEntropy()
    x, y = batch(step)
    loss.forward(model.forward(x, train=True), y)
    model.backward(loss.backward())
    opt.step()


def host_params(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def gap_mask(store, dtype="float32"):
    mask = np.ones(store.params[dtype].size, bool)
    for e in store.entries:
        if e.dtype == dtype:
            mask[e.offset:e.offset + e.size] = False
    return mask


def assert_views_intact(model, opt=None):
    store = flat.store_of(model)
    assert store is not None and store.active
    for ref, view, gview in zip(store.refs, store.param_views, store.grad_views, strict=True):
        assert ref.owner.params[ref.key] is view
        assert np.shares_memory(ref.value, store.params[view.dtype.name])
        if ref.grad is not None:
            assert np.shares_memory(ref.grad, store.grads[gview.dtype.name])
    if opt is not None:
        for ref in store.refs:
            for slot, arr in opt.state[ref.name].items():
                assert np.shares_memory(arr, opt._flat_slots[slot][arr.dtype.name]), (ref.name, slot)


class Spy:
    """Records the entries of every ``kernels.optimizer_update`` call (the op itself still runs)."""

    def __init__(self, monkeypatch):
        self.calls = []
        op = kernels.optimizer_update

        def spy(params, grads, slots, steps, rule, hyper):
            self.calls.append([(tuple(p.shape), id(p)) for p in params])
            return op(params, grads, slots, steps, rule, hyper)

        monkeypatch.setattr(kernels, "optimizer_update", spy)


# -- who owns a store ---------------------------------------------------------------------------

def test_a_fresh_model_has_a_store_and_nested_composites_have_none():
    for model in (models.lenet5(rng=0), models.resnet8(rng=0), tiny()):
        store = flat.store_of(model)
        assert store is not None and [e.name for e in store.entries] == [r.name for r in model.parameters()]
        assert all(flat.store_of(layer) is None for layer in model.layers if layer.children())
        assert_views_intact(model)
    inner = Sequential(Dense(4, 4, rng=0), ReLU())
    assert flat.store_of(inner) is not None  # on its own it is an outermost model
    body = Sequential(Dense(4, 4, rng=1), ReLU())
    outer = Sequential(inner, Residual(body), Dense(4, 2, rng=2))
    assert flat.store_of(inner) is None and flat.store_of(body) is None  # adopted: the outer model owns it
    assert not any(layer.__dict__.get("_flat_wanted") for layer in (inner, body))
    store = flat.store_of(outer)
    assert [e.name for e in store.entries] == [r.name for r in outer.parameters()]
    assert all(np.shares_memory(r.value, store.params["float32"]) for r in outer.parameters())
    outer.forward(np.ones((2, 4), np.float32))  # the inner forward does not fight over the parameters
    assert_views_intact(outer)


def test_detach_is_the_opt_out_and_from_config_builds_a_store():
    model = models.lenet5(rng=0)
    flat.detach(model)
    opt = optim.Adam(model.parameters())
    assert opt._store is None and flat.store_of(model) is None
    model.forward(np.zeros((1, 1, 28, 28), np.float32))
    assert flat.store_of(model) is None
    rebuilt = Sequential.from_config(model.config())
    assert flat.store_of(rebuilt) is not None


# -- one call per dtype equals the per-parameter update ------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_one_call_update_equals_the_per_parameter_update(case, mode, monkeypatch):
    cls, hyper = OPTIMIZERS[case]
    plain = tiny()
    flat.detach(plain)
    model = tiny()
    store = flat.store_of(model)
    opt_plain, opt = cls(plain.parameters(), **hyper), cls(model.parameters(), **hyper)
    spy = Spy(monkeypatch)
    with kernels.using_kernels(mode):
        for step in range(20):
            n_before = len(spy.calls)
            step_once(plain, opt_plain, step)
            assert len(spy.calls[n_before]) == len(plain.parameters())  # the detached model: per parameter
            step_once(model, opt, step)
            # the flat model: one entry, the whole float32 buffer itself
            assert spy.calls[-1] == [((store.params["float32"].size,), id(store.params["float32"]))]
            assert_views_intact(model, opt)
    got, want = host_params(model), host_params(plain)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
        if mode == "auto" or case.startswith("sgd"):  # same arithmetic on the same elements
            assert got[key].tobytes() == want[key].tobytes(), key
    for name, slots in opt_plain.state.items():
        for slot, arr in slots.items():
            np.testing.assert_allclose(opt.state[name][slot], arr, rtol=1e-6, atol=1e-7)
    gaps = gap_mask(store)
    assert gaps.any()
    buffers = [store.params["float32"], store.grads["float32"]]
    buffers += [bufs["float32"] for bufs in opt._flat_slots.values()]
    for buf in buffers:
        assert not np.any(buf[gaps]), "a gap between entries is no longer zero"


def test_eps_zero_falls_back_so_the_gaps_never_see_zero_over_zero(monkeypatch):
    model = tiny()
    opt = optim.Adam(model.parameters(), lr=1e-2, eps=0.0)
    spy = Spy(monkeypatch)
    for step in range(3):
        step_once(model, opt, step)
    assert all(len(call) == len(model.parameters()) for call in spy.calls)  # per parameter
    store = flat.store_of(model)
    assert not np.any(store.params["float32"][gap_mask(store)])
    assert_views_intact(model, opt)


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_a_parameter_without_gradient_falls_back_and_is_skipped(mode, monkeypatch):
    plain, model = tiny(), tiny()
    flat.detach(plain)
    opt_plain = optim.Adam(plain.parameters(), lr=1e-2)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    spy = Spy(monkeypatch)
    with kernels.using_kernels(mode):
        for m, o in ((plain, opt_plain), (model, opt)):
            step_once(m, o, 0)
        frozen_before = np.array(model[3].params["b"])
        for m, o in ((plain, opt_plain), (model, opt)):  # step 2: the Dense bias has no gradient
            loss = SoftmaxCrossEntropy()
            x, y = batch(1)
            loss.forward(m.forward(x, train=True), y)
            m.backward(loss.backward())
            m[3].grads["b"] = None
            o.step()
        assert len(spy.calls[-1]) == len(model.parameters()) - 1  # the per-parameter path, bias left out
        np.testing.assert_array_equal(model[3].params["b"], frozen_before)
        assert opt._t["3.b"] == 1 and opt._t["3.W"] == 2
        for step in (2, 3):  # step counts differ from now on: per parameter, views kept
            step_once(plain, opt_plain, step)
            step_once(model, opt, step)
            assert len(spy.calls[-1]) == len(model.parameters())
    model.forward(batch(0)[0])
    assert_views_intact(model, opt)
    got, want = host_params(model), host_params(plain)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


# -- views intact through everything that replaces arrays ----------------------------------------

@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_views_stay_intact_through_optimizer_steps(case):
    cls, hyper = OPTIMIZERS[case]
    model = models.lenet5(rng=0)
    opt = cls(model.parameters(), **hyper)
    x, y = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32), np.arange(4)
    loss = SoftmaxCrossEntropy()
    for _ in range(3):
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        opt.step()
        assert_views_intact(model, opt)


def test_load_state_dict_and_checkpoint_round_trip_keep_views(tmp_path):
    model = tiny()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        step_once(model, opt, step)
    ckpt.save(tmp_path / "m.npz", model, opt)
    saved_params, saved_opt = host_params(model), {k: np.array(v) for k, v in opt.state_dict()["slots"].items()}

    other = tiny(seed=7)
    other_opt = optim.Adam(other.parameters(), lr=1e-2)
    other.load_state_dict(saved_params)
    assert_views_intact(other, other_opt)
    ckpt.restore(tmp_path / "m.npz", other, other_opt)
    assert_views_intact(other, other_opt)
    for key, value in other_opt.state_dict()["slots"].items():
        np.testing.assert_array_equal(value, saved_opt[key])
    loaded, _ = ckpt.load_model(tmp_path / "m.npz")
    assert_views_intact(loaded)
    for key, value in host_params(loaded).items():
        np.testing.assert_array_equal(value, saved_params[key])
    for step in (3, 4):  # both continue identically
        step_once(model, opt, step)
        step_once(other, other_opt, step)
    for key, value in host_params(other).items():
        assert value.tobytes() == host_params(model)[key].tobytes()
    assert_views_intact(other, other_opt)


def test_optimizer_state_dict_round_trips_into_the_flat_slots():
    model = tiny()
    opt = optim.RMSProp(model.parameters(), lr=1e-2)
    for step in range(2):
        step_once(model, opt, step)
    state = opt.state_dict()
    copy_ = {k: np.array(v) for k, v in state["slots"].items()}
    opt2 = optim.RMSProp(model.parameters(), lr=0.5)
    views_before = {name: dict(s) for name, s in opt2.state.items()}
    opt2.load_state_dict({**state, "slots": copy_})
    assert opt2.lr == opt.lr and opt2._t == opt._t
    for name, slots in opt2.state.items():
        for slot, arr in slots.items():
            assert arr is views_before[name][slot]  # copied into the views, not replaced
            np.testing.assert_array_equal(arr, copy_[f"{name}/{slot}"])


def test_to_another_backend_gets_a_new_store():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    model = tiny()
    old = flat.store_of(model)
    model.to("torch")
    store = flat.store_of(model)
    assert store is not None and store is not old and not old.active and store.library == "torch"
    assert all(r.value.data_ptr() >= store.params["float32"].data_ptr() for r in model.parameters())
    opt = optim.Adam(model.parameters(), lr=1e-2)
    x, y = batch(0)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(torch.asarray(x), train=True), torch.asarray(y))
    model.backward(loss.backward())
    opt.step()
    assert all(r.owner.params[r.key] is v for r, v in zip(store.refs, store.param_views, strict=True))
    base = store.params["float32"]
    for ref in store.refs:  # every parameter still lives inside the torch buffer
        start = ref.value.data_ptr() - base.data_ptr()
        assert 0 <= start < base.numel() * 4


def test_deepcopy_gets_its_own_store():
    model = tiny()
    twin = copy.deepcopy(model)
    store, twin_store = flat.store_of(model), flat.store_of(twin)
    assert twin_store is not store
    assert all(np.shares_memory(r.value, twin_store.params["float32"]) for r in twin.parameters())
    assert not np.shares_memory(twin_store.params["float32"], store.params["float32"])
    opt = optim.SGD(twin.parameters(), lr=0.1)
    assert opt._store is twin_store


# -- training results unchanged -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_fit_gives_the_same_parameters_with_and_without_the_store(mode):
    from xpcnn.train import fit

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((24, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 24)
    results = []
    with kernels.using_kernels(mode):
        for detached in (True, False):
            model = tiny()
            if detached:
                flat.detach(model)
            opt = optim.Momentum(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
            assert (opt._store is None) == detached
            fit(model, opt, (x, y), epochs=2, batch_size=8, seed=0, progress=False, log=None)
            results.append(host_params(model))
    for key in results[0]:
        assert results[0][key].tobytes() == results[1][key].tobytes(), key


# -- the MPI path and the CUDA set -------------------------------------------------------------

def test_allreduce_writes_into_the_gradient_views():
    from distributed_helpers import run_ranks

    from xpcnn.distributed.buckets import allreduce_gradients

    def work(comm):
        model = tiny(seed=0)
        x, y = batch(comm.rank)
        loss = SoftmaxCrossEntropy()
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        local = {r.name: np.array(r.grad) for r in model.parameters()}
        allreduce_gradients(model.parameters(), comm, bucket_bytes=256)
        store = flat.store_of(model)
        assert store.grads_intact()
        return local, {r.name: np.array(r.grad) for r in model.parameters()}

    results = run_ranks(2, work)
    for name in results[0][0]:
        want = results[0][0][name] + results[1][0][name]
        for _, reduced in results:
            np.testing.assert_allclose(reduced[name], want, rtol=1e-6)


def test_cuda_set_adopts_the_store_buffers_on_the_standin(monkeypatch):
    from xpcnn.kernels.cuda import shim
    if shim.compiler() is None:
        pytest.skip("no host C++ compiler (g++) for the CUDA CPU shim")
    from xpcnn.kernels.cuda.budget import count_lenet5_steps

    without = count_lenet5_steps(batch=8, steps=2, optimizer="adam")
    monkeypatch.setattr(flat, "VIEW_LIBRARIES", (*flat.VIEW_LIBRARIES, "xpcnn"))  # the stand-in makes views
    with_store = count_lenet5_steps(batch=8, steps=2, optimizer="adam")
    assert with_store.kinds["cuda"].get("kernel:adam_f32") == 1  # the whole buffer in one launch
    # no first-step copy into a group: the store's buffers are the group
    assert with_store.launches["cuda"][0] < without.launches["cuda"][0]
    assert with_store.launches["cuda"][1] <= without.launches["cuda"][1]
    assert with_store.syncs["cuda"] == [0, 0]
    assert with_store.max_param_difference() < 1e-5
    for key, value in with_store.params["cuda"].items():
        np.testing.assert_allclose(value, without.params["cuda"][key], rtol=0, atol=1e-6)
