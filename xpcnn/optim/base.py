"""The optimizer base class: parameters, hyper-parameters, step counting, per-parameter state.

A subclass names its update rule (a function of :mod:`xpcnn.functional.updates`, which also says
which state arrays the rule keeps) and declares each hyper-parameter once, as a :class:`Hyper`
class attribute holding its check.  Construction, assignment (``opt.lr = 0.01``), :meth:`Optimizer.hyper`
and ``load_state_dict`` all go through that one declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar, overload

import array_api_compat

from .. import backend as _backend
from .. import flat, kernels
from ..checks import integer, non_negative, positive
from ..functional.updates import SLOTS
from ..parameter import ParamRef

__all__ = ["Hyper", "Optimizer", "collect_hypers"]

T = TypeVar("T")


class Hyper(Generic[T]):
    """A hyper-parameter: a class attribute whose ``check(name, value)`` validates every assignment.

    The checked value is what the attribute holds (a Python float, or a tuple of them).
    """

    def __init__(self, check: Callable[[str, Any], T]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Hyper[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Hyper[T] | T:
        if obj is None:
            return self
        value: T = obj.__dict__[self.name]
        return value

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.name] = self.check(self.name, value)


def collect_hypers(cls: type) -> dict[str, Hyper[Any]]:
    """Every :class:`Hyper` attribute of ``cls`` by name, base classes' first (a subclass may re-declare one)."""
    fields: dict[str, Hyper[Any]] = {}
    for klass in reversed(cls.__mro__):
        fields.update({name: f for name, f in vars(klass).items() if isinstance(f, Hyper)})
    return fields


class Optimizer:
    """Base class: holds the parameters, their per-parameter state ("slots") and the hyper-parameters.

    Subclasses set ``rule`` (a key of :data:`xpcnn.functional.updates.RULES`; ``slot_names`` follows
    from it) and declare their hyper-parameters as :class:`Hyper` attributes.  :meth:`step` sends all
    parameters that have a gradient through the kernel op ``xpcnn.kernels.optimizer_update`` at once.

    Over exactly a model's parameters (``model.parameters()``) the state is laid out like the model's
    flat store (:mod:`xpcnn.flat`) and a step hands the op whole buffers, one entry per dtype;
    ``state[name][slot]`` are views of those buffers.

    ``lr`` may be changed between steps (schedules do); it must stay finite and ``>= 0``.
    """

    #: the update rule in :mod:`xpcnn.functional.updates`
    rule: ClassVar[str] = ""
    #: names of the per-parameter state arrays (from the rule)
    slot_names: ClassVar[tuple[str, ...]] = ()
    #: every :class:`Hyper` of the class, base class first (filled in by ``__init_subclass__``)
    hyper_fields: ClassVar[dict[str, Hyper[Any]]] = {}

    lr = Hyper(non_negative)
    weight_decay = Hyper(non_negative)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.rule:
            cls.slot_names = SLOTS[cls.rule]
        cls.hyper_fields = collect_hypers(cls)

    def __init__(self, params: Iterable[ParamRef], **hyper: Any) -> None:
        kind = type(self).__name__
        params = list(params)
        if not params:
            raise ValueError(f"{kind} got an empty parameter list")
        seen: set[str] = set()
        for ref in params:
            if not isinstance(ref, ParamRef):
                raise TypeError(f"{kind} expects xpcnn.parameter.ParamRef objects "
                                f"(a model's parameters()), got {type(ref).__name__}")
            if ref.name in seen:
                raise ValueError(f"duplicate parameter name {ref.name!r}: every parameter given to "
                                 f"{kind} needs a unique name")
            seen.add(ref.name)
        positive("lr", hyper["lr"])  # a new optimizer needs a positive rate; a schedule may anneal it to 0
        self._set_hyper(hyper)
        self.params: list[ParamRef] = params
        #: number of calls to :meth:`step`
        self.step_count = 0
        self._t: dict[str, int] = {ref.name: 0 for ref in params}
        self.state: dict[str, dict[str, Any]] = {}
        #: the model's flat store when ``params`` are exactly its parameters (see :mod:`xpcnn.flat`)
        self._store = flat.store_for(params)
        #: slot name -> {dtype name: flat buffer laid out like the store}; ``state`` holds views of them
        self._flat_slots: dict[str, dict[str, Any]] = {}
        self._slot_views: list[dict[str, Any]] = []
        if self._store is not None:
            self._flat_slots = {slot: self._store.like() for slot in self.slot_names}
            per_slot = {slot: self._store.views(bufs) for slot, bufs in self._flat_slots.items()}
            self._slot_views = [{slot: per_slot[slot][i] for slot in self.slot_names} for i in range(len(params))]
            for ref, views in zip(params, self._slot_views, strict=True):
                self.state[ref.name] = dict(views)
        else:
            for ref in params:
                # on the parameter's device even for cupy:N (CuPy's zeros_like uses the current GPU)
                self.state[ref.name] = {slot: _backend.zeros_like(ref.value) for slot in self.slot_names}
        # the array each parameter held after our last step: an unchanged one needs no placement check
        self._written: dict[str, Any] = {}

    # -- hyper-parameters ----------------------------------------------------------------

    def hyper(self) -> dict[str, Any]:
        """The hyper-parameters as JSON-able Python values (floats; tuples become lists)."""
        out: dict[str, Any] = {}
        for name in self.hyper_fields:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def _set_hyper(self, hyper: Mapping[str, Any]) -> None:
        """Validate all of ``hyper`` (every key of :meth:`hyper` required), then apply it; all or nothing."""
        checked = {name: field.check(name, hyper[name]) for name, field in self.hyper_fields.items()}
        self.__dict__.update(checked)

    def _rule_hyper(self) -> dict[str, Any]:
        """The keyword arguments of the update rule (the hyper-parameters by default)."""
        return {name: getattr(self, name) for name in self.hyper_fields}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"

    # -- stepping -------------------------------------------------------------------------

    def step(self) -> None:
        """Update every parameter that has a gradient (one optimisation step, one call of the kernel op).

        A parameter whose gradient is ``None`` is skipped: its state and its own step count stay as
        they are (as in PyTorch).  Raises ``ValueError``, before changing anything, when a parameter
        no longer lives where its state does (the model was moved after the optimizer was built).
        """
        if self._flat_eligible():
            self._flat_step()
            return
        live, values, grads = [], [], []
        for ref in self.params:
            grad = ref.grad
            if grad is None:
                continue
            value = ref.value
            if value is not self._written.get(ref.name):
                self._check_placement(ref, value)
            live.append(ref)
            values.append(value)
            grads.append(grad)
        self.step_count += 1
        if not live:
            return
        steps = []
        for ref in live:
            self._t[ref.name] = t = self._t[ref.name] + 1
            steps.append(t)
        new = kernels.optimizer_update(values, grads, [self.state[ref.name] for ref in live], steps, self.rule,
                                       self._rule_hyper())
        for ref, value in zip(live, new, strict=True):
            ref.assign(value)
            self._written[ref.name] = value
        if self._store is not None:
            self._repair_views()

    # -- the flat path (xpcnn.flat): one kernel-op call, one entry per dtype --------------------

    def _flat_eligible(self) -> bool:
        """Whole flat buffers can be updated: store live, views intact, every gradient in the buffer, equal steps.

        The gaps between entries are zeros in every buffer; each rule maps zero parameter, gradient and
        state to zeros, except a division by ``sqrt(0) + eps`` with ``eps == 0`` (0/0): that falls back.
        """
        store = self._store
        return store is not None and store.active and self._flat_ready(store)

    def _flat_ready(self, store: flat.FlatStore) -> bool:
        if self.slot_names and float(self.__dict__.get("eps", 1.0)) == 0.0:
            return False
        if len(set(self._t.values())) != 1 or not store.intact() or not store.grads_intact():
            return False
        return all(self.state[ref.name].get(slot) is view[slot] for ref, view in
                   zip(self.params, self._slot_views, strict=True) for slot in self.slot_names)

    def _flat_step(self) -> None:
        store = self._store
        assert store is not None
        self.step_count += 1
        t = next(iter(self._t.values())) + 1
        for name in self._t:
            self._t[name] = t
        dtypes = list(store.params)
        values = [store.params[d] for d in dtypes]
        slots = [{slot: self._flat_slots[slot][d] for slot in self.slot_names} for d in dtypes]
        new = kernels.optimizer_update(values, [store.grads[d] for d in dtypes], slots, [t] * len(dtypes),
                                       self.rule, self._rule_hyper())
        for d, value, slot_dict in zip(dtypes, new, slots, strict=True):  # a reference op returns new arrays
            if value is not store.params[d]:
                store.params[d][...] = value
            for slot, arr in slot_dict.items():
                if arr is not self._flat_slots[slot][d]:
                    self._flat_slots[slot][d][...] = arr

    def _repair_views(self) -> None:
        """After a per-parameter step on a flat model: new arrays go back into their views."""
        store = self._store
        assert store is not None
        if store.active and [r.name for r in store.refs] == [r.name for r in self.params]:
            for ref, view in zip(store.refs, store.param_views, strict=True):
                current = ref.owner.params[ref.key]
                if current is not view and tuple(current.shape) == tuple(view.shape) and \
                        _backend.backend_name(current) == store.library and current.dtype == view.dtype:
                    view[...] = current
                    ref.owner.params[ref.key] = view
                    self._written[ref.name] = view
        for ref, views in zip(self.params if self._slot_views else [], self._slot_views, strict=True):
            state = self.state[ref.name]
            for slot, view in views.items():
                if state[slot] is not view and _same_placement(state[slot], view):
                    view[...] = state[slot]
                    state[slot] = view

    def _check_placement(self, ref: ParamRef, value: Any) -> None:
        """The parameter must match its state arrays in library, device and dtype."""
        slots = self.state[ref.name]
        if not slots:  # nothing is kept for this parameter, so it may live anywhere
            return
        slot_name, slot = next(iter(slots.items()))
        got_dev, want_dev = array_api_compat.device(value), array_api_compat.device(slot)
        got_xp, want_xp = array_api_compat.array_namespace(value), array_api_compat.array_namespace(slot)
        if got_xp is want_xp and got_dev == want_dev and value.dtype == slot.dtype:
            return
        kind = type(self).__name__
        got = f"{_backend.backend_name(value)} (device {got_dev}, {_backend.dtype_name(value.dtype)})"
        want = f"{_backend.backend_name(slot)} (device {want_dev}, {_backend.dtype_name(slot.dtype)})"
        raise ValueError(
            f"{kind}: parameter {ref.name!r} is now {got}, but its optimizer state {slot_name!r} is {want}: the "
            f"model was moved or cast after the optimizer was built. Build the optimizer after model.to(...): "
            f"{kind}(model.parameters(), ...); to keep this one's progress, load its state_dict() into the new one")

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, checkpointable without pickle.

        ``{"type": "Adam", "hyper": {...}, "step": int, "param_steps": {name: int},
        "slots": {"<param name>/<slot name>": array}}``.  Everything but the
        slot arrays is JSON-able; the arrays are the optimizer's own (not
        copies) and stay on the backend.  ``param_steps`` counts the updates
        each parameter received (it differs from ``step`` only for parameters
        whose gradient was sometimes ``None``); it may be omitted on load.
        """
        slots = {f"{name}/{slot}": arr for name, state in self.state.items() for slot, arr in state.items()}
        return {
            "type": type(self).__name__,
            "hyper": self.hyper(),
            "step": self.step_count,
            "param_steps": dict(self._t),
            "slots": slots,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: hyper-parameters, step counts and slots.

        Everything is validated before anything changes: the optimizer type,
        the hyper-parameters, that the slot names are exactly this
        optimizer's ``"<param name>/<slot name>"`` keys and that each array's
        shape and dtype match its parameter.  Slot arrays may come from any
        backend (NumPy from a checkpoint, say); they are copied onto the
        parameters' backend and device.  Raises ``ValueError`` on any mismatch.
        """
        kind = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{kind}.load_state_dict expects a dict, got {type(state_dict).__name__}")
        missing_keys = [k for k in ("type", "hyper", "step", "slots") if k not in state_dict]
        if missing_keys:
            raise ValueError(f"{kind} state_dict is missing the key(s) {missing_keys}")
        if state_dict["type"] != kind:
            raise ValueError(f"optimizer state is for {state_dict['type']!r}, but this optimizer is {kind!r}")

        hyper = state_dict["hyper"]
        expected_hyper = set(self.hyper_fields)
        if not isinstance(hyper, Mapping) or set(hyper) != expected_hyper:
            got = sorted(hyper) if isinstance(hyper, Mapping) else type(hyper).__name__
            raise ValueError(f"{kind} state_dict 'hyper' must have the keys {sorted(expected_hyper)}, got {got}")
        step = integer("step", state_dict["step"], minimum=0)
        param_steps = self._param_steps(state_dict.get("param_steps"), step)
        new_state = self._slots_from(state_dict["slots"])
        try:  # validates every value before applying any
            self._set_hyper(hyper)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{kind} state_dict has invalid hyper-parameters: {exc}") from exc

        self.step_count = step
        self._t = param_steps
        for ref, views in zip(self.params if self._slot_views else [], self._slot_views, strict=True):
            for slot, view in views.items():
                if _same_placement(new_state[ref.name][slot], view):
                    view[...] = new_state[ref.name][slot]
                    new_state[ref.name][slot] = view
        self.state = new_state
        self._written = {}

    def _param_steps(self, param_steps_in: Any, step: int) -> dict[str, int]:
        names = [ref.name for ref in self.params]
        if param_steps_in is None:
            return {name: step for name in names}
        if not isinstance(param_steps_in, Mapping) or set(param_steps_in) != set(names):
            got = sorted(param_steps_in) if isinstance(param_steps_in, Mapping) else param_steps_in
            raise ValueError(f"{type(self).__name__} state_dict 'param_steps' must name exactly the parameters "
                             f"{sorted(names)}, got {got}")
        return {name: integer(f"param_steps[{name!r}]", param_steps_in[name], minimum=0) for name in names}

    def _slots_from(self, slots_in: Any) -> dict[str, dict[str, Any]]:
        """Saved slot arrays (any backend), checked and copied onto their parameters' backend and device."""
        kind = type(self).__name__
        if not isinstance(slots_in, Mapping):
            raise ValueError(f"{kind} state_dict 'slots' must be a dict, got {type(slots_in).__name__}")
        expected = {f"{ref.name}/{slot}": ref for ref in self.params for slot in self.slot_names}
        unknown = sorted(set(slots_in) - set(expected))
        if unknown:
            raise ValueError(f"{kind} state_dict has slot(s) {unknown} that match no parameter/slot of this "
                             f"optimizer; expected exactly {sorted(expected)}")
        missing = sorted(set(expected) - set(slots_in))
        if missing:
            raise ValueError(f"{kind} state_dict is missing the slot(s) {missing}; expected exactly {sorted(expected)}")

        new_state: dict[str, dict[str, Any]] = {ref.name: {} for ref in self.params}
        for key, ref in expected.items():
            value = ref.value
            host = _backend.to_numpy(slots_in[key])
            want_shape, want_dtype = tuple(value.shape), _backend.dtype_name(value.dtype)
            got_shape, got_dtype = tuple(host.shape), host.dtype.name
            if got_shape != want_shape or got_dtype != want_dtype:
                raise ValueError(f"{kind} state slot {key!r}: expected shape {want_shape} and dtype {want_dtype} "
                                 f"(like parameter {ref.name!r}), got shape {got_shape} and dtype {got_dtype}")
            xp = array_api_compat.array_namespace(value)
            moved = xp.asarray(host, dtype=value.dtype, device=array_api_compat.device(value), copy=True)
            new_state[ref.name][key.rsplit("/", 1)[1]] = moved
        return new_state


Optimizer.hyper_fields = collect_hypers(Optimizer)


def _same_placement(a: Any, b: Any) -> bool:
    """Same library, device, dtype and shape: ``b[...] = a`` is a plain copy."""
    return (type(a) is type(b) and a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
            and array_api_compat.device(a) == array_api_compat.device(b))
