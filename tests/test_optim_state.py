"""Optimizer state and hyper-parameters: state dicts, validation, defaults."""

from __future__ import annotations

import inspect
import json

import array_api_compat
import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import optim
from xpcnn.functional import updates
from xpcnn.parameter import ParamRef

try:
    from .optim_cases import CASES, DTYPES, NAMES, SHAPES, FakeLayer, host_problem, host_values, make_refs, run_xpcnn
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from optim_cases import CASES, DTYPES, NAMES, SHAPES, FakeLayer, host_problem, host_values, make_refs, run_xpcnn


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


# ----------------------------------------------------------------------------- each hyper-parameter declared once


# a value other than the default for every hyper-parameter of every optimizer, and one each rejects
NON_DEFAULT = {"lr": 0.3, "weight_decay": 0.02, "momentum": 0.7, "eps": 1e-5, "alpha": 0.8, "betas": (0.8, 0.95)}
BAD = {"lr": float("nan"), "weight_decay": -1.0, "momentum": 1.0, "eps": -1.0, "alpha": 1.0, "betas": (0.9, 1.0)}
BAD_FOR = {("Nesterov", "momentum"): 0.0}  # Nesterov alone refuses zero momentum


def _one_param():
    return [ParamRef("0.W", FakeLayer({"W": np.zeros((2, 3))}), "W")]


@pytest.mark.parametrize("name", NAMES)
def test_signature_and_declaration_agree(name):
    """The keyword arguments of ``__init__`` are exactly the declared hyper-parameters, in ``hyper()``."""
    cls = getattr(optim, name)
    keywords = list(inspect.signature(cls.__init__).parameters)[2:]  # drop self, params
    assert set(keywords) == set(cls.hyper_fields) == set(cls(_one_param()).hyper())


@pytest.mark.parametrize("name", NAMES)
def test_non_default_hyper_parameters_round_trip(name):
    """Every hyper-parameter set at construction comes back from hyper(), _set_hyper and a JSON state dict."""
    cls = getattr(optim, name)
    signature = inspect.signature(cls.__init__).parameters
    values = {k: NON_DEFAULT[k] for k in cls.hyper_fields}
    assert all(signature[k].default != v for k, v in values.items())  # really not the defaults
    opt = cls(_one_param(), **values)
    exported = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    assert opt.hyper() == exported
    assert {k: getattr(opt, k) for k in values} == values
    opt._set_hyper(opt.hyper())
    assert opt.hyper() == exported

    sd = json.loads(json.dumps({k: v for k, v in opt.state_dict().items() if k != "slots"}))
    fresh = cls(_one_param())
    assert fresh.hyper() != exported
    fresh.load_state_dict({**sd, "slots": opt.state_dict()["slots"]})
    assert fresh.hyper() == exported and {k: getattr(fresh, k) for k in values} == values
    # and the rule accepts what the optimizer hands it (every declared value reaches the update)
    p, g = np.ones((2, 3)), np.full((2, 3), 0.5)
    slots = {s: np.zeros((2, 3)) for s in cls.slot_names}
    updates.optimizer_update([p], [g], [slots], [1], cls.rule, fresh._rule_hyper())


@pytest.mark.parametrize("name", NAMES)
def test_one_check_for_construction_assignment_and_loading(name):
    """A bad value gets the same error whether it comes through __init__, an assignment or load_state_dict."""
    cls = getattr(optim, name)
    for key in cls.hyper_fields:
        bad = BAD_FOR.get((name, key), BAD[key])
        with pytest.raises(ValueError) as construction:
            cls(_one_param(), **{key: bad})
        message = str(construction.value)
        assert message.startswith(key), message
        opt = cls(_one_param())
        before = opt.hyper()
        with pytest.raises(ValueError) as assignment:
            setattr(opt, key, bad)
        assert str(assignment.value) == message
        sd = opt.state_dict()
        with pytest.raises(ValueError) as loading:
            opt.load_state_dict({**sd, "hyper": {**sd["hyper"], key: bad}})
        assert str(loading.value).endswith(message)
        assert opt.hyper() == before


# ----------------------------------------------------------------------------- parameters moved after building


def _dense_model():
    from xpcnn import layers
    from xpcnn.model import Sequential

    return Sequential([layers.Dense(3, 2)])


def _train_step(model, opt, x):
    y = model.forward(x, train=True)
    model.backward(y * 0.0 + 1.0)
    opt.step()


def test_step_refuses_parameters_moved_after_building():
    """numpy -> array_api_strict after the optimizer was built: a clear error, nothing changed; the fix works."""
    pytest.importorskip("array_api_strict", reason="the move goes to array_api_strict")
    model = _dense_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = np.ones((4, 3), dtype=np.float32)
    _train_step(model, opt, x)
    model.to("array_api_strict")
    x_strict = B.asarray(x, dtype="float32", backend="array_api_strict")
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"Adam: parameter '0\.W' is now array_api_strict .*float32.*, but its "
                                         r"optimizer state 'exp_avg' is numpy \(device cpu, float32\).*"
                                         r"Build the optimizer after model\.to\(\.\.\.\)"):
        _train_step(model, opt, x_strict)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 1 and after["param_steps"] == before["param_steps"]
    assert isinstance(model.layers[0].params["W"], type(x_strict))

    # the fix the message gives: a new optimizer after the move, carrying the old one's progress
    moved = optim.Adam(model.parameters())
    moved.load_state_dict(before)
    _train_step(model, moved, x_strict)
    assert moved.state_dict()["step"] == 2
    assert isinstance(moved.state_dict()["slots"]["0.W/exp_avg"], type(x_strict))


def test_stateless_sgd_follows_its_parameters():
    """SGD keeps no state, so nothing can be stranded: it keeps working after a move."""
    pytest.importorskip("array_api_strict", reason="the move goes to array_api_strict")
    model = _dense_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.to("array_api_strict")
    before = B.to_numpy(model.layers[0].params["b"]).copy()
    _train_step(model, opt, B.asarray(np.ones((4, 3)), dtype="float32", backend="array_api_strict"))
    np.testing.assert_allclose(B.to_numpy(model.layers[0].params["b"]), before - 0.1 * 4.0, rtol=1e-6)


def test_step_refuses_a_parameter_cast_after_building(backend):
    layer = FakeLayer({"W": B.asarray(np.ones(3), dtype="float64")})
    opt = optim.Momentum([ParamRef("0.W", layer, "W")])
    layer.params["W"] = B.asarray(np.ones(3), dtype="float32")
    layer.grads["W"] = B.asarray(np.ones(3), dtype="float32")
    with pytest.raises(ValueError, match=r"'0\.W' is now .*float32.*'momentum_buffer' is .*float64"):
        opt.step()
