"""Tests for :mod:`xpcnn.train`: ``fit`` / ``evaluate``, history, resume, divergence (callbacks: test_callbacks.py).

Real data: the bundled MNIST, loaded once per module, in small subsets.  The
oracles are independent computations written here (a NumPy cross-entropy and
accuracy), the run itself (same seed => same run; resumed run == uninterrupted
run) and the NumPy lane (other lanes must reproduce its loss history).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from train_helpers import (
    RecordingLoss,
    assert_weights_equal,
    mnist_subsets,
    quiet,
    records,
    small_subset,
    tiny,
    weights,
)

from xpcnn import backend as B
from xpcnn import models, optim, train
from xpcnn.datasets import BatchIterator
from xpcnn.datasets.augment import RandomShift
from xpcnn.losses import SoftmaxCrossEntropy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow warnings of the divergence tests


@pytest.fixture(scope="module")
def mnist():
    return mnist_subsets()


@pytest.fixture(scope="module")
def small(mnist):
    return small_subset(mnist)


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_lenet5_learns_mnist(mnist):
    x_train, y_train, x_test, y_test = mnist
    x_train, y_train = x_train[:2000], y_train[:2000]
    model = models.lenet5(rng=0)
    before = train.evaluate(model, (x_test, y_test))
    loss = RecordingLoss()
    history = train.fit(model, optim.Adam(model.parameters(), lr=1e-3), (x_train, y_train),
                        epochs=1, batch_size=64, loss=loss, seed=0, **quiet())
    after = train.evaluate(model, (x_test, y_test))

    assert len(history) == 1 and history["epoch"] == [1]
    assert len(loss.values) == math.ceil(2000 / 64) and sum(loss.sizes) == 2000
    # the epoch's loss is the sample-weighted mean of its batch losses
    assert history["loss"][0] == pytest.approx(np.dot(loss.values, loss.sizes) / 2000, rel=1e-9)
    first, last = np.mean(loss.values[:5]), np.mean(loss.values[-5:])
    assert last < 0.5 * first, (first, last)
    assert 0.0 <= history["accuracy"][0] <= 1.0
    # held-out accuracy clearly beats chance (0.1) and the untrained network
    assert after["accuracy"] > 0.6, after
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > before["accuracy"] + 0.3


def test_evaluate_matches_an_independent_computation(small):
    x, y, _, _ = small
    model = tiny(seed=5)
    got = train.evaluate(model, (x, y), batch_size=100)  # 3 uneven batches
    logits = B.to_numpy(model.predict(x)).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want_loss = -log_probs[np.arange(len(y)), y].mean()
    want_acc = float(np.mean(logits.argmax(axis=1) == y))
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert got["accuracy"] == want_acc
    assert 0 < want_acc < 1  # the comparison means something


def test_history_and_log_lines(small):
    x, y, xv, yv = small
    lines: list[str] = []
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=2,
                        batch_size=64, seed=0, progress=False, log=lines.append)
    assert len(history) == 2
    assert history["epoch"] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time_s"):
        assert len(history[key]) == 2, key
    assert all(0.0 <= a <= 1.0 for a in history["accuracy"] + history["val_accuracy"])
    assert history["lr"] == [0.05, 0.05]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "val_loss" in lines[1]
    # val metrics are exactly evaluate() on the final weights
    v = train.evaluate(model, (xv, yv))
    assert history["val_loss"][-1] == pytest.approx(v["loss"], rel=1e-12)
    assert history["val_accuracy"][-1] == v["accuracy"]


# ------------------------------------------------------------------------------------------- reproducibility


def _run(data, seed: int, epochs: int = 2, model_seed: int = 0, **kwargs):
    x, y, xv, yv = data
    model = tiny(model_seed)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    history = train.fit(model, opt, (x, y), val=(xv, yv), epochs=epochs, batch_size=64, seed=seed,
                        **quiet(**kwargs))
    return model, history


def test_same_seed_same_run(small):
    m1, h1 = _run(small, seed=3)
    B.seed(12345)  # whatever happened to the global generator in between must not matter
    m2, h2 = _run(small, seed=3)
    assert records(h1) == records(h2)
    assert_weights_equal(weights(m1), weights(m2))


def test_different_seed_different_run(small):
    m1, h1 = _run(small, seed=3)
    m2, h2 = _run(small, seed=4)  # same initial weights, other shuffling and dropout masks
    assert h1["loss"] != h2["loss"]
    assert not np.array_equal(weights(m1)["0.W"], weights(m2)["0.W"])


def test_on_device_gives_the_same_run(small):
    m1, h1 = _run(small, seed=3, on_device=False)
    m2, h2 = _run(small, seed=3, on_device=True)
    assert records(h1) == records(h2)
    assert_weights_equal(weights(m1), weights(m2))


# ------------------------------------------------------------------------------------------- resume


def _resumable_setup(seed: int = 0):
    """Freshly built model (two dropouts), Adam and a cosine schedule."""
    model = tiny(seed)
    opt = optim.Adam(model.parameters(), lr=5e-3)
    sched = optim.CosineLR(opt, t_max=3, eta_min=1e-4)
    return model, opt, sched


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_equals_uninterrupted(small, tmp_path, stop_after):
    x, y, xv, yv = small
    common = dict(val=(xv, yv), batch_size=64, seed=11, transform=RandomShift(1), **quiet())

    model, opt, sched = _resumable_setup()
    straight = train.fit(model, opt, (x, y), epochs=3, scheduler=sched, **common)
    want = weights(model)

    path = tmp_path / "ckpt.npz"
    model, opt, sched = _resumable_setup()
    first = train.fit(model, opt, (x, y), epochs=stop_after, scheduler=sched,
                      callbacks=[train.ModelCheckpoint(path)], **common)
    assert len(first) == stop_after
    B.seed(999)  # a new process would start from some other global state

    model, opt, sched = _resumable_setup()  # fresh objects, as after a restart
    resumed = train.fit(model, opt, (x, y), epochs=3, scheduler=sched, resume=path, **common)

    assert_weights_equal(weights(model), want)
    assert len(resumed) == 3
    assert records(resumed) == records(straight)
    assert opt.step_count == 3 * math.ceil(len(y) / 64)
    assert sched.last_epoch == 3
    # the straight run really used dropout and the schedule (else this test would prove little)
    assert len(set(straight["lr"])) == 3


def test_resume_needs_the_saved_rng_state(small, tmp_path):
    """Control for the test above: resumed with its RNG state, epoch 2 matches; with fresh generators, not."""
    x, y, xv, yv = small
    common = dict(val=(xv, yv), batch_size=64, seed=11, **quiet())
    model, opt, sched = _resumable_setup()
    train.fit(model, opt, (x, y), epochs=2, scheduler=sched, **common)
    want = weights(model)

    path = tmp_path / "ckpt.npz"
    model, opt, sched = _resumable_setup()
    train.fit(model, opt, (x, y), epochs=1, scheduler=sched, callbacks=[train.ModelCheckpoint(path)], **common)

    def second_epoch(forget_rng: bool):
        model, opt, sched = _resumable_setup()
        trainer = train.Trainer(model, opt, SoftmaxCrossEntropy(), BatchIterator(x, y, 64, rng=11), sched)
        trainer.resume(path)
        if forget_rng:  # as if the checkpoint had no RNG state: generators freshly seeded
            B.seed(11)
            trainer.train.rng = np.random.default_rng(11)
            model[-2].rng = np.random.default_rng(2)
        trainer.train_epoch(progress=False)
        return weights(model)

    assert_weights_equal(second_epoch(forget_rng=False), want)
    assert not np.array_equal(second_epoch(forget_rng=True)["0.W"], want["0.W"])


def test_resume_past_the_last_epoch_trains_nothing(small, tmp_path):
    x, y, _, _ = small
    path = tmp_path / "ckpt.npz"
    model, opt, sched = _resumable_setup()
    train.fit(model, opt, (x, y), epochs=2, scheduler=sched, seed=1, callbacks=[train.ModelCheckpoint(path)],
              batch_size=64, **quiet())
    want = weights(model)
    model, opt, sched = _resumable_setup(seed=7)
    history = train.fit(model, opt, (x, y), epochs=2, scheduler=sched, seed=1, resume=path, batch_size=64,
                        **quiet())
    assert len(history) == 2
    assert_weights_equal(weights(model), want)


def test_resume_into_another_architecture_fails(small, tmp_path):
    x, y, _, _ = small
    path = tmp_path / "ckpt.npz"
    model = tiny()
    opt = optim.SGD(model.parameters())
    train.fit(model, opt, (x, y), epochs=1, callbacks=[train.ModelCheckpoint(path)], batch_size=128, **quiet())
    other = tiny(dropout=False)
    from xpcnn.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="architecture"):
        train.fit(other, optim.SGD(other.parameters()), (x, y), epochs=2, resume=path, **quiet())


# ------------------------------------------------------------------------------------------- divergence


def test_absurd_learning_rate_raises(small):
    x, y, _, _ = small
    model = tiny(dropout=False)
    with pytest.raises(train.TrainingDivergedError, match=r"at epoch 1, step \d+ of 4 \(lr 1e\+30\)") as info:
        train.fit(model, optim.SGD(model.parameters(), lr=1e30), (x, y), epochs=3, batch_size=64, seed=0,
                  **quiet())
    assert isinstance(info.value, FloatingPointError)
    assert "step 1 " not in str(info.value)  # the first step's loss is finite; the blow-up comes after it


def test_nan_in_the_inputs_names_the_step(small):
    x, y, _, _ = small
    x = x.copy()
    bad = 77
    x[bad, 0, 14, 14] = np.nan
    # the step that holds image `bad`: ask a loader built the way fit builds it (same seed, same batches)
    probe = BatchIterator(x, y, 32, rng=B.seed_stream(5, "shuffle"))
    step = next(i for i, (xb, _) in enumerate(probe, start=1) if np.isnan(B.to_numpy(xb)).any())
    model = tiny(dropout=False)
    with pytest.raises(train.TrainingDivergedError, match=rf"loss became nan at epoch 1, step {step} of 8"):
        train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y), epochs=1, batch_size=32, seed=5,
                  **quiet())


class _PoisonAfterEpoch:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            last = trainer.model[-1]
            w = B.to_numpy(last.params["W"]).copy()
            w[0, 0] = np.inf
            last.params["W"] = B.asarray(w)


def test_divergence_in_a_later_epoch_names_that_epoch(small):
    x, y, _, _ = small
    model = tiny(dropout=False)
    with pytest.raises(train.TrainingDivergedError, match=r"epoch 2, step 1 of 4"):
        train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y), epochs=3, batch_size=64, seed=0,
                  callbacks=[_PoisonAfterEpoch(1)], **quiet())


# ------------------------------------------------------------------------------------------- val_split


def test_val_split_holds_out_the_right_samples(monkeypatch):
    n = 200
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(n)  # an id in every image
    y = rng.integers(0, 10, n)
    seen_val: list[np.ndarray] = []

    def spy(model, data, loss=None, batch_size=512, on_device=False):
        seen_val.append(np.asarray(data[0])[:, 0, 0, 0].copy())
        return {"loss": 1.0, "accuracy": 0.0}

    monkeypatch.setattr(train, "evaluate", spy)
    sizes = []

    class Spy:
        def on_epoch_end(self, trainer, logs):
            sizes.append(trainer.train.num_samples)
            seen_val.append(trainer.train.x[:, 0, 0, 0].copy())

    model = tiny(dropout=False)
    train.fit(model, optim.SGD(model.parameters()), (x, y), val_split=0.25, epochs=1, batch_size=100, seed=0,
              callbacks=[Spy()], **quiet())
    val_ids, train_ids = seen_val
    assert sizes == [150] and len(val_ids) == 50 and len(train_ids) == 150
    assert sorted(np.concatenate([val_ids, train_ids]).astype(int)) == list(range(n))
    assert not np.array_equal(val_ids.astype(int), np.arange(150, 200))  # a random hold-out, not the tail


def test_val_split_and_val_are_exclusive(small):
    x, y, xv, yv = small
    model = tiny()
    with pytest.raises(ValueError, match="either val or val_split"):
        train.fit(model, optim.SGD(model.parameters()), (x, y), val=(xv, yv), val_split=0.1, **quiet())


def test_data_must_be_a_pair(small):
    model = tiny()
    with pytest.raises(TypeError, match="pair"):
        train.fit(model, optim.SGD(model.parameters()), small[0], **quiet())


# ------------------------------------------------------------------------------------------- other lanes


def test_fit_on_every_lane_matches_numpy(small, backend):
    x, y, xv, yv = small
    x, y = x[:128], y[:128]

    def run():
        model = tiny(seed=4)
        opt = optim.Momentum(model.parameters(), lr=0.02)
        sched = optim.StepLR(opt, step_size=1, gamma=0.5)
        history = train.fit(model, opt, (x, y), val=(xv, yv), epochs=2, batch_size=32, scheduler=sched, seed=2,
                            **quiet())
        return model, history

    with B.using("numpy"):
        ref_model, ref = run()
    model, history = run()
    for value in model.state_dict().values():
        assert B.backend_name(value) == backend.name
    assert history["epoch"] == ref["epoch"] and history["lr"] == ref["lr"]
    np.testing.assert_allclose(history["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(history["val_loss"], ref["val_loss"], rtol=1e-5)
    # accuracies are counts: identical unless a logit tie flips, which float32 noise makes very unlikely
    np.testing.assert_allclose(history["accuracy"], ref["accuracy"], atol=1.5 / len(y))
    got, want = weights(model), weights(ref_model)
    for k in want:
        assert got[k].dtype == want[k].dtype == np.float32
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_drop_last_skips_the_batch_of_one_that_batch_norm_cannot_train_on():
    from xpcnn.layers import BatchNorm1D, Dense
    from xpcnn.model import Sequential
    from xpcnn.optim import SGD
    from xpcnn.train import fit

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 3)).astype(np.float32), rng.integers(0, 2, 9)
    model = Sequential(Dense(3, 4, rng=0), BatchNorm1D(4), Dense(4, 2, rng=1))
    with pytest.raises(ValueError, match="more than one value per feature"):
        fit(model, SGD(model.parameters(), lr=0.1), (x, y), epochs=1, batch_size=4, seed=0, progress=False, log=None)
    model = Sequential(Dense(3, 4, rng=0), BatchNorm1D(4), Dense(4, 2, rng=1))
    history = fit(model, SGD(model.parameters(), lr=0.1), (x, y), epochs=1, batch_size=4, seed=0, progress=False,
                  log=None, drop_last=True)
    assert len(history) == 1
