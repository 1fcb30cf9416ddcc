"""Learning-rate schedules against ``torch.optim.lr_scheduler`` and their closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xpcnn import optim
from xpcnn.parameter import ParamRef

try:
    from .optim_cases import FakeLayer, assert_close, host_problem, host_values, make_refs, set_grads
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from optim_cases import FakeLayer, assert_close, host_problem, host_values, make_refs, set_grads


# ----------------------------------------------------------------------------- schedules


SCHEDULES = {
    "StepLR": (lambda o: optim.StepLR(o, step_size=3, gamma=0.5),
               lambda o, s: s.StepLR(o, step_size=3, gamma=0.5)),
    "ExponentialLR": (lambda o: optim.ExponentialLR(o, gamma=0.9),
                      lambda o, s: s.ExponentialLR(o, gamma=0.9)),
    "CosineLR": (lambda o: optim.CosineLR(o, t_max=7, eta_min=0.001),
                 lambda o, s: s.CosineAnnealingLR(o, T_max=7, eta_min=0.001)),
    "CosineLR-zero-min": (lambda o: optim.CosineLR(o, t_max=20),
                          lambda o, s: s.CosineAnnealingLR(o, T_max=20)),
}


def _sgd(lr=0.1):
    return optim.SGD([ParamRef("0.W", FakeLayer({"W": np.zeros(3)}), "W")], lr=lr)


@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_schedule_matches_torch(sched):
    torch = pytest.importorskip("torch")
    opt = _sgd(0.1)
    ours = SCHEDULES[sched][0](opt)
    t_param = torch.zeros(3, requires_grad=True)
    t_opt = torch.optim.SGD([t_param], lr=0.1)
    theirs = SCHEDULES[sched][1](t_opt, torch.optim.lr_scheduler)
    assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)
    for epoch in range(1, 21):
        t_opt.step()
        theirs.step()
        lr = ours.step()
        assert ours.last_epoch == epoch
        assert lr == opt.lr == ours.get_lr()
        assert type(opt.lr) is float
        assert opt.lr == pytest.approx(theirs.get_last_lr()[0], rel=1e-12, abs=1e-15), epoch


def test_schedule_closed_forms():
    opt = _sgd(0.2)
    step = optim.StepLR(opt, step_size=2, gamma=0.1)
    lrs = [opt.lr] + [step.step() for _ in range(5)]
    np.testing.assert_allclose(lrs, [0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rtol=1e-14)
    opt = _sgd(1.0)
    cos = optim.CosineLR(opt, t_max=4, eta_min=0.0)
    lrs = [opt.lr] + [cos.step() for _ in range(4)]
    np.testing.assert_allclose(lrs, [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0],
                               atol=1e-15)


def test_schedule_drives_training_like_torch(rng):
    """Momentum + StepLR over a few epochs equals torch SGD(momentum) + StepLR."""
    torch = pytest.importorskip("torch")
    init, grads = host_problem(rng, n_steps=8)
    refs = make_refs(init, "float64")
    opt = optim.Momentum(refs, lr=0.1, momentum=0.8, weight_decay=0.05)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    tensors = {n: torch.tensor(v) for n, v in init.items()}
    t_opt = torch.optim.SGD(list(tensors.values()), lr=0.1, momentum=0.8, weight_decay=0.05)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, step_size=1, gamma=0.5)
    for epoch in range(4):
        for step_grads in grads[2 * epoch:2 * epoch + 2]:
            set_grads(refs, step_grads, "float64")
            opt.step()
            for n, t in tensors.items():
                t.grad = torch.tensor(step_grads[n])
            t_opt.step()
        sched.step()
        t_sched.step()
    assert_close(host_values(refs), {n: t.numpy() for n, t in tensors.items()}, "float64")


@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_schedule_state_round_trip(sched):
    opt = _sgd(0.1)
    ours = SCHEDULES[sched][0](opt)
    for _ in range(5):
        ours.step()
    sd = json.loads(json.dumps(ours.state_dict()))
    assert sd["last_epoch"] == 5 and sd["base_lr"] == 0.1

    opt2 = _sgd(0.7)
    other = SCHEDULES[sched][0](opt2)
    other.load_state_dict(sd)
    assert opt2.lr == opt.lr and other.last_epoch == 5
    for _ in range(5):
        assert other.step() == ours.step()


def test_schedule_keep_config_restores_progress_only():
    opt = _sgd(0.1)
    short = optim.CosineLR(opt, t_max=4)
    for _ in range(2):
        short.step()
    opt2 = _sgd(0.1)
    longer = optim.CosineLR(opt2, t_max=8)
    longer.load_state_dict(short.state_dict(), keep_config=True)
    assert longer.t_max == 8 and longer.last_epoch == 2
    expected = 0.1 * (1.0 + math.cos(math.pi * 2 / 8)) / 2.0  # the 8-epoch cosine at epoch 2
    assert opt2.lr == pytest.approx(expected, rel=1e-15) and opt2.lr != pytest.approx(opt.lr)
    replay = optim.CosineLR(_sgd(0.1), t_max=8)
    replay.load_state_dict(short.state_dict())
    assert replay.t_max == 4


def test_schedule_state_validation():
    opt = _sgd()
    step = optim.StepLR(opt, step_size=3)
    cos = optim.CosineLR(_sgd(), t_max=5)
    with pytest.raises(ValueError, match="'CosineLR', but this schedule is 'StepLR'"):
        step.load_state_dict(cos.state_dict())
    with pytest.raises(ValueError, match="must have the keys"):
        step.load_state_dict({"type": "StepLR", "base_lr": 0.1, "last_epoch": 2})
    with pytest.raises(ValueError, match="step_size must be >= 1, got 0"):
        step.load_state_dict({**step.state_dict(), "step_size": 0})
    assert step.step_size == 3
    with pytest.raises(ValueError, match="step_size must be >= 1, got 0"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="gamma must be > 0, got -0.5"):
        optim.ExponentialLR(opt, gamma=-0.5)
    with pytest.raises(ValueError, match="t_max must be an integer, got 2.5"):
        optim.CosineLR(opt, t_max=2.5)
    with pytest.raises(ValueError, match="eta_min must be >= 0"):
        optim.CosineLR(opt, t_max=3, eta_min=-1.0)
    with pytest.raises(TypeError, match="Optimizer"):
        optim.StepLR(object(), step_size=1)
