"""Numerical gradient checking by central differences, for xpcnn layers and your own.

    from xpcnn import gradcheck
    layer = MyLayer(..., dtype="float64")
    gradcheck(layer, x)                      # checks dx and every entry of layer.grads
    gradcheck(Residual(body), x)             # composites too: every nested parameter ("body.0.W", ...)

For a plain function, pass ``f(*inputs) -> (y, backward)`` where
``backward(dout)`` returns one gradient per input (None for inputs that are
not differentiated, e.g. integer labels).

The check projects the output on a fixed random ``dout``: with
``L(x) = sum(f(x) * dout)`` the analytic gradient is ``backward(dout)`` and the
numerical one is ``(L(x + eps*e_i) - L(x - eps*e_i)) / (2*eps)`` for every
element ``i``.  Everything is evaluated in float64 on the inputs' own backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from . import backend as B

__all__ = ["GradcheckError", "GradcheckResult", "gradcheck", "numerical_grad"]


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree; the message names the worst element."""


@dataclass
class GradcheckResult:
    """Per checked array: the largest ``|analytic - numeric|`` and the index where it occurs."""

    max_abs_error: dict[str, float] = field(default_factory=dict)
    worst_index: dict[str, tuple[int, ...]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def numerical_grad(loss: Callable[[], float], host: np.ndarray, commit: Callable[[np.ndarray], None],
                   eps: float) -> np.ndarray:
    """Central differences of ``loss()`` with respect to every element of ``host``.

    ``commit(host)`` must install the (perturbed) host array where ``loss`` reads it.
    """
    grad = np.zeros_like(host)
    try:
        for index in np.ndindex(*host.shape):
            original = host[index]
            try:
                host[index] = original + eps
                commit(host)
                plus = loss()
                host[index] = original - eps
                commit(host)
                minus = loss()
            finally:
                host[index] = original
            grad[index] = (plus - minus) / (2.0 * eps)
    finally:
        commit(host)  # the unperturbed values, even when loss() raised
    return grad


def _is_layer(target: Any) -> bool:
    return hasattr(target, "forward") and hasattr(target, "backward") and hasattr(target, "params")


def _buffer_stores(layer: Any) -> list[dict[str, Any]]:
    """The writable ``buffers`` dicts of a layer, or of every leaf below a composite layer."""
    if hasattr(layer, "named_leaves"):
        return [leaf.buffers for _, leaf in layer.named_leaves()]
    return [layer.buffers] if isinstance(getattr(layer, "buffers", None), dict) else []


def gradcheck(target: Any, inputs: Any | Sequence[Any], *, dout: Any = None, train: bool = True,
              eps: float = 1e-6, atol: float = 1e-7, rtol: float = 1e-5, seed: int = 0,
              check_params: bool = True, raise_on_failure: bool = True) -> GradcheckResult:
    """Compare analytic gradients with central differences; raise :class:`GradcheckError` on a mismatch.

    target: an xpcnn layer (checked: ``dx`` and every entry of ``grads``; for a composite layer such as
        :class:`~xpcnn.layers.Residual` or a nested Sequential, every nested parameter) or a
        callable ``f(*inputs) -> (y, backward)``.
    inputs: one array or a sequence of arrays, on any backend; floating inputs
        must be float64 (so must a layer's parameters).
    dout: the projection of the output; a fixed standard-normal array if None.
    Passes where ``|analytic - numeric| <= atol + rtol * |numeric|`` element-wise.
    """
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    is_layer = _is_layer(target)
    if is_layer and len(inputs) != 1:
        raise ValueError(f"a layer takes exactly one input, got {len(inputs)}")
    arrays = dict(enumerate(inputs))
    for i, a in arrays.items():
        xp = array_api_compat.array_namespace(a)
        if xp.isdtype(a.dtype, "real floating") and a.dtype != xp.float64:
            raise TypeError(f"gradcheck needs float64 inputs for reliable central differences; "
                            f"input {i} is {a.dtype}")
    if is_layer:
        for key, p in target.params.items():
            if p.dtype != array_api_compat.array_namespace(p).float64:
                raise TypeError(f"gradcheck needs float64 parameters; {type(target).__name__}.params[{key!r}] "
                                f"is {p.dtype} (build the layer with dtype='float64')")

    # parameters are written through ParamRefs where the layer has them (composites: nested names)
    refs = {ref.name: ref for ref in target.parameters()} if is_layer and hasattr(target, "parameters") else {}
    # forward(train=True) moves state such as batch-norm running statistics: restore it afterwards
    saved_buffers = [(store, key, B.to_device_like(B.to_numpy(value), value))
                     for store in _buffer_stores(target) for key, value in store.items()] if is_layer else []

    def run() -> tuple[Any, Any]:
        if is_layer:
            return target.forward(arrays[0], train=train), target.backward
        return target(*[arrays[i] for i in range(len(inputs))])

    try:
        y, backward = run()
        if dout is None:
            dout = B.to_device_like(np.random.default_rng(seed).standard_normal(tuple(y.shape)), y)
        dout_host = B.to_numpy(dout).astype(np.float64)
        analytic_dx = backward(dout)
        analytic: dict[str, Any] = {}
        if is_layer:
            analytic["x"] = analytic_dx
            analytic.update({key: g for key, g in target.grads.items()})
        else:
            grads = analytic_dx if isinstance(analytic_dx, (list, tuple)) else (analytic_dx,)
            if len(grads) != len(inputs):
                raise ValueError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")
            analytic.update({f"input {i}": g for i, g in enumerate(grads)})

        def loss() -> float:
            y_now, _ = run()
            return float(np.sum(B.to_numpy(y_now).astype(np.float64) * dout_host))

        result = GradcheckResult()
        for name, grad in analytic.items():
            if grad is None:
                continue
            if is_layer and name != "x":
                current, like = name, target.params[name]

                def commit_param(h: np.ndarray, key: str = current, ref: Any = like) -> None:
                    if key in refs:
                        refs[key].assign(B.to_device_like(h, ref))
                    else:
                        target.params[key] = B.to_device_like(h, ref)

                commit: Callable[[np.ndarray], None] = commit_param
            else:
                index = 0 if is_layer else int(name.split()[1])
                like = arrays[index]

                def commit_input(h: np.ndarray, i: int = index, ref: Any = like) -> None:
                    arrays[i] = B.to_device_like(h, ref)

                commit = commit_input

            host = B.to_numpy(like).astype(np.float64).copy()
            numeric = numerical_grad(loss, host, commit, eps)
            got = B.to_numpy(grad).astype(np.float64)
            if got.shape != numeric.shape:
                raise GradcheckError(f"gradient of {name}: shape {got.shape}, expected {numeric.shape}")
            err = np.abs(got - numeric)
            worst = np.unravel_index(int(np.argmax(err - rtol * np.abs(numeric))), err.shape) if err.size else ()
            result.max_abs_error[name] = float(err.max()) if err.size else 0.0
            result.worst_index[name] = tuple(int(i) for i in worst)
            if err.size and not np.all(err <= atol + rtol * np.abs(numeric)):
                result.failures.append(
                    f"gradient of {name} is wrong at index {result.worst_index[name]}: analytic {got[worst]:.10g}, "
                    f"numerical {numeric[worst]:.10g} (|diff| {err[worst]:.3g} > atol {atol:g} + rtol {rtol:g} * "
                    f"|numerical|)")
    finally:
        for store, key, value in saved_buffers:  # also when a check raised
            store[key] = value
    if result.failures and raise_on_failure:
        raise GradcheckError("; ".join(result.failures))
    return result
