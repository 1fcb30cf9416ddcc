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


def _scripted_val(monkeypatch, losses, accuracies=None):
    """Replace the validation pass by a script of val losses (and accuracies), one per epoch."""
    script = iter(losses)
    acc = iter(accuracies) if accuracies is not None else None
    calls = []

    def fake_evaluate(model, data, loss=None, batch_size=512, on_device=False):
        calls.append(int(np.asarray(B.to_numpy(data[0])).shape[0]))
        return {"loss": next(script), "accuracy": 0.5 if acc is None else next(acc)}

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


# ------------------------------------------------------------------------------------------- mode (issue 9 item 5)


def test_early_stopping_maximises_accuracy(small, monkeypatch):
    """On main, val_accuracy was minimised: the run stopped at epoch 3 while accuracy rose, keeping 0.90."""
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0] * 6, accuracies=[0.90, 0.93, 0.95, 0.97, 0.96, 0.96])
    snaps = _Snapshots()
    stopper = train.EarlyStopping(monitor="val_accuracy", patience=2)
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=6,
                        batch_size=64, seed=0, callbacks=[snaps, stopper], **quiet())
    assert stopper.mode == "max"
    assert len(history) == 6 and stopper.best == 0.97  # stopped at 6 (two epochs without a gain after 4)
    assert stopper.stopped_epoch == 6
    assert_weights_equal(weights(model), snaps.by_epoch[4])


@pytest.mark.parametrize("mode, want_best_epoch", [("max", 3), ("min", 1)])
def test_model_checkpoint_mode(small, monkeypatch, tmp_path, mode, want_best_epoch):
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 1.0, 1.0], accuracies=[0.5, 0.7, 0.9])
    cb = train.ModelCheckpoint(tmp_path / "last.npz", best_path=tmp_path / "best.npz", monitor="val_accuracy",
                               mode=mode)
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=3, batch_size=128,
              seed=0, callbacks=[cb], **quiet())
    from xpcnn.checkpoint import load_model

    assert load_model(tmp_path / "best.npz")[1]["epoch"] == want_best_epoch


def test_model_checkpoint_auto_mode_maximises_accuracy(tmp_path):
    assert train.ModelCheckpoint(tmp_path / "c.npz", monitor="val_accuracy").mode == "max"
    assert train.ModelCheckpoint(tmp_path / "c.npz", monitor="val_loss").mode == "min"
    assert train.EarlyStopping(monitor="accuracy").mode == "max"


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "up"}, "mode must be one of auto, min, max, got 'up'"),
    ({"patience": 0}, "patience must be an integer >= 1"),
    ({"patience": 2.5}, "patience must be an integer >= 1"),
    ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
    ({"min_delta": float("nan")}, "min_delta must be a finite number >= 0"),
    ({"monitor": ""}, "monitor must be the name of a logged metric"),
])
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.EarlyStopping(**kwargs)


def test_early_stopping_counts_the_epochs_before_a_resume(small, monkeypatch, tmp_path):
    """Best 0.5 at epoch 2 of the first run; after a resume, 0.6 and 0.7 exhaust patience 2 at epoch 4."""
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.5, 0.6, 0.7, 0.1])
    last = tmp_path / "last.npz"
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=3, batch_size=128,
              seed=0, callbacks=[train.ModelCheckpoint(last)], **quiet())
    stopper = train.EarlyStopping(patience=2)
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=5,
                        batch_size=128, seed=0, resume=last, callbacks=[stopper], **quiet())
    assert stopper.best == 0.5 and stopper.stopped_epoch == 4 and len(history) == 4


# ------------------------------------------------------------------------------------------- divergence (item 4)


def test_nan_validation_loss_stops_the_run_and_keeps_the_checkpoint(small, monkeypatch, tmp_path):
    """On main a NaN val loss was accepted and the checkpoint overwritten with that epoch."""
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 0.5, float("nan")])
    last, best = tmp_path / "last.npz", tmp_path / "best.npz"
    snaps = _Snapshots()
    model = tiny()
    with pytest.raises(train.TrainingDivergedError, match="validation loss became nan after epoch 3"):
        train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=4, batch_size=128,
                  seed=0, callbacks=[snaps, train.ModelCheckpoint(last, best_path=best)], **quiet())
    from xpcnn.checkpoint import load_model

    kept, meta = load_model(last)
    assert meta["epoch"] == 2 and sorted(snaps.by_epoch) == [1, 2]
    assert_weights_equal(weights(kept), snaps.by_epoch[2])
    assert load_model(best)[1]["epoch"] == 2


def test_model_checkpoint_never_keeps_a_nan_as_best(small, monkeypatch, tmp_path):
    """A NaN in a monitored metric other than the guarded val loss is never 'better'."""
    x, y, xv, yv = small
    _scripted_val(monkeypatch, [1.0, 1.0], accuracies=[0.5, float("nan")])
    cb = train.ModelCheckpoint(tmp_path / "last.npz", best_path=tmp_path / "best.npz", monitor="val_accuracy")
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=2, batch_size=128,
              seed=0, callbacks=[cb], **quiet())
    from xpcnn.checkpoint import load_model

    assert load_model(tmp_path / "best.npz")[1]["epoch"] == 1 and cb.best == 0.5


# ------------------------------------------------------------------------------------------- CSV logger


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_matches_the_history(small, tmp_path):
    x, y, xv, yv = small
    path = tmp_path / "metrics.csv"
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), val=(xv, yv), epochs=2,
                        batch_size=128, seed=0, callbacks=[train.CSVLogger(path)], **quiet())
    rows = _read_csv(path)
    assert list(rows[0]) == ["epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "time_s"]
    assert len(rows) == 2
    for row, record in zip(rows, history.epochs):
        assert int(row["epoch"]) == record["epoch"]
        for key in ("lr", "loss", "accuracy", "val_loss", "val_accuracy", "time_s"):
            assert float(row[key]) == record[key], key  # repr round-trips exactly


def test_csv_logger_after_a_resume_holds_every_epoch(small, tmp_path):
    x, y, _, _ = small
    last, path = tmp_path / "last.npz", tmp_path / "m.csv"
    model = tiny()
    train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), epochs=1, batch_size=128, seed=0,
              callbacks=[train.ModelCheckpoint(last)], **quiet())
    model = tiny()
    history = train.fit(model, optim.SGD(model.parameters(), lr=0.05), (x, y), epochs=3, batch_size=128, seed=0,
                        resume=last, callbacks=[train.CSVLogger(path)], **quiet())
    rows = _read_csv(path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == history["loss"]
    assert "val_loss" not in rows[0]
