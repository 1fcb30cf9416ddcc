"""Bad arguments to :func:`xpcnn.train.fit` / ``evaluate`` fail before training, with clear messages; the
guards that stop a diverging run; hyper-parameter overrides on resume; no module-global RNG.

Oracles: the messages name what was expected and what was received; the model's weights are
unchanged after a rejected call (nothing trained); the optimizer's state after a resume.
"""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import assert_weights_equal, quiet, tiny, weights

from xpcnn import backend as B
from xpcnn import optim, train

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

N = 64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, N)


def _fit(x, y, **kwargs):
    model = tiny(dropout=False)
    train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y), **{"batch_size": 32, **quiet(**kwargs)})


@pytest.mark.parametrize("labels, error, match", [
    (lambda y: y + 0.7, TypeError, r"train y must be integer class labels, got dtype float64 \(0\.7 at index 0\)"),
    (lambda y: y.astype(np.float64), TypeError, "train y must be integer class labels, got dtype float64"),
    (lambda y: np.where(np.arange(N) == 5, np.nan, y), TypeError, r"float64 \(nan at index 5\)"),
    (lambda y: y > 4, TypeError, "got dtype bool"),
    (lambda y: y.astype(str), TypeError, "got dtype <U"),
    (lambda y: np.where(np.arange(N) == 7, 10, y), ValueError,
     r"labels in 0\.\.9 \(the model has 10 outputs\), got 10 at index 7"),
    (lambda y: np.where(np.arange(N) == 3, -1, y), ValueError, "got -1 at index 3"),
    (lambda y: y[:, None], ValueError, r"shape \(N,\), got shape \(64, 1\); pass y.ravel\(\)"),
    (lambda y: y[:-1], ValueError, "different numbers of samples: 64 and 63"),
])
def test_bad_labels_are_rejected_before_training(data, labels, error, match):
    """Item 6: on main, float labels were truncated silently (2.7 -> 2)."""
    x, y = data
    model = tiny(dropout=False)
    y_bad = labels(y)
    with pytest.raises(error, match=match):
        train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y_bad), epochs=1, batch_size=32, **quiet())
    assert_weights_equal(weights(model), weights(tiny(dropout=False)))  # nothing trained


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1, got 0"),
    ({"epochs": -1}, ValueError, "epochs must be an integer >= 1, got -1"),
    ({"epochs": 2.5}, ValueError, "epochs must be an integer >= 1, got 2.5"),
    ({"epochs": True}, ValueError, "epochs must be an integer >= 1, got True"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    ({"val_split": 1.0}, ValueError, r"val_split must be a fraction in \(0, 1\)"),
    ({"val_split": 1.5}, ValueError, r"val_split must be a fraction in \(0, 1\)"),
    ({"val_split": float("nan")}, ValueError, r"val_split must be a fraction in \(0, 1\)"),
    ({"val_split": 0.001}, ValueError, "leaves an empty train or validation set"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0 or None, got -1"),
    ({"seed": 1.5}, ValueError, "seed must be an integer >= 0 or None, got 1.5"),
    ({"callbacks": [object()]}, TypeError, "on_epoch_end"),
])
def test_bad_fit_arguments(data, kwargs, error, match):
    x, y = data
    with pytest.raises(error, match=match):
        _fit(x, y, **{"epochs": 1, **kwargs})


def test_input_shape_the_model_cannot_take(data):
    x, y = data
    with pytest.raises(ValueError, match=r"the model cannot take samples of shape \(3, 32, 32\)"):
        _fit(np.zeros((N, 3, 32, 32), np.float32), y, epochs=1)


def test_evaluate_checks_labels_too(data):
    x, y = data
    with pytest.raises(TypeError, match="evaluation y must be integer class labels"):
        train.evaluate(tiny(), (x, y + 0.5))


def test_evaluate_with_predictions_is_one_pass(data):
    x, y = data
    model = tiny(seed=3)
    metrics, predictions = train.evaluate_with_predictions(model, (x, y), batch_size=20)
    logits = B.to_numpy(model.predict(x))
    np.testing.assert_array_equal(predictions, logits.argmax(axis=1))
    assert metrics["accuracy"] == float(np.mean(logits.argmax(axis=1) == y))
    assert metrics == train.evaluate(model, (x, y), batch_size=20)


# ------------------------------------------------------------------------------------------- divergence guard


def test_non_finite_weight_with_a_finite_loss_stops_the_run(data, tmp_path):
    """A bias of -inf behind a ReLU keeps the loss finite; the weight check still stops the run."""
    x, y = data
    model = tiny(dropout=False)
    opt = optim.SGD(model.parameters(), lr=0.01)
    step = opt.step

    def poisoned_step():
        step()
        if opt.step_count == 2:  # the last step of epoch 1
            b = B.to_numpy(model[4].params["b"]).copy()
            b[0] = -np.inf
            model[4].params["b"] = B.asarray(b)

    opt.step = poisoned_step
    path = tmp_path / "c.npz"
    with pytest.raises(train.TrainingDivergedError, match=r"parameter 4\.b holds NaN or inf after epoch 1"):
        train.fit(model, opt, (x, y), epochs=2, batch_size=32, callbacks=[train.ModelCheckpoint(path)], **quiet())
    assert not path.exists()  # the callbacks of the diverged epoch never ran


# ------------------------------------------------------------------------------------------- resume overrides


def _checkpointed(data, tmp_path, scheduler: bool):
    x, y = data
    model = tiny(dropout=False)
    opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.0)
    sched = optim.CosineLR(opt, t_max=4) if scheduler else None
    path = tmp_path / "c.npz"
    train.fit(model, opt, (x, y), epochs=1, batch_size=32, scheduler=sched, seed=0,
              callbacks=[train.ModelCheckpoint(path)], **quiet())
    return path


@pytest.mark.parametrize("scheduler", [False, True])
def test_resume_applies_lr_and_weight_decay_overrides(data, tmp_path, scheduler):
    """Item 3: on main the checkpoint's optimizer state silently won over --lr / --weight-decay."""
    x, y = data
    path = _checkpointed(data, tmp_path, scheduler)
    model = tiny(dropout=False)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.CosineLR(opt, t_max=4) if scheduler else None
    history = train.fit(model, opt, (x, y), epochs=2, batch_size=32, scheduler=sched, seed=0, resume=path,
                        resume_hyper={"lr": 1e-4, "weight_decay": 0.05}, **quiet())
    assert opt.weight_decay == 0.05
    if scheduler:
        assert sched.base_lr == 1e-4
        # the second epoch ran at the cosine value of epoch 1 for a base of 1e-4
        assert history["lr"][1] == pytest.approx(1e-4 * 0.5 * (1 + np.cos(np.pi / 4)), rel=1e-12)
    else:
        assert history["lr"][1] == 1e-4


def test_resume_without_overrides_keeps_the_checkpoint_values(data, tmp_path):
    x, y = data
    path = _checkpointed(data, tmp_path, scheduler=False)
    model = tiny(dropout=False)
    opt = optim.Adam(model.parameters(), lr=0.5, weight_decay=0.3)
    history = train.fit(model, opt, (x, y), epochs=2, batch_size=32, seed=0, resume=path, **quiet())
    assert history["lr"][1] == 1e-2 and opt.weight_decay == 0.0


def test_resume_override_is_checked(data, tmp_path):
    x, y = data
    path = _checkpointed(data, tmp_path, scheduler=False)
    model = tiny(dropout=False)
    with pytest.raises(ValueError, match="lr"):
        train.fit(model, optim.Adam(model.parameters()), (x, y), epochs=2, batch_size=32, resume=path,
                  resume_hyper={"lr": float("nan")}, **quiet())


# ------------------------------------------------------------------------------------------- RNG


def test_fit_leaves_the_global_generator_alone(data):
    """Issue 8: fit(seed=...) used to reseed the module-global host generator."""
    x, y = data
    B.seed(123)
    want = B.host_rng().bit_generator.state
    model = tiny(dropout=True)
    train.fit(model, optim.SGD(model.parameters(), lr=0.01), (x, y), epochs=1, batch_size=32, seed=4, **quiet())
    assert B.host_rng().bit_generator.state == want
