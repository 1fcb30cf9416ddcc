"""The update rules of :mod:`xpcnn.functional.updates` and the kernel seam ``xpcnn.kernels.optimizer_update``.

The rules are checked directly (no optimizer object) against ``torch.optim``; the seam tests prove that
:meth:`Optimizer.step` makes exactly one call of the kernel op per step, and that a fast implementation
which updates the parameters in place (as a flat-buffer kernel will) gives the reference's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import kernels, optim
from xpcnn.functional import updates
from xpcnn.kernels import Op, using_kernels

try:
    from .optim_cases import (
        CASES,
        DTYPES,
        NAMES,
        SHAPES,
        TOL,
        assert_close,
        host_problem,
        make_refs,
        run_torch,
        set_grads,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from optim_cases import (
        CASES,
        DTYPES,
        NAMES,
        SHAPES,
        TOL,
        assert_close,
        host_problem,
        make_refs,
        run_torch,
        set_grads,
    )

# the rule and keyword floats that match CASES[name] (the torch side) with weight decay 0.05
RULE_ARGS = {
    "SGD": ("sgd", {"lr": 0.1}),
    "Momentum": ("momentum", {"lr": 0.1, "momentum": 0.8}),
    "Nesterov": ("nesterov", {"lr": 0.1, "momentum": 0.8}),
    "AdaGrad": ("adagrad", {"lr": 0.3, "eps": 1e-10}),
    "RMSProp": ("rmsprop", {"lr": 0.02, "alpha": 0.9, "eps": 1e-8}),
    "Adam": ("adam", {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-8}),
    "AdamW": ("adamw", {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-8}),
}
WD = 0.05


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_optimizer_update_matches_torch_optim(backend, name, dtype, rng):
    """``optimizer_update`` alone, fed its own step counts, reproduces ``torch.optim`` over several steps."""
    pytest.importorskip("torch", reason="torch.optim is the oracle")
    init, grads = host_problem(rng)
    rule, hyper = RULE_ARGS[name]
    params = {n: B.asarray(v, dtype=dtype) for n, v in init.items()}
    slots = {n: {s: B.asarray(np.zeros(SHAPES[n]), dtype=dtype) for s in updates.SLOTS[rule]} for n in init}
    for t, step_grads in enumerate(grads, start=1):
        names = list(params)
        new = updates.optimizer_update([params[n] for n in names], [B.asarray(step_grads[n], dtype=dtype)
                                                                    for n in names],
                                       [slots[n] for n in names], [t] * len(names), rule,
                                       {**hyper, "weight_decay": WD})
        assert len(new) == len(names)
        params = dict(zip(names, new))
    want = run_torch(name, WD, init, grads, dtype)
    assert_close({n: B.to_numpy(v) for n, v in params.items()}, want, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_rules_are_pure_and_rebind_their_slots(name, rng):
    """A rule writes nothing in place: p, g and the old slot arrays are untouched; the dict gets new arrays."""
    rule, hyper = RULE_ARGS[name]
    p, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    slots = {s: rng.uniform(0.1, 1.0, size=(3, 4)) for s in updates.SLOTS[rule]}
    before = {"p": p.copy(), "g": g.copy(), **{s: a.copy() for s, a in slots.items()}}
    old_slots = dict(slots)
    new = updates.RULES[rule](p, g, slots, 3, **hyper, weight_decay=WD)
    assert new is not p and new.shape == p.shape and new.dtype == p.dtype
    np.testing.assert_array_equal(p, before["p"])
    np.testing.assert_array_equal(g, before["g"])
    assert set(slots) == set(updates.SLOTS[rule])
    for s, old in old_slots.items():
        np.testing.assert_array_equal(old, before[s])
        assert slots[s] is not old and not np.array_equal(slots[s], old)


def test_adam_bias_correction_uses_the_given_step(rng):
    """Step t enters only through 1 - beta^t: the same state and gradient at t=1 and t=7, by hand."""
    p, g = rng.normal(size=5), rng.normal(size=5)
    m0, v0 = rng.normal(size=5), rng.uniform(0.1, 1.0, size=5)
    for t in (1, 7):
        slots = {"exp_avg": m0.copy(), "exp_avg_sq": v0.copy()}
        got = updates.adam(p, g, slots, t, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
        m, v = 0.9 * m0 + 0.1 * g, 0.99 * v0 + 0.01 * g * g
        want = p - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
        np.testing.assert_allclose(got, want, **TOL["float64"])
        np.testing.assert_allclose(slots["exp_avg"], m, **TOL["float64"])


def test_optimizer_update_rejects_bad_calls():
    p = [np.zeros(2)]
    with pytest.raises(ValueError, match=r"unknown optimizer rule 'lbfgs'; expected one of \['adagrad'"):
        updates.optimizer_update(p, p, [{}], [1], "lbfgs", {"lr": 0.1})
    with pytest.raises(ValueError, match="one entry per parameter; got lengths 1, 1, 1, 2"):
        updates.optimizer_update(p, p, [{}], [1, 2], "sgd", {"lr": 0.1})


def test_every_optimizer_names_a_rule_and_takes_its_slots_from_it():
    assert set(updates.RULES) == set(updates.SLOTS)
    assert {cls.rule for cls in optim.OPTIMIZERS.values()} == set(updates.RULES)
    for cls in optim.OPTIMIZERS.values():
        assert cls.slot_names == updates.SLOTS[cls.rule]


# ----------------------------------------------------------------------------- the seam


def _problem(rng, name, dtype="float64"):
    init, grads = host_problem(rng)
    refs = make_refs(init, dtype)
    return CASES[name][0](refs, WD), refs, grads


@pytest.mark.parametrize("name", NAMES)
def test_step_calls_the_kernel_op_once_per_step(name, rng, monkeypatch):
    """One call per step, over exactly the parameters that have a gradient, with the optimizer's rule."""
    calls = []
    real = kernels.optimizer_update

    def spy(params, grads, slots, steps, rule, hyper):
        calls.append((len(params), list(steps), rule, dict(hyper)))
        return real(params, grads, slots, steps, rule, hyper)

    monkeypatch.setattr(kernels, "optimizer_update", spy)
    opt, refs, grads = _problem(rng, name)
    grads[1]["0.b"] = None
    for step_grads in grads[:3]:
        set_grads(refs, step_grads, "float64")
        opt.step()
    assert [c[0] for c in calls] == [3, 2, 3]
    assert calls[2][1] == [3, 2, 3]  # each parameter's own update count
    assert {c[2] for c in calls} == {type(opt).rule}
    assert calls[0][3]["lr"] == opt.lr and calls[0][3]["weight_decay"] == opt.weight_decay
    for ref in refs:  # step with no gradient at all: no call, but the step is counted
        ref.owner.grads[ref.key] = None
    opt.step()
    assert len(calls) == 3 and opt.state_dict()["step"] == 4


@pytest.mark.parametrize("name", NAMES)
def test_a_fast_in_place_implementation_plugs_in(name, rng, monkeypatch):
    """A registered fast kernel that updates the arrays in place and returns them gives the reference's numbers."""
    counts = {"fast": 0}

    def fast_in_place(params, grads, slots, steps, rule, hyper):
        counts["fast"] += 1
        new = updates.optimizer_update(params, grads, slots, steps, rule, hyper)
        for p, n in zip(params, new):
            p[...] = n
        return list(params)  # the same array objects, as a flat-buffer kernel returns them

    op = Op("optimizer_update", updates.optimizer_update)
    op.register(np.ndarray, "test-in-place", fast_in_place)
    monkeypatch.setattr(kernels, "optimizer_update", op)

    ref_opt, ref_refs, grads = _problem(rng, name)
    fast_opt, fast_refs, _ = _problem(np.random.default_rng(12345), name)
    arrays = [r.value for r in fast_refs]
    for step_grads in grads:
        set_grads(ref_refs, step_grads, "float64")
        set_grads(fast_refs, step_grads, "float64")
        with using_kernels("reference"):
            ref_opt.step()
        with using_kernels("auto"):
            assert op.implementation([r.value for r in fast_refs]) == "test-in-place"
            fast_opt.step()
    assert counts["fast"] == len(grads)
    assert all(r.value is a for r, a in zip(fast_refs, arrays))  # updated in place, never replaced
    for r, f in zip(ref_refs, fast_refs):
        np.testing.assert_array_equal(B.to_numpy(f.value), B.to_numpy(r.value), err_msg=r.name)
    for key, arr in ref_opt.state_dict()["slots"].items():
        np.testing.assert_array_equal(fast_opt.state_dict()["slots"][key], arr, err_msg=key)
