"""Flat parameter and gradient stores: one contiguous buffer per dtype, every layer array a view into it.

Every :class:`~xpcnn.model.Sequential` gets a store when it is built (:func:`attach`): its parameters
move into one 1-D buffer per dtype and each ``layer.params[key]`` becomes a view of its slice;
gradients get a second buffer with the same layout, which ``layer.grads[key]`` views after each
backward pass.  A multi-tensor optimizer update, a CUDA kernel or an MPI Allreduce can then touch all
parameters (or gradients) of a dtype in one call.  ``detach(model)`` opts out (per-array storage).

Who owns the store
------------------
Only the outermost model.  A Sequential or Residual adopted by another composite drops its store
(:func:`disown`, called by ``Composite._adopt``) and the outer model lays the same parameters out in
its own: two stores over the same parameters would each re-point the layers at their views and
silently detach the other's.  The store is made at construction (not at the first forward) because
the optimizer is usually built right after the model and before any forward: it finds the store with
:func:`store_for` and lays its state out flat from the start.  A deep copy of a model gets a new store.

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
  receive buffer) are made with :meth:`FlatStore.like`; :meth:`FlatStore.views` cuts them per entry.

The optimizer on a store
------------------------
An optimizer whose parameter list is exactly a store's (same layers and keys, same order; a subset
or another order is not) allocates each state slot as one buffer per dtype (``store.like()``) and
keeps per-parameter views of them in ``optimizer.state[name][slot]``, so ``state_dict()`` keeps its
per-parameter format and ``load_state_dict()`` copies into the views.  A step is then ONE call of the
kernel op ``optimizer_update`` with one entry per dtype: the whole parameter, gradient and slot
buffers (the Numba kernel updates each in one pass, in place; the CUDA set adopts them as a group;
the reference returns new arrays, copied back into the buffers).  The gaps stay zero for every
rule: each maps zero parameter, gradient and state to zero, except ``0 / (sqrt(0) + eps)`` with
``eps == 0``, which takes the per-parameter path.  That path is also taken, parameter by parameter
as before, whenever the whole-buffer step would be wrong: a parameter without a gradient (skipped,
as in PyTorch), a gradient that is not its view of the gradient buffer, unequal step counts, a
replaced parameter or slot, a store no longer active; what it replaces is copied back into the views.

Keeping the views intact
------------------------
Anything that *replaces* a layer's array instead of writing into it -- the reference optimizer update
on the per-parameter path, ``load_state_dict``, ``to(...)``, a user's assignment -- is repaired by
:func:`sync`, which the model calls at the start of ``forward`` and at the end of ``load_state_dict``
and ``to``: a replaced parameter's values are copied into its view and the view is put back (so
nothing is silently detached); a moved or recast model gets a new store on its new backend (the old
one is deactivated, and an optimizer built before the move refuses to step, as it always did).
:func:`collect_grads` (called at the end of ``backward``) copies fresh gradients into the gradient
buffer and points ``layer.grads`` at the views; kernels that write gradients straight into the views
(the CUDA set, via :func:`live_stores`) and the MPI Allreduce (via :func:`grad_view`) cost nothing here.

Namespaces whose slices are not writable views (``array_api_strict``) keep per-array storage:
:func:`attach` returns None there and the model runs as before.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import array_api_compat

from . import backend as B

__all__ = ["ALIGN", "Entry", "FlatStore", "attach", "collect_grads", "detach", "disown", "grad_view", "live_stores",
           "store_for",
           "store_of", "sync"]

#: offsets are multiples of this many elements
ALIGN = 16
_LINK = "_flat_store_link"
_LIVE: weakref.WeakSet[FlatStore] = weakref.WeakSet()
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
        #: False once the model dropped this store (detach, a rebuild after ``to``): optimizers stop using it
        self.active = True
        _LIVE.add(self)
        for ref in self.refs:
            ref.owner.__dict__[_LINK] = self  # leaf -> store, so an optimizer finds it (see store_for)

    def __deepcopy__(self, memo: dict[int, Any]) -> FlatStore:
        """An empty, inactive store: a deep copy's arrays are no views of one buffer any more.

        The copied model rebuilds its own store (``Sequential.__deepcopy__``, or the next :func:`sync`).
        """
        stale = FlatStore.__new__(FlatStore)
        stale.__dict__.update(xp=self.xp, device=self.device, library=self.library, refs=[], entries=[], params={},
                              grads={}, param_views=[], grad_views=[], active=False)
        return stale

    def _deactivate(self) -> None:
        self.active = False
        _LIVE.discard(self)
        for ref in self.refs:
            if ref.owner.__dict__.get(_LINK) is self:
                del ref.owner.__dict__[_LINK]

    def intact(self) -> bool:
        """Every parameter is its view of the parameter buffer (nothing replaced it since the last sync)."""
        return all(r.owner.params.get(r.key) is v for r, v in zip(self.refs, self.param_views, strict=True))

    def grads_intact(self) -> bool:
        """Every parameter has a gradient, and it is its view of the gradient buffer."""
        return all(r.owner.grads.get(r.key) is v for r, v in zip(self.refs, self.grad_views, strict=True))

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


def live_stores() -> list[FlatStore]:
    """Every active store (a kernel set that writes gradients looks a parameter view up in them)."""
    return [s for s in list(_LIVE) if s.active]


def store_for(refs: list[Any]) -> FlatStore | None:
    """The active store whose parameters are exactly ``refs`` (same layers and keys, same order), else None.

    This is how an optimizer decides to lay its state out flat: ``Adam(model.parameters())`` matches the
    model's store; a subset or a reordering of the parameters does not.
    """
    if not refs:
        return None
    store = getattr(refs[0].owner, "__dict__", {}).get(_LINK)
    if store is None or not store.active or len(store.refs) != len(refs):
        return None
    if not all(a.owner is b.owner and a.key == b.key for a, b in zip(refs, store.refs, strict=True)):
        return None
    # arrays replaced behind the store's back (moved to another library, say) and not yet synced
    return store if store.intact() or store.compatible(refs) else None


def grad_view(ref: Any) -> Any:
    """The gradient-buffer view of parameter ``ref`` when its store is active, else None.

    Code that computes a gradient elsewhere (the MPI Allreduce) writes into it to keep the views intact.
    """
    store = getattr(ref.owner, "__dict__", {}).get(_LINK)
    if store is None or not store.active:
        return None
    for r, view in zip(store.refs, store.grad_views, strict=True):
        if r.owner is ref.owner and r.key == ref.key:
            return view
    return None


def attach(model: Any) -> FlatStore | None:
    """Give ``model`` flat parameter and gradient stores; None (nothing changes) where views are unavailable.

    >>> import numpy as np, xpcnn
    >>> model = xpcnn.models.lenet5(rng=0)
    >>> store = attach(model)
    >>> np.shares_memory(model[0].params["W"], store.params["float32"])
    True
    """
    old = store_of(model)
    if old is not None:
        old._deactivate()
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
        store._deactivate()
        for ref in store.refs:
            ref.owner.params[ref.key] = store.xp.asarray(ref.value, copy=True)


def disown(model: Any) -> None:
    """``model`` became part of another composite: drop its store (the outermost model owns the one store).

    Unlike :func:`detach` this only undoes what the default did: the outer model lays the same
    parameters out in its own store right after.
    """
    if model.__dict__.get("_flat_wanted") or store_of(model) is not None:
        detach(model)


def sync(model: Any) -> None:
    """Put replaced parameters back into their views (copying their values); rebuild after a move or recast."""
    if not model.__dict__.get("_flat_wanted"):
        return
    store = store_of(model)
    refs = model.parameters()
    if store is not None and not store.active:  # a deep copy's placeholder
        attach(model)
        return
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
