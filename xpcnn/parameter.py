"""A named handle on one trainable array, shared by models and optimizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class HasParams(Protocol):
    """Anything with matching ``params`` and ``grads`` dicts (every xpcnn layer)."""

    params: dict[str, Any]
    grads: dict[str, Any]


@dataclass(frozen=True)
class ParamRef:
    """A reference to ``owner.params[key]`` and its gradient ``owner.grads[key]``.

    ``name`` is unique within a model (``"0.W"``, ``"3.gamma"``) and keys the
    optimizer's per-parameter state.  Optimizers write new values with
    :meth:`assign`, so backends without in-place updates work too.
    """

    name: str
    owner: HasParams
    key: str

    @property
    def value(self) -> Any:
        return self.owner.params[self.key]

    @property
    def grad(self) -> Any:
        return self.owner.grads.get(self.key)

    def assign(self, new_value: Any) -> None:
        old = self.owner.params[self.key]
        if tuple(new_value.shape) != tuple(old.shape) or new_value.dtype != old.dtype:
            raise ValueError(f"parameter {self.name}: expected shape {tuple(old.shape)} and dtype {old.dtype}, "
                             f"got shape {tuple(new_value.shape)} and dtype {new_value.dtype}")
        self.owner.params[self.key] = new_value
