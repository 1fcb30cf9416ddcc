"""Shared problem, optimizer pairs (xpcnn vs ``torch.optim``) and helpers for the optimizer tests.

Oracles that share no code with the implementation:

* ``torch.optim`` (and ``torch.optim.lr_scheduler``) run on torch tensors with
  hand-assigned ``.grad`` (no autograd), on the same host-generated inputs;
* one-step (and two-step) NumPy references written in the tests from the equations.

Every optimizer runs on every backend lane, in float64 and float32, with and
without weight decay; results are compared on the host.
"""

from __future__ import annotations

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
