"""Flat parameter/gradient stores (:mod:`xpcnn.flat`): layout, views kept intact, results unchanged.

Oracle: the same model without a store (same seed, same batches) -- a store changes where arrays live,
never a number.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import flat, kernels, models, optim
from xpcnn.losses import SoftmaxCrossEntropy


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def views_intact(model, store):
    return all(ref.owner.params[ref.key] is view for ref, view in zip(store.refs, store.param_views))


def test_layout_is_aligned_ordered_and_views_share_memory():
    model = models.lenet5(rng=0)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    store = flat.attach(model)
    assert list(store.params) == ["float32"]
    assert [e.name for e in store.entries] == [r.name for r in model.parameters()]
    end = 0
    for e, ref in zip(store.entries, model.parameters()):
        assert e.offset % flat.ALIGN == 0 and e.offset >= end
        assert e.shape == tuple(ref.value.shape) and e.size == ref.value.size
        assert np.shares_memory(ref.value, store.params["float32"])
        np.testing.assert_array_equal(store.params["float32"][e.offset:e.offset + e.size], before[e.name].ravel())
        end = e.offset + e.size
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    gaps = np.ones(store.params["float32"].size, bool)
    for e in store.entries:
        gaps[e.offset:e.offset + e.size] = False
    assert not np.any(store.params["float32"][gaps])  # alignment gaps are zero
    assert [v.shape for v in store.views(store.like())] == [e.shape for e in store.entries]


def test_mixed_dtypes_get_one_buffer_each():
    from xpcnn.layers import Dense
    from xpcnn.model import Sequential
    model = Sequential(Dense(3, 4, dtype="float32", rng=0), Dense(4, 2, dtype="float64", rng=1))
    with pytest.raises(TypeError):  # (mixed dtypes cannot run forward; the store still lays them out)
        model.forward(np.zeros((1, 3), np.float32))
    store = flat.attach(model)
    assert sorted(store.params) == ["float32", "float64"]
    # W (4, 2): 8 elements, padded to 16; b (2,) from offset 16, padded to 32
    assert store.params["float64"].dtype == np.float64 and store.params["float64"].size == 32


def train(model, steps, opt_cls=optim.Adam):
    opt = opt_cls(model.parameters(), lr=1e-3)
    loss_fn = SoftmaxCrossEntropy()
    x, y = data()
    for _ in range(steps):
        loss_fn.forward(model.forward(x, train=True), y)
        model.backward(loss_fn.backward())
        opt.step()
    return {k: np.array(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_training_with_a_store_is_bitwise_training_without(mode):
    with kernels.using_kernels(mode):
        plain = train(models.lenet5(rng=0), 4)
        model = models.lenet5(rng=0)
        store = flat.attach(model)
        flat_result = train(model, 4)
        for key in plain:
            assert plain[key].tobytes() == flat_result[key].tobytes(), key
        model.forward(data()[0])  # the reference update replaced arrays: the next forward puts them back
        assert views_intact(model, store)
        for ref, gview in zip(store.refs, store.grad_views):
            assert ref.owner.grads[ref.key] is gview
            assert np.shares_memory(gview, store.grads["float32"])


def test_load_state_dict_writes_into_the_store():
    model = models.lenet5(rng=0)
    store = flat.attach(model)
    other = models.lenet5(rng=5).state_dict()
    model.load_state_dict(other)
    assert views_intact(model, store)
    for e in store.entries:
        np.testing.assert_array_equal(store.params["float32"][e.offset:e.offset + e.size], other[e.name].ravel())


def test_to_another_backend_rebuilds_or_falls_back_to_per_array_storage():
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    model = models.lenet5(rng=0)
    flat.attach(model)
    model.to("array_api_strict")
    assert flat.store_of(model) is None  # no writable views there: per-array storage
    assert B.backend_name(model[0].params["W"]) == "array_api_strict"
    model.to("numpy")
    store = flat.store_of(model)
    assert store is not None and views_intact(model, store)


def test_detach_gives_independent_arrays():
    model = models.lenet5(rng=0)
    store = flat.attach(model)
    flat.detach(model)
    assert not any(np.shares_memory(r.value, store.params["float32"]) for r in model.parameters())
    model.forward(data()[0])
    assert flat.store_of(model) is None
