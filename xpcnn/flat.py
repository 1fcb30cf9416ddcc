"""Flat parameter and gradient stores: one contiguous buffer per dtype, every layer array a view into it.

``attach(model)`` moves a model's parameters into one 1-D buffer per dtype and makes each
``layer.params[key]`` a view of its slice; gradients get a second buffer with the same layout, which
``layer.grads[key]`` views after each backward pass.  A multi-tensor optimizer update, a CUDA kernel or
an MPI Allreduce can then touch all parameters (or gradients) of a dtype in one call.

Layout (the contract for those users)
-------------------------------------
* Parameters are taken in ``model.parameters()`` order (``"0.W", "0.b", "3.W", ...``) and grouped by
  dtype in order of first appearance: ``store.params[dtype_name]`` and ``store.grads[dtype_name]`` are
  1-D arrays on the model's backend and device.
* Within a dtype, entry ``i`` occupies ``[offset_i, offset_i + size_i)`` in C order of its shape;
  ``offset_0 = 0`` and each offset is rounded up to a multiple of :data:`ALIGN` elements (64 bytes for
  float32, so vector loads and GPU ``float4`` accesses start aligned).  The gaps hold zeros in both
  buffers; an elementwise update over the whole buffer keeps them zero (zero gradient, zero state).
* ``store.entries``: one :class:`Entry` ``(name, dtype, offset, size, shape)`` per parameter; the same
  table describes the gradient buffer.  Buffers with equal layout (optimizer slots, an Allreduce's
  receive buffer) are made with :meth:`FlatStore.like`.

Keeping the views intact
------------------------
Anything that *replaces* a layer's array instead of writing into it -- the reference optimizer update
(it returns new arrays), ``load_state_dict``, ``to(...)``, a user's assignment -- is repaired by
:func:`sync`, which the model calls at the start of ``forward`` and at the end of ``load_state_dict``
and ``to``: a replaced parameter's values are copied into its view and the view is put back (so
nothing is silently detached); a moved or recast model gets a new store on its new backend.
:func:`collect_grads` (called at the end of ``backward``) copies fresh gradients into the gradient
buffer and points ``layer.grads`` at the views.  In-place updates (the ``numba_cpu`` optimizer kernel)
keep the views as they are, so they cost nothing here.

Namespaces whose slices are not writable views (``array_api_strict``) keep per-array storage:
:func:`attach` returns None there and the model runs as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from . import backend as B

__all__ = ["ALIGN", "Entry", "FlatStore", "attach", "collect_grads", "detach", "store_of", "sync"]

#: offsets are multiples of this many elements
ALIGN = 16
#: array libraries whose basic slices and reshapes are views that writes go through
VIEW_LIBRARIES = ("numpy", "cupy", "torch")


@dataclass(frozen=True)
class Entry:
    """Where one parameter lives in its dtype's buffers."""

    name: str
    dtype: str
    offset: int
    size: int
    shape: tuple[int, ...]


class FlatStore:
    """The flat buffers of one model (see the module docstring for the layout)."""

    def __init__(self, refs: list[Any]) -> None:
        values = [ref.value for ref in refs]
        first = values[0]
        self.xp = array_api_compat.array_namespace(first)
        self.device = array_api_compat.device(first)
        self.library = B.backend_name(first)
        self.refs = list(refs)
        self.entries: list[Entry] = []
        sizes: dict[str, int] = {}
        dtypes: dict[str, Any] = {}
        for ref, value in zip(self.refs, values, strict=True):
            name = B.dtype_name(value.dtype)
            dtypes.setdefault(name, value.dtype)
            offset = sizes.get(name, 0)
            size = int(array_api_compat.size(value))
            self.entries.append(Entry(ref.name, name, offset, size, tuple(value.shape)))
            sizes[name] = -(-(offset + size) // ALIGN) * ALIGN
        self.params = {n: self.xp.zeros(sizes[n], dtype=dtypes[n], device=self.device) for n in sizes}
        self.grads = {n: self.xp.zeros(sizes[n], dtype=dtypes[n], device=self.device) for n in sizes}
        self.param_views = [self._view(self.params, e) for e in self.entries]
        self.grad_views = [self._view(self.grads, e) for e in self.entries]
        for ref, value, view in zip(self.refs, values, self.param_views, strict=True):
            view[...] = value
            ref.owner.params[ref.key] = view

    def _view(self, buffers: dict[str, Any], e: Entry) -> Any:
        return self.xp.reshape(buffers[e.dtype][e.offset:e.offset + e.size], e.shape)

    def like(self, which: str = "params") -> dict[str, Any]:
        """New zero buffers with this store's layout (optimizer slots, communication buffers)."""
        source = self.params if which == "params" else self.grads
        return {n: self.xp.zeros_like(buf) for n, buf in source.items()}

    def views(self, buffers: dict[str, Any]) -> list[Any]:
        """Per-parameter views (in ``entries`` order) of buffers laid out like this store."""
        return [self._view(buffers, e) for e in self.entries]

    def compatible(self, refs: list[Any]) -> bool:
        """The same parameters (names, owners, shapes, dtypes) on the same backend and device."""
        if [(r.name, id(r.owner), r.key) for r in refs] != [(r.name, id(r.owner), r.key) for r in self.refs]:
            return False
        for ref, e in zip(refs, self.entries, strict=True):
            value = ref.value
            if (B.backend_name(value) != self.library or array_api_compat.device(value) != self.device
                    or B.dtype_name(value.dtype) != e.dtype or tuple(value.shape) != e.shape):
                return False
        return True


def store_of(model: Any) -> FlatStore | None:
    """The model's flat store, or None when it has none."""
    return model.__dict__.get("_flat_store")


def attach(model: Any) -> FlatStore | None:
    """Give ``model`` flat parameter and gradient stores; None (nothing changes) where views are unavailable.

    >>> import numpy as np, xpcnn
    >>> model = xpcnn.models.lenet5(rng=0)
    >>> store = attach(model)
    >>> np.shares_memory(model[0].params["W"], store.params["float32"])
    True
    """
    refs = model.parameters()
    if not refs or B.backend_name(refs[0].value) not in VIEW_LIBRARIES:
        model.__dict__["_flat_store"] = None
        model.__dict__["_flat_wanted"] = True
        return None
    store = FlatStore(refs)
    model.__dict__["_flat_store"] = store
    model.__dict__["_flat_wanted"] = True
    return store


def detach(model: Any) -> None:
    """Back to per-array storage (each parameter becomes an independent copy)."""
    store = store_of(model)
    model.__dict__["_flat_store"] = None
    model.__dict__["_flat_wanted"] = False
    if store is not None:
        for ref in store.refs:
            ref.owner.params[ref.key] = store.xp.asarray(ref.value, copy=True)


def sync(model: Any) -> None:
    """Put replaced parameters back into their views (copying their values); rebuild after a move or recast."""
    if not model.__dict__.get("_flat_wanted"):
        return
    store = store_of(model)
    refs = model.parameters()
    if store is not None and len(refs) == len(store.refs) and all(
            r.owner.params[r.key] is v for r, v in zip(refs, store.param_views, strict=True)):
        return  # intact (the common case: in-place updates)
    if store is None or not store.compatible(refs):
        attach(model)
        return
    for ref, view in zip(store.refs, store.param_views, strict=True):
        current = ref.owner.params[ref.key]
        if current is not view:
            view[...] = current
            ref.owner.params[ref.key] = view


def collect_grads(model: Any) -> None:
    """Copy fresh gradients into the gradient buffer and point ``layer.grads`` at its views."""
    store = store_of(model)
    if store is None:
        return
    for ref, view in zip(store.refs, store.grad_views, strict=True):
        grad = ref.owner.grads.get(ref.key)
        if grad is not None and grad is not view:
            view[...] = grad
            ref.owner.grads[ref.key] = view
