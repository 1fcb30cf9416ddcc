"""Tests for :mod:`xpcnn.optim`: optimizers and learning-rate schedules.

Oracles that share no code with the implementation:

* ``torch.optim`` (and ``torch.optim.lr_scheduler``) run on torch tensors with
  hand-assigned ``.grad`` (no autograd), on the same host-generated inputs;
* one-step (and two-step) NumPy references written here from the equations.

Every optimizer runs on every backend lane, in float64 and float32, with and
without weight decay; results are compared on the host.
"""

from __future__ import annotations

import json
import math

import array_api_compat
import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import optim
from xpcnn.parameter import ParamRef

DTYPES = ["float64", "float32"]
TOL = {"float64": {"rtol": 1e-12, "atol": 1e-14}, "float32": {"rtol": 2e-6, "atol": 1e-7}}
SHAPES = {"0.W": (3, 4), "0.b": (4,), "1.W": (2, 3)}
N_STEPS = 5

# name -> (xpcnn constructor, torch constructor), both called as f(params, weight_decay)
CASES = {
    "SGD": (
        lambda ps, wd: optim.SGD(ps, lr=0.1, weight_decay=wd),
        lambda ps, wd, to: to.SGD(ps, lr=0.1, weight_decay=wd),
    ),
    "Momentum": (
        lambda ps, wd: optim.Momentum(ps, lr=0.1, momentum=0.8, weight_decay=wd),
        lambda ps, wd, to: to.SGD(ps, lr=0.1, momentum=0.8, weight_decay=wd),
    ),
    "Nesterov": (
        lambda ps, wd: optim.Nesterov(ps, lr=0.1, momentum=0.8, weight_decay=wd),
        lambda ps, wd, to: to.SGD(ps, lr=0.1, momentum=0.8, nesterov=True, weight_decay=wd),
    ),
    "AdaGrad": (
        lambda ps, wd: optim.AdaGrad(ps, lr=0.3, weight_decay=wd),
        lambda ps, wd, to: to.Adagrad(ps, lr=0.3, weight_decay=wd),
    ),
    "RMSProp": (
        lambda ps, wd: optim.RMSProp(ps, lr=0.02, alpha=0.9, eps=1e-8, weight_decay=wd),
        lambda ps, wd, to: to.RMSprop(ps, lr=0.02, alpha=0.9, eps=1e-8, weight_decay=wd),
    ),
    "Adam": (
        lambda ps, wd: optim.Adam(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd),
        lambda ps, wd, to: to.Adam(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd),
    ),
    "AdamW": (
        lambda ps, wd: optim.AdamW(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd),
        lambda ps, wd, to: to.AdamW(ps, lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=wd),
    ),
}
NAMES = list(CASES)
WEIGHT_DECAYS = [0.0, 0.05]


class FakeLayer:
    """The smallest thing with ``params`` and ``grads`` dicts."""

    def __init__(self, params: dict) -> None:
        self.params = dict(params)
        self.grads = {k: None for k in params}


def host_problem(rng, n_steps=N_STEPS):
    """Initial values and a gradient sequence, as float64 NumPy on the host."""
    init = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    grads = [{name: rng.normal(size=shape) for name, shape in SHAPES.items()} for _ in range(n_steps)]
    return init, grads


def make_refs(init, dtype):
    """ParamRefs over two fake layers, on the current backend, in ``dtype``."""
    layers = {}
    refs = []
    for name, value in init.items():
        owner, key = name.split(".")
        layer = layers.setdefault(owner, FakeLayer({}))
        layer.params[key] = B.asarray(value, dtype=dtype)
        layer.grads[key] = None
        refs.append(ParamRef(name, layer, key))
    return refs


def set_grads(refs, grads, dtype):
    for ref in refs:
        g = grads.get(ref.name)
        ref.owner.grads[ref.key] = None if g is None else B.asarray(g, dtype=dtype)


def host_values(refs):
    return {ref.name: B.to_numpy(ref.value) for ref in refs}


def run_xpcnn(opt, refs, grads, dtype):
    for step_grads in grads:
        set_grads(refs, step_grads, dtype)
        opt.step()
    return host_values(refs)


def run_torch(name, wd, init, grads, dtype, lr_per_step=None):
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    tensors = {n: torch.tensor(v, dtype=tdtype) for n, v in init.items()}
    topt = CASES[name][1](list(tensors.values()), wd, torch.optim)
    for i, step_grads in enumerate(grads):
        for n, t in tensors.items():
            g = step_grads.get(n)
            t.grad = None if g is None else torch.tensor(g, dtype=tdtype)
        if lr_per_step is not None:
            for group in topt.param_groups:
                group["lr"] = lr_per_step[i]
        topt.step()
    return {n: t.numpy().copy() for n, t in tensors.items()}


def assert_close(got, want, dtype):
    for name in want:
        assert got[name].dtype == np.dtype(dtype), (name, got[name].dtype)
        assert got[name].shape == want[name].shape, (name, got[name].shape)
        np.testing.assert_allclose(got[name], want[name], **TOL[dtype], err_msg=name)


# ----------------------------------------------------------------------------- against torch.optim


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", WEIGHT_DECAYS, ids=["nowd", "wd"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_optim(backend, name, wd, dtype, rng):
    pytest.importorskip("torch")
    init, grads = host_problem(rng)
    refs = make_refs(init, dtype)
    opt = CASES[name][0](refs, wd)
    got = run_xpcnn(opt, refs, grads, dtype)
    want = run_torch(name, wd, init, grads, dtype)
    assert_close(got, want, dtype)
    # the parameters stay arrays of the lane's library
    for ref in refs:
        assert array_api_compat.array_namespace(ref.value) is array_api_compat.array_namespace(
            B.asarray(np.zeros(1)))


@pytest.mark.parametrize("name", NAMES)
def test_skips_params_without_grad_like_torch(backend, name, rng):
    """A parameter with grad None is left alone and its own step count is not advanced."""
    pytest.importorskip("torch")
    dtype = "float64"
    init, grads = host_problem(rng, n_steps=4)
    grads[0]["0.b"] = None
    grads[2]["0.b"] = None
    grads[1]["1.W"] = None
    refs = make_refs(init, dtype)
    opt = CASES[name][0](refs, 0.05)
    set_grads(refs, grads[0], dtype)
    opt.step()
    np.testing.assert_array_equal(B.to_numpy(refs[1].value), init["0.b"])
    got = run_xpcnn(opt, refs, grads[1:], dtype)
    want = run_torch(name, 0.05, init, grads, dtype)
    assert_close(got, want, dtype)
    sd = opt.state_dict()
    assert sd["step"] == 4
    assert sd["param_steps"] == {"0.W": 4, "0.b": 2, "1.W": 3}


def test_lr_changes_between_steps_like_torch(backend, rng):
    """``lr`` is read at every step (schedules rely on it); Momentum rescales the whole buffer like torch."""
    pytest.importorskip("torch")
    init, grads = host_problem(rng)
    lrs = [0.1, 0.1, 0.05, 0.02, 0.2]
    for name in ("Momentum", "Adam", "AdamW"):
        refs = make_refs(init, "float64")
        opt = CASES[name][0](refs, 0.05)
        for lr, step_grads in zip(lrs, grads):
            opt.lr = lr
            set_grads(refs, step_grads, "float64")
            opt.step()
        want = run_torch(name, 0.05, init, grads, "float64", lr_per_step=lrs)
        assert_close(host_values(refs), want, "float64")


# ----------------------------------------------------------------------------- hand-written references


def _one_step_reference(name, p, g, wd):
    """One update from zero state, from the equations (float64)."""
    if name == "SGD":
        return p - 0.1 * (g + wd * p)
    if name == "Momentum":  # b1 = g
        return p - 0.1 * (g + wd * p)
    if name == "Nesterov":  # b1 = g, step along g + m*b1
        return p - 0.1 * 1.8 * (g + wd * p)
    if name == "AdaGrad":  # h1 = g^2
        gg = g + wd * p
        return p - 0.3 * gg / (np.abs(gg) + 1e-10)
    if name == "RMSProp":  # s1 = (1 - alpha) g^2
        gg = g + wd * p
        return p - 0.02 * gg / (np.sqrt(0.1 * gg * gg) + 1e-8)
    if name == "Adam":  # m_hat = g, v_hat = g^2
        gg = g + wd * p
        return p - 0.05 * gg / (np.abs(gg) + 1e-8)
    if name == "AdamW":
        return p * (1 - 0.05 * wd) - 0.05 * g / (np.abs(g) + 1e-8)
    raise AssertionError(name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", WEIGHT_DECAYS, ids=["nowd", "wd"])
@pytest.mark.parametrize("name", NAMES)
def test_first_step_matches_equations(backend, name, wd, dtype, rng):
    init, grads = host_problem(rng, n_steps=1)
    refs = make_refs(init, dtype)
    opt = CASES[name][0](refs, wd)
    got = run_xpcnn(opt, refs, grads, dtype)
    # the reference starts from the same (dtype-rounded) numbers, computed in float64
    want = {n: _one_step_reference(name, init[n].astype(dtype).astype(np.float64),
                                   grads[0][n].astype(dtype).astype(np.float64), wd)
            for n in init}
    want = {n: v.astype(dtype) for n, v in want.items()}
    assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_steps_momentum_and_adam_by_hand(backend, dtype):
    p0 = np.array([1.0, -2.0, 0.5])
    g1 = np.array([0.5, 1.0, -4.0])
    g2 = np.array([-1.0, 0.25, 2.0])
    lr, mu, wd = 0.1, 0.9, 0.01

    # Momentum (torch form): b = mu*b + (g + wd*p); p -= lr*b
    b1 = g1 + wd * p0
    p1 = p0 - lr * b1
    b2 = mu * b1 + (g2 + wd * p1)
    p2 = p1 - lr * b2
    # ... which equals the book's form v = mu*v - lr*g; p += v for a constant lr
    v1 = -lr * (g1 + wd * p0)
    q1 = p0 + v1
    v2 = mu * v1 - lr * (g2 + wd * q1)
    np.testing.assert_allclose(q1 + v2, p2, rtol=1e-15)

    # Adam: m, v running averages; bias-corrected m_hat / (sqrt(v_hat) + eps)
    beta1, beta2, eps, alr = 0.9, 0.999, 1e-8, 0.01
    a, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate((g1, g2), start=1):
        g = g + wd * a
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        a = a - alr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)

    for opt_cls, kwargs, want in (
        (optim.Momentum, {"lr": lr, "momentum": mu, "weight_decay": wd}, p2),
        (optim.Adam, {"lr": alr, "betas": (beta1, beta2), "eps": eps, "weight_decay": wd}, a),
    ):
        layer = FakeLayer({"W": B.asarray(p0, dtype=dtype)})
        opt = opt_cls([ParamRef("0.W", layer, "W")], **kwargs)
        for g in (g1, g2):
            layer.grads["W"] = B.asarray(g, dtype=dtype)
            opt.step()
        got = B.to_numpy(layer.params["W"])
        assert got.dtype == np.dtype(dtype) and got.shape == (3,)
        np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=opt_cls.__name__)


# ----------------------------------------------------------------------------- state and hyper-parameters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_slots_live_with_their_parameter(backend, name, dtype, rng):
    init, _ = host_problem(rng)
    refs = make_refs(init, dtype)
    opt = CASES[name][0](refs, 0.0)
    sd = opt.state_dict()
    expected_slots = {f"{r.name}/{s}" for r in refs for s in type(opt).slot_names}
    assert set(sd["slots"]) == expected_slots
    by_name = {r.name: r for r in refs}
    for key, arr in sd["slots"].items():
        p = by_name[key.rsplit("/", 1)[0]].value
        assert array_api_compat.array_namespace(arr) is array_api_compat.array_namespace(p)
        assert arr.dtype == p.dtype and tuple(arr.shape) == tuple(p.shape)
        assert array_api_compat.device(arr) == array_api_compat.device(p)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(backend, name, rng):
    """Save after 3 steps, load into a fresh optimizer (via host arrays + JSON), 2 more steps: identical."""
    dtype = "float32"
    init, grads = host_problem(rng)
    refs_a = make_refs(init, dtype)
    opt_a = CASES[name][0](refs_a, 0.05)
    run_xpcnn(opt_a, refs_a, grads[:3], dtype)

    sd = opt_a.state_dict()
    assert sd["type"] == name and sd["step"] == 3
    meta = json.loads(json.dumps({k: v for k, v in sd.items() if k != "slots"}))
    host_slots = {k: B.to_numpy(v).copy() for k, v in sd["slots"].items()}

    # a fresh optimizer (different hyper-parameters: the state restores them) on a copy of the parameters
    refs_b = make_refs(host_values(refs_a), dtype)
    opt_b = type(opt_a)(refs_b, lr=0.5)
    opt_b.load_state_dict({**meta, "slots": host_slots})
    assert opt_b.hyper() == opt_a.hyper() and opt_b.lr == opt_a.lr
    for key, arr in opt_b.state_dict()["slots"].items():  # moved onto the parameters' backend
        p = refs_b[0].value
        assert array_api_compat.array_namespace(arr) is array_api_compat.array_namespace(p)
        np.testing.assert_array_equal(B.to_numpy(arr), host_slots[key])

    got_a = run_xpcnn(opt_a, refs_a, grads[3:], dtype)
    got_b = run_xpcnn(opt_b, refs_b, grads[3:], dtype)
    for n in got_a:
        np.testing.assert_array_equal(got_b[n], got_a[n])
    assert opt_b.state_dict()["step"] == opt_a.state_dict()["step"] == 5


def test_state_dict_loads_backend_arrays_directly(backend, rng):
    init, grads = host_problem(rng)
    refs = make_refs(init, "float64")
    opt = optim.Adam(refs, lr=0.01)
    run_xpcnn(opt, refs, grads[:2], "float64")
    other = optim.Adam(make_refs(host_values(refs), "float64"))
    sd = opt.state_dict()
    del sd["param_steps"]  # optional: defaults to the global step
    other.load_state_dict(sd)
    assert other.state_dict()["param_steps"] == {n: 2 for n in SHAPES}


@pytest.fixture
def adam_state(rng):
    init, grads = host_problem(rng)
    refs = make_refs(init, "float64")
    opt = optim.Adam(refs)
    run_xpcnn(opt, refs, grads[:2], "float64")
    fresh = optim.Adam(make_refs(init, "float64"))
    return opt.state_dict(), fresh


def _with(sd, **changes):
    out = {**sd, "slots": dict(sd["slots"]), "hyper": dict(sd["hyper"])}
    out.update(changes)
    return out


def test_load_rejects_wrong_type(adam_state):
    sd, fresh = adam_state
    adamw = optim.AdamW(fresh.params)
    with pytest.raises(ValueError, match=r"'Adam'.*'AdamW'"):
        adamw.load_state_dict(sd)
    with pytest.raises(ValueError, match="missing the key"):
        fresh.load_state_dict({k: v for k, v in sd.items() if k != "hyper"})


def test_load_rejects_missing_and_unknown_slots(adam_state):
    sd, fresh = adam_state
    slots = dict(sd["slots"])
    del slots["0.b/exp_avg_sq"]
    with pytest.raises(ValueError, match=r"missing the slot\(s\) \['0.b/exp_avg_sq'\]"):
        fresh.load_state_dict(_with(sd, slots=slots))
    slots = {**sd["slots"], "9.W/exp_avg": sd["slots"]["0.W/exp_avg"]}
    with pytest.raises(ValueError, match=r"'9.W/exp_avg'.*match no parameter"):
        fresh.load_state_dict(_with(sd, slots=slots))


def test_load_rejects_wrong_shape_and_dtype(adam_state):
    sd, fresh = adam_state
    slots = {**sd["slots"], "0.W/exp_avg": np.zeros((4, 3))}
    with pytest.raises(ValueError, match=r"'0.W/exp_avg'.*expected shape \(3, 4\).*got shape \(4, 3\)"):
        fresh.load_state_dict(_with(sd, slots=slots))
    slots = {**sd["slots"], "0.b/exp_avg": np.zeros(4, dtype=np.float32)}
    with pytest.raises(ValueError, match=r"dtype float64.*got shape \(4,\) and dtype float32"):
        fresh.load_state_dict(_with(sd, slots=slots))


def test_load_rejects_bad_hyper_and_leaves_state_alone(adam_state):
    sd, fresh = adam_state
    before = fresh.state_dict()
    with pytest.raises(ValueError, match="lr must be >= 0, got -1.0"):
        fresh.load_state_dict(_with(sd, hyper={**sd["hyper"], "lr": -1.0}))
    with pytest.raises(ValueError, match="'hyper' must have the keys"):
        fresh.load_state_dict(_with(sd, hyper={"lr": 0.1}))
    with pytest.raises(ValueError, match="step must be an integer"):
        fresh.load_state_dict(_with(sd, step=2.5))
    after = fresh.state_dict()
    assert after["hyper"] == before["hyper"] and after["step"] == before["step"] == 0
    for k in before["slots"]:
        assert after["slots"][k] is before["slots"][k]


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda ps: optim.SGD(ps, lr=0.0), "lr must be > 0, got 0.0"),
        (lambda ps: optim.SGD(ps, lr=-0.1), "lr must be > 0, got -0.1"),
        (lambda ps: optim.SGD(ps, lr=float("nan")), "lr must be finite"),
        (lambda ps: optim.SGD(ps, lr="fast"), "lr must be a real number, got 'fast'"),
        (lambda ps: optim.SGD(ps, weight_decay=-1e-4), "weight_decay must be >= 0, got -0.0001"),
        (lambda ps: optim.Momentum(ps, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (lambda ps: optim.Nesterov(ps, momentum=0.0), r"momentum must be in \(0, 1\), got 0.0"),
        (lambda ps: optim.AdaGrad(ps, eps=-1.0), "eps must be >= 0, got -1.0"),
        (lambda ps: optim.RMSProp(ps, alpha=1.5), r"alpha must be in \[0, 1\), got 1.5"),
        (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1.0"),
        (lambda ps: optim.Adam(ps, betas=(0.9,)), "betas must be a pair"),
        (lambda ps: optim.AdamW(ps, weight_decay=-0.01), "weight_decay must be >= 0, got -0.01"),
    ],
)
def test_invalid_hyper_parameters(factory, match, rng):
    refs = make_refs(host_problem(rng)[0], "float64")
    with pytest.raises(ValueError, match=match):
        factory(refs)


def test_invalid_parameter_lists(rng):
    refs = make_refs(host_problem(rng)[0], "float64")
    with pytest.raises(ValueError, match="duplicate parameter name '0.W'"):
        optim.SGD([refs[0], refs[1], refs[0]])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="ParamRef"):
        optim.SGD([refs[0].value])
    opt = optim.SGD(refs)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1.0
    opt.lr = 0.0  # a schedule may anneal to zero
    assert opt.lr == 0.0


def test_numpy_scalar_hyper_parameters_become_python_floats(backend):
    """NumPy scalars would make float32 params float64 on NumPy and fail on array_api_strict."""
    layer = FakeLayer({"W": B.asarray(np.ones((2, 2)), dtype="float32")})
    opt = optim.Adam([ParamRef("0.W", layer, "W")], lr=np.float32(0.01), betas=(np.float64(0.9), np.float32(0.99)),
                     eps=np.float64(1e-8), weight_decay=np.float32(0.1))
    assert all(type(v) is float for v in (opt.lr, *opt.betas, opt.eps, opt.weight_decay))
    json.dumps(opt.state_dict()["hyper"])
    for _ in range(2):
        layer.grads["W"] = B.asarray(np.full((2, 2), 0.5), dtype="float32")
        opt.step()
    assert B.to_numpy(layer.params["W"]).dtype == np.float32


def test_defaults():
    layer = FakeLayer({"W": np.zeros(2)})
    refs = [ParamRef("W", layer, "W")]
    assert optim.SGD(refs).hyper() == {"lr": 0.01, "weight_decay": 0.0}
    assert optim.Momentum(refs).hyper() == {"lr": 0.01, "weight_decay": 0.0, "momentum": 0.9}
    assert optim.Nesterov(refs).momentum == 0.9
    assert optim.AdaGrad(refs).eps == 1e-10
    assert optim.RMSProp(refs).hyper() == {"lr": 0.01, "weight_decay": 0.0, "alpha": 0.99, "eps": 1e-8}
    assert optim.Adam(refs).hyper() == {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8}
    assert optim.AdamW(refs).weight_decay == 1e-2
    assert set(optim.OPTIMIZERS) == {n.lower() for n in NAMES}


# ----------------------------------------------------------------------------- convergence


CONVERGE_LR = {"SGD": 0.2, "Momentum": 0.05, "Nesterov": 0.05, "AdaGrad": 0.5, "RMSProp": 0.02, "Adam": 0.05,
               "AdamW": 0.05}


@pytest.mark.parametrize("name", NAMES)
def test_minimises_a_quadratic(backend, name, rng):
    """f(p) = 0.5 * sum(a * (p - c)^2): every optimizer brings the loss down by orders of magnitude."""
    dtype = "float64"
    a = rng.uniform(0.5, 2.0, size=(4, 5))
    c = rng.normal(size=(4, 5))
    a_b, c_b = B.asarray(a, dtype=dtype), B.asarray(c, dtype=dtype)
    layer = FakeLayer({"W": B.asarray(np.zeros((4, 5)), dtype=dtype)})
    cls = getattr(optim, name)
    kwargs = {"weight_decay": 1e-4} if name == "AdamW" else {}
    opt = cls([ParamRef("0.W", layer, "W")], lr=CONVERGE_LR[name], **kwargs)

    def loss():
        return 0.5 * float(np.sum(a * (B.to_numpy(layer.params["W"]) - c) ** 2))

    start = loss()
    for _ in range(200):
        layer.grads["W"] = a_b * (layer.params["W"] - c_b)
        opt.step()
    assert loss() < 1e-3 * start, (name, start, loss())


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
