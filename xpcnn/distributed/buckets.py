"""Gradient averaging over ranks: one Allreduce per flat bucket of gradients (ChainerMN, DDP, Horovod style).

Gradients of the same dtype and namespace are copied, in parameter order, into flat buffers of at
most ``bucket_bytes`` (a single gradient larger than that gets its own bucket); each buffer is summed
over ranks with one Allreduce, and every gradient is replaced by its slice of the *reduced* buffer.

The buffers are always fresh copies and the reduced slices are new arrays: a gradient array that is
aliased elsewhere (a view another layer or the batch-norm backward still holds, the same array
under two names) is read exactly once per name and never written, so nothing is counted twice.
The loss gradient is scaled by each rank's share of the global batch before backward
(:meth:`~xpcnn.distributed.context.DataParallel.scale_loss_grad`), so a plain sum is the mean gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .. import flat as _flat
from ..parameter import ParamRef
from .comm import Communicator

__all__ = ["DEFAULT_BUCKET_BYTES", "Bucket", "allreduce_gradients", "plan_buckets"]

#: PyTorch DDP's default bucket size.
DEFAULT_BUCKET_BYTES = 25 * 2**20


@dataclass
class Bucket:
    """Parameters whose gradients travel together: their indices into the parameter list and sizes."""

    indices: list[int]
    sizes: list[int]
    nbytes: int


def plan_buckets(grads: Sequence[Any], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[Bucket]:
    """Group gradient arrays (in order) into buckets of one namespace and dtype, at most ``bucket_bytes`` each."""
    buckets: list[Bucket] = []
    open_by_kind: dict[tuple[str, str], Bucket] = {}
    for i, g in enumerate(grads):
        size = int(array_api_compat.size(g))
        nbytes = size * _itemsize(g)
        kind = (type(g).__module__ + "." + type(g).__name__, str(g.dtype))
        bucket = open_by_kind.get(kind)
        if bucket is None or bucket.nbytes + nbytes > bucket_bytes:
            bucket = Bucket([], [], 0)
            buckets.append(bucket)
            open_by_kind[kind] = bucket
        bucket.indices.append(i)
        bucket.sizes.append(size)
        bucket.nbytes += nbytes
    return buckets


def _itemsize(a: Any) -> int:
    bits = {"float16": 16, "float32": 32, "float64": 64}
    name = str(a.dtype).rsplit(".", 1)[-1]
    return bits.get(name, 64) // 8


def allreduce_gradients(params: Sequence[ParamRef], comm: Communicator,
                        bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> dict[str, float]:
    """Sum every parameter's gradient over the ranks of ``comm``; each ``owner.grads[key]`` gets a new array.

    A gradient that is its view of a flat gradient buffer (:mod:`xpcnn.flat`) is written in place
    instead, so the optimizer's one-call update still applies.  Parameters without a gradient (None)
    are skipped; every rank must have gradients for the same parameters.  Returns ``{"buckets": n, "bytes": total}``.
    """
    live = [ref for ref in params if ref.grad is not None]
    grads = [ref.grad for ref in live]
    total = 0
    buckets = plan_buckets(grads, bucket_bytes)
    for bucket in buckets:
        members = [grads[i] for i in bucket.indices]
        xp = array_api_compat.array_namespace(*members)
        flat = xp.concat([xp.reshape(g, (-1,)) for g in members]) if len(members) > 1 else \
            xp.reshape(xp.asarray(members[0], copy=True), (-1,))
        reduced = comm.allreduce(flat)
        offset = 0
        for i, size in zip(bucket.indices, bucket.sizes, strict=True):
            ref = live[i]
            summed = xp.reshape(reduced[offset:offset + size], tuple(grads[i].shape))
            view = _flat.grad_view(ref)
            if view is not None and grads[i] is view:  # a flat gradient buffer (xpcnn.flat) keeps its views
                view[...] = summed
            else:
                ref.owner.grads[ref.key] = summed
            offset += size
        total += bucket.nbytes
    return {"buckets": float(len(buckets)), "bytes": float(total)}

