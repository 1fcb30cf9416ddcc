"""Tests for :mod:`xpcnn.callbacks`: EarlyStopping and ModelCheckpoint inside :func:`xpcnn.train.fit`.

Validation losses are scripted (``train.evaluate`` replaced by a script) so each scenario is exact;
the weights kept are compared with snapshots taken at the end of every epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import assert_weights_equal, mnist_subsets, quiet, small_subset, tiny, weights

from xpcnn import backend as B
from xpcnn import optim, train

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def mnist():
    return mnist_subsets()


@pytest.fixture(scope="module")
def small(mnist):
    return small_subset(mnist)


# ------------------------------------------------------------------------------------------- callbacks


class _Snapshots:
    """Records the weights at the end of every epoch (put it before the callback under test)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, np.ndarray]] = {}

    def on_epoch_end(self, trainer, logs):
        self.by_epoch[int(logs["epoch"])] = weights(trainer.model)


def _scripted_val(monkeypatch, losses):
    """Replace the validation pass by a script of val losses (one per epoch), so the scenario is exact."""
    script = iter(losses)
    calls = []

    def fake_evaluate(model, data, loss=None, batch_size=512, on_device=False):
        calls.append(int(np.asarray(B.to_numpy(data[0])).shape[0]))
        return {"loss": next(script), "accuracy": 0.5}

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    return calls


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping(small, monkeypatch, restore_best):
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.5, 0.6, 0.7, 0.1, 0.1])
    snaps = _Snapshots()
    stopper = train.EarlyStopping(patience=2, restore_best=restore_best)
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=6,
                        batch_size=64, seed=0, callbacks=[snaps, stopper], **quiet())
    assert len(history) == 4 and history["val_loss"] == [1.0, 0.5, 0.6, 0.7]
    assert stopper.stopped_epoch == 4
    assert stopper.best == 0.5
    assert not np.array_equal(snaps.by_epoch[2]["0.W"], snaps.by_epoch[4]["0.W"])
    assert_weights_equal(weights(model), snaps.by_epoch[2 if restore_best else 4])


def test_early_stopping_min_delta(small, monkeypatch):
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.95, 0.92, 0.5, 0.4])
    stopper = train.EarlyStopping(patience=2, min_delta=0.1)
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=5,
                        batch_size=128, seed=0, callbacks=[stopper], **quiet())
    assert len(history) == 3 and stopper.stopped_epoch == 3  # 0.95 and 0.92 are not 0.1 better than 1.0


def test_early_stopping_does_not_stop_while_improving(small, monkeypatch):
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.9, 0.8])
    stopper = train.EarlyStopping(patience=1)
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters()), (x, y), val=(xv, yv), epochs=3, batch_size=128,
                        callbacks=[stopper], **quiet())
    assert len(history) == 3 and stopper.stopped_epoch is None


def test_early_stopping_needs_validation(small):
    x, y, _, _ = small
    model = tiny()
    with pytest.raises(KeyError, match="val_loss.*val="):
        train.fit(model, optim.SGD(model.parameters()), (x, y), epochs=2, batch_size=128,
                  callbacks=[train.EarlyStopping()], **quiet())


def test_model_checkpoint_keeps_last_and_best(small, monkeypatch, tmp_path):
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.5, 0.7])
    snaps = _Snapshots()
    cb = train.ModelCheckpoint(tmp_path / "last.npz", best_path=tmp_path / "best.npz")
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=3, batch_size=64,
              seed=0, callbacks=[snaps, cb], **quiet())
    from xpcnn.checkpoint import load_model

    last, last_meta = load_model(tmp_path / "last.npz")
    best, best_meta = load_model(tmp_path / "best.npz")
    assert last_meta["epoch"] == 3 and best_meta["epoch"] == 2
    assert_weights_equal(weights(last), snaps.by_epoch[3])
    assert_weights_equal(weights(best), snaps.by_epoch[2])
    assert [e["val_loss"] for e in best_meta["history"]] == [1.0, 0.5]


def test_model_checkpoint_best_survives_a_resume(small, monkeypatch, tmp_path):
    """After a restart, a worse epoch must not overwrite the best checkpoint written before it."""
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.5, 0.7, 0.3])
    last, best = tmp_path / "last.npz", tmp_path / "best.npz"
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=2, batch_size=64,
              seed=0, callbacks=[train.ModelCheckpoint(last, best_path=best)], **quiet())
    from xpcnn.checkpoint import load_model

    model = tiny()  # a restart: fresh objects, a fresh callback
    snaps = _Snapshots()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=3, batch_size=64,
              seed=0, resume=last, callbacks=[snaps, train.ModelCheckpoint(last, best_path=best)], **quiet())
    assert load_model(best)[1]["epoch"] == 2  # 0.7 is worse than 0.5
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=4, batch_size=64,
              seed=0, resume=last, callbacks=[snaps, train.ModelCheckpoint(last, best_path=best)], **quiet())
    best_model, meta = load_model(best)
    assert meta["epoch"] == 4  # 0.3 is the new best
    assert_weights_equal(weights(best_model), snaps.by_epoch[4])
