"""The optimizers' numbers: against ``torch.optim``, hand-written equations, and a quadratic they must minimise.

Oracles and helpers: :mod:`optim_cases`.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import optim
from xpcnn.parameter import ParamRef

try:
    from .optim_cases import (
        CASES,
        DTYPES,
        NAMES,
        TOL,
        WEIGHT_DECAYS,
        FakeLayer,
        assert_close,
        host_problem,
        host_values,
        make_refs,
        run_torch,
        run_xpcnn,
        set_grads,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from optim_cases import (
        CASES,
        DTYPES,
        NAMES,
        TOL,
        WEIGHT_DECAYS,
        FakeLayer,
        assert_close,
        host_problem,
        host_values,
        make_refs,
        run_torch,
        run_xpcnn,
        set_grads,
    )


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
