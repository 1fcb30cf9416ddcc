"""Multi-tensor optimizer updates over flat buffers (``optim.cu``), and the flat parameter groups.

The first update of a parameter list copies the parameters into one flat buffer (a :class:`FlatGroup`)
with a gradient buffer and state buffers laid out alike; the conv and dense backward kernels write
gradients straight into it (:func:`grad_buffer`), so later updates are one launch.

A model with a flat store (:mod:`xpcnn.flat`, the default) needs no copy: its optimizer hands over
the store's whole 1-D buffers (one entry per dtype), which become a group as they are (adopted, not
copied), and :func:`grad_buffer` finds a parameter view of a live store and returns its view of the
store's gradient buffer.  (Logic-checked on the CuPy stand-in; not yet run on a GPU.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import flat as _flat
from ...functional import updates as _updates
from .launch import Kernels, _is_f32, f32, i32, i64

_MAX_GROUPS = 8


@dataclass
class FlatGroup:
    """Parameters laid end to end in one flat buffer, with a gradient buffer and state buffers alike.

    Layout: parameter ``i`` occupies elements ``[offsets[i], offsets[i] + sizes[i])`` of ``params``,
    ``grads`` and every ``slots[name]`` (C order within a parameter); the order is the optimizer's.
    """

    params: Any
    grads: Any
    slots: dict[str, Any]
    offsets: list[int]
    sizes: list[int]
    shapes: list[tuple[int, ...]]

    def view(self, flat: Any, i: int) -> Any:
        o = self.offsets[i]
        if o == 0 and self.sizes[i] == flat.size and self.shapes[i] == tuple(flat.shape):
            return flat  # an adopted buffer (one entry covering it): the array itself
        return flat[o:o + self.sizes[i]].reshape(self.shapes[i])


def _address(a: Any) -> int:
    return int(a.data.ptr)


def grad_buffer(k: Kernels, param: Any) -> Any:
    """Where the gradient of ``param`` goes: its slot in a flat group's gradient buffer, else a new array."""
    if param.flags.c_contiguous:
        addr = _address(param)
        for base, group in k.groups.items():
            offset, rem = divmod(addr - base, 4)
            if rem == 0 and offset in group.offsets:
                i = group.offsets.index(offset)
                if group.shapes[i] == tuple(param.shape):
                    return group.view(group.grads, i)
        view = _store_grad_view(param, addr)
        if view is not None:
            return view
    return k.cp.empty(param.shape, dtype=param.dtype)


def _store_grad_view(param: Any, addr: int) -> Any:
    """The gradient-buffer view of ``param`` when it is a parameter view of a live flat store, else None."""
    for store in _flat.live_stores():
        if store.library in ("numpy", "torch"):
            continue
        table = store.__dict__.get("_cuda_addresses")
        if table is None:  # the buffers never move: one address table per store
            table = store.__dict__["_cuda_addresses"] = {_address(v): i for i, v in enumerate(store.param_views)}
        i = table.get(addr)
        if i is not None and store.entries[i].shape == tuple(param.shape) and store.param_views[i].dtype == param.dtype:
            return store.grad_views[i]
    return None


def _adoptable(params: list[Any], grads: list[Any], slots: list[dict[str, Any]], names: tuple[str, ...]) -> bool:
    """One whole 1-D buffer each for the parameter, gradient and state (a flat store's hand-over)."""
    if len(params) != 1:
        return False
    arrays = [params[0], grads[0], *(slots[0][n] for n in names)]
    return all(a.ndim == 1 and a.size == params[0].size and a.flags.c_contiguous for a in arrays)


def _adopt_group(k: Kernels, params: list[Any], grads: list[Any], slots: list[dict[str, Any]],
                 names: tuple[str, ...]) -> FlatGroup:
    """A group whose buffers are the caller's own (no copy): the update writes them in place."""
    p = params[0]
    group = FlatGroup(p, grads[0], {n: slots[0][n] for n in names}, [0], [int(p.size)], [tuple(p.shape)])
    k.groups[_address(p)] = group
    while len(k.groups) > _MAX_GROUPS:
        k.groups.popitem(last=False)
    return group



_RULE_KERNEL = {"sgd": "sgd_f32", "momentum": "momentum_f32", "nesterov": "momentum_f32", "adagrad": "rms_f32",
                "rmsprop": "rms_f32", "adam": "adam_f32", "adamw": "adam_f32"}


def _rule_args(rule: str, hyper: Mapping[str, float], step: int) -> tuple[Any, ...]:
    """The scalar arguments of ``rule``'s kernel, rounded to float32 as the reference rounds them."""
    wd = float(hyper.get("weight_decay", 0.0))
    has_wd = i32(wd != 0.0)
    lr = float(hyper["lr"])
    if rule == "sgd":
        return (f32(lr), has_wd, f32(wd))
    if rule in ("momentum", "nesterov"):
        return (f32(lr), f32(hyper["momentum"]), i32(rule == "nesterov"), has_wd, f32(wd))
    if rule in ("adagrad", "rmsprop"):
        alpha = float(hyper.get("alpha", 1.0))
        return (f32(lr), i32(rule == "adagrad"), f32(alpha), f32(1.0 - alpha), f32(hyper["eps"]), has_wd, f32(wd))
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    step_size = lr / (1.0 - b1**step)
    bc2 = math.sqrt(1.0 - b2**step)
    if rule == "adam":
        return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(step_size), f32(bc2), f32(hyper["eps"]),
                has_wd, f32(wd), i32(0), f32(1.0))
    return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(step_size), f32(bc2), f32(hyper["eps"]),
            i32(0), f32(0.0), has_wd, f32(1.0 - lr * wd))


def _update_eligible(params: list[Any], grads: list[Any], slots: list[dict[str, Any]], steps: list[int], rule: str,
                     hyper: Mapping[str, float]) -> bool:
    if rule not in _RULE_KERNEL or not params:
        return False
    names = _updates.SLOTS[rule]
    for p, g, s in zip(params, grads, slots, strict=True):
        if not (_is_f32(p, g) and p.flags.c_contiguous and g.flags.c_contiguous and p.shape == g.shape):
            return False
        if any(not (_is_f32(s[n]) and s[n].flags.c_contiguous and s[n].shape == p.shape) for n in names):
            return False
    return True


def _adjacent(arrays: list[Any], i: int) -> bool:
    return _address(arrays[i]) == _address(arrays[i - 1]) + 4 * arrays[i - 1].size


def _launch_update(k: Kernels, rule: str, p: Any, g: Any, s: list[Any], n: int, scalars: tuple[Any, ...]) -> None:
    args = (p, g, *s, i64(n), *scalars)
    k.launch("optim.cu", _RULE_KERNEL[rule], n, args)


def _new_group(k: Kernels, params: list[Any], names: tuple[str, ...]) -> FlatGroup:
    cp = k.cp
    sizes = [int(p.size) for p in params]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    total = sum(sizes)
    group = FlatGroup(cp.empty(total, dtype=np.float32), cp.zeros(total, dtype=np.float32),
                      {n: cp.empty(total, dtype=np.float32) for n in names}, offsets, sizes,
                      [tuple(p.shape) for p in params])
    for i, p in enumerate(params):  # the state is copied in by the caller
        group.params[offsets[i]:offsets[i] + sizes[i]] = p.reshape(-1)
    k.groups[_address(group.params)] = group
    while len(k.groups) > _MAX_GROUPS:
        k.groups.popitem(last=False)
    return group


def _group_of(k: Kernels, params: list[Any]) -> FlatGroup | None:
    """The flat group whose parameter views are exactly ``params``, in order."""
    group = k.groups.get(_address(params[0]))
    if group is None or len(group.offsets) != len(params):
        return None
    base = _address(group.params)
    for i, p in enumerate(params):
        if _address(p) != base + 4 * group.offsets[i] or tuple(p.shape) != group.shapes[i]:
            return None
    return group


def _optimizer_update(k: Kernels, params: list[Any], grads: list[Any], slots: list[dict[str, Any]],
                      steps: list[int], rule: str, hyper: Mapping[str, float]) -> list[Any]:
    names = _updates.SLOTS[rule]
    group = _group_of(k, params)
    if group is None and _adoptable(params, grads, slots, names):  # a flat store's buffers: used as they are
        group = _adopt_group(k, params, grads, slots, names)
    elif group is None:  # first step (or after a checkpoint load): move parameters and state into a flat group
        group = _new_group(k, params, names)
    for n in names:  # a rule this group has not served yet (another optimizer over the same parameters)
        if n not in group.slots:
            group.slots[n] = k.cp.empty(group.params.size, dtype=np.float32)
    for i, s in enumerate(slots):  # the optimizer's state dicts hold views of the group's buffers
        for n in names:
            view = group.view(group.slots[n], i)
            if _address(s[n]) != _address(view):  # state from elsewhere (a new optimizer, a loaded state_dict)
                view[...] = s[n]
                s[n] = view
    news = [group.view(group.params, i) for i in range(len(params))]
    base = _address(group.grads)
    foreign = [i for i, g in enumerate(grads) if _address(g) != base + 4 * group.offsets[i]]
    if len(set(steps)) == 1 and len(foreign) < len(grads):
        # gradients the CUDA backward kernels did not write into the group (a reference op's) are
        # copied in, then the whole group is updated in one launch
        for i in foreign:
            group.view(group.grads, i)[...] = grads[i]
        total = group.offsets[-1] + group.sizes[-1]
        _launch_update(k, rule, group.params, group.grads, [group.slots[n] for n in names], total,
                       _rule_args(rule, hyper, steps[0]))
        return news
    for i, (p, g, step) in enumerate(zip(news, grads, steps, strict=True)):  # one launch per parameter
        _launch_update(k, rule, p, g, [slots[i][n] for n in names], int(p.size), _rule_args(rule, hyper, step))
    return news
