"""The data-parallel state of one process: its communicator, the current shard and the hooks fit uses.

:func:`xpcnn.train.fit` asks :func:`xpcnn.distributed.current` for a :class:`DataParallel` and, when
there is one (more than one rank), builds a :class:`~xpcnn.distributed.sharding.ShardedBatchIterator`,
checks at the start that every rank runs the same configuration and data (:meth:`check_same`),
broadcasts the weights from rank 0, installs synchronised batch norm and global-batch dropout for
the run (:meth:`attach`), scales the loss gradient by the rank's share of the batch, sums the
gradients before each optimizer step (:meth:`reduce_gradients`) and reduces the epoch's tallies.
Only rank 0 prints and writes files.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import array_api_compat
import numpy as np

from .. import backend as B
from ..layers.dropout import Dropout
from ..layers.norm import _BatchNorm
from .buckets import DEFAULT_BUCKET_BYTES, allreduce_gradients
from .comm import Communicator
from .sharding import Shard, ShardedBatchIterator, ShardedGenerator, shard_bounds
from .syncbn import SyncBatchNorm

__all__ = ["CollectiveError", "DataParallel", "describe", "fingerprint"]


class CollectiveError(ValueError):
    """An error every rank detects together (so every rank raises it; nothing needs aborting)."""


def fingerprint(value: Any) -> str:
    """A short hash of arrays (their dtype, shape and bytes) or JSON-able data, for comparing ranks."""
    h = hashlib.blake2b(digest_size=12)
    _feed(h, value)
    return h.hexdigest()


def describe(obj: Any) -> Any:
    """A rank-independent description of a configuration object (its ``state_dict()`` when it has one,
    else its repr without memory addresses), for :meth:`DataParallel.check_same`."""
    if obj is None:
        return None
    if hasattr(obj, "state_dict"):
        return [type(obj).__name__, obj.state_dict()]
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for item in value:
            _feed(h, item)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        host = np.ascontiguousarray(B.to_numpy(value))
        h.update(f"{host.dtype.str}{host.shape}".encode())
        h.update(host.data.cast("B"))
    else:
        h.update(json.dumps(value, sort_keys=True, default=repr).encode())


def _walk(layer: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """The leaf layers of a model (``named_leaves()`` of a composite), else every layer reachable through
    attributes holding layers or lists of them."""
    leaves = getattr(layer, "named_leaves", None)
    if callable(leaves):
        yield from (leaf for _, leaf in leaves())
        return
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for value in vars(layer).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if hasattr(item, "forward") and hasattr(item, "backward") and hasattr(item, "params"):
                yield from _walk(item, seen)


class DataParallel:
    """Data-parallel training over ``comm`` (host arrays) and, for CuPy arrays, an NCCL communicator.

    ``bucket_bytes``: the largest flat gradient buffer one Allreduce carries.
    ``timings`` accumulates seconds spent in gradient Allreduce (``"allreduce_s"``) and steps reduced.
    """

    def __init__(self, comm: Communicator, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.comm = comm
        self.bucket_bytes = int(bucket_bytes)
        self.loader: ShardedBatchIterator | None = None
        self._device_comm: Communicator | None = None
        self.timings = {"allreduce_s": 0.0, "steps": 0.0}

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def comm_for(self, array: Any) -> Communicator:
        """The communicator that moves ``array``: NCCL for CuPy arrays (untested), else the host one."""
        if array_api_compat.is_cupy_array(array):
            if self._device_comm is None:
                from .nccl import NCCLCommunicator

                self._device_comm = NCCLCommunicator(getattr(self.comm, "comm", None))
            return self._device_comm
        return self.comm

    # -- data ------------------------------------------------------------------------------------
    def make_loader(self, x: Any, y: Any, batch_size: int, **kwargs: Any) -> ShardedBatchIterator:
        """The training loader: global batches of ``batch_size``, this rank's rows (see ShardedBatchIterator)."""
        self.loader = ShardedBatchIterator(x, y, batch_size, rank=self.rank, size=self.size, **kwargs)
        return self.loader

    @property
    def shard(self) -> Shard:
        """The rows of the global batch this rank holds in the current step."""
        return self.loader.shard if self.loader is not None else Shard()

    def eval_rows(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part ``[start, stop)`` of an evaluation set of ``n`` samples."""
        return shard_bounds(n, self.rank, self.size)

    def evaluate(self, x: Any, y: Any, run: Any) -> tuple[dict[str, float], np.ndarray]:
        """Sharded evaluation: ``run((x_part, y_part)) -> (metrics, predictions)`` on this rank's rows; returns
        the metrics over all of ``x: (N, ...)`` (sample-weighted sums over ranks) and all N predictions."""
        n = int(x.shape[0])
        start, stop = self.eval_rows(n)
        rows = stop - start
        metrics, predictions = run((x[start:stop], y[start:stop])) if rows else \
            ({"loss": 0.0, "accuracy": 0.0}, np.zeros(0, np.int64))
        loss_sum, correct = self.sum([metrics["loss"] * rows, round(metrics["accuracy"] * rows)])
        parts = self.comm.allgather_object(np.asarray(predictions))
        return {"loss": loss_sum / n, "accuracy": correct / n}, np.concatenate(parts).astype(np.int64)

    def reduce_tally(self, tally: Any) -> None:
        """Replace an epoch's :class:`xpcnn.train.Tally` sums (loss, correct, seen) by their sums over ranks."""
        loss_sum = 0.0 if tally.loss_sum is None else float(B.to_numpy(tally.loss_sum))
        correct = 0 if tally.correct is None else int(B.to_numpy(tally.correct))
        total, hits, seen = self.sum([loss_sum, correct, tally.seen])
        tally.loss_sum, tally.correct, tally.seen = np.asarray(total), np.asarray(int(hits)), int(seen)

    # -- consistency -----------------------------------------------------------------------------
    def check_same(self, items: dict[str, Any]) -> None:
        """Raise :class:`CollectiveError` on every rank unless all ranks pass equal ``items`` (compared by hash)."""
        mine = {key: fingerprint(value) for key, value in items.items()}
        everyone = self.comm.allgather_object(mine)
        problems = []
        for rank, theirs in enumerate(everyone):
            differing = sorted(k for k in set(mine) | set(theirs) if theirs.get(k) != everyone[0].get(k))
            if differing:
                problems.append(f"rank {rank} differs from rank 0 in {', '.join(differing)}")
        if problems:
            raise CollectiveError("data-parallel ranks do not run the same training: " + "; ".join(problems)
                                  + ". Every rank must run the same command on the same data and configuration")

    def broadcast_state(self, model: Any) -> None:
        """Copy rank 0's parameters and buffers (running statistics) to every rank."""
        for ref in model.parameters():
            ref.assign(self.comm_for(ref.value).broadcast(ref.value, 0))
        for layer in _walk(model):
            buffers = getattr(layer, "buffers", None)
            if isinstance(buffers, dict):  # a leaf's own store (a composite's is a read-only view)
                for key, value in buffers.items():
                    buffers[key] = self.comm_for(value).broadcast(value, 0)

    def common_seed(self, seed: int | None) -> int:
        """``seed``, or (None) a random seed drawn on rank 0 and sent to all: every rank must draw alike."""
        if seed is None:
            seed = int(np.random.default_rng().integers(2**62)) if self.is_root else 0
        return int(self.comm.bcast_object(seed, 0))

    def start(self, model: Any, items: dict[str, Any]) -> None:
        """Before the first step: check every rank runs ``items`` (configuration, data, RNG states, optimizer
        state) alike (:meth:`check_same`), then broadcast the weights from rank 0."""
        self.check_same(items)
        self.broadcast_state(model)

    def check_replicas(self, model: Any) -> None:
        """Raise :class:`CollectiveError` when the ranks' weights are not bit-for-bit identical."""
        try:
            self.check_same({"weights": dict(model.state_dict())})
        except CollectiveError as exc:
            raise CollectiveError(f"the ranks' weights diverged ({exc})") from None

    # -- the step --------------------------------------------------------------------------------
    @contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        """While active: batch-norm layers use global-batch statistics, dropout draws global-batch masks."""
        undo: list[tuple[Any, str, Any]] = []
        for layer in _walk(model):
            if isinstance(layer, _BatchNorm):
                ref = next(iter(layer.params.values()))
                undo.append((layer, "sync", layer.sync))
                layer.sync = SyncBatchNorm(self.comm_for(ref), global_rows=self._global_rows)
            elif isinstance(layer, Dropout):
                bank = getattr(layer, "masks", None)
                if bank is not None and hasattr(bank, "shard"):  # an epoch's masks: global rows, ours sliced
                    undo.append((bank, "shard", bank.shard))
                    bank.shard = lambda: self.shard
                if layer.rng is not None:
                    own = layer.rng
                    undo.append((layer, "rng", own))
                    layer.rng = cast(Any, ShardedGenerator(lambda own=own: own, lambda: self.shard))
                else:
                    shared = layer.shared_rng
                    undo.append((layer, "shared_rng", shared))
                    layer.shared_rng = ShardedGenerator(lambda shared=shared: shared or B.host_rng(),
                                                        lambda: self.shard)
        try:
            yield
        finally:
            for layer, name, value in reversed(undo):
                setattr(layer, name, value)

    def _global_rows(self, n: int) -> int:
        s = self.shard
        return s.total if s.total and s.rows == n else int(self.comm.allreduce_floats([float(n)])[0])

    def scale_loss_grad(self, dout: Any) -> Any:
        """``dout`` of this rank's mean loss times ``rows / total``: its part of the global mean's gradient."""
        s = self.shard
        return dout * (s.rows / s.total)

    def reduce_gradients(self, params: Any) -> None:
        """Sum the (already scaled) gradients over the ranks: bucketed flat-buffer Allreduce."""
        params = list(params)
        if not params:
            return
        start = time.perf_counter()
        allreduce_gradients(params, self.comm_for(params[0].value), self.bucket_bytes)
        self.timings["allreduce_s"] += time.perf_counter() - start
        self.timings["steps"] += 1

    def sum(self, values: list[float]) -> list[float]:
        """Sums of Python numbers over the ranks (epoch tallies: loss * samples, correct, samples)."""
        return self.comm.allreduce_floats(values)

    # -- failure ---------------------------------------------------------------------------------
    def fail(self, exc: BaseException, code: int = 1, show_traceback: bool = True) -> None:
        """Report ``exc`` from this rank (with its traceback unless told not to) and abort every rank with
        exit status ``code`` (MPI_Abort); never returns."""
        if show_traceback:
            sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        sys.stderr.write(f"xpcnn: rank {self.rank} of {self.size} failed ({type(exc).__name__}: {exc}); "
                         f"aborting all ranks (MPI_Abort); checkpoints already written are complete\n")
        # The launcher forwards our stderr asynchronously and drops what it has not read once MPI_Abort
        # tears the job down (mpich's hydra lost the whole message in ~1 of 8 piped runs): flush, then give
        # it a moment.
        sys.stderr.flush()
        time.sleep(0.5)
        self.comm.abort(code)

    def __repr__(self) -> str:
        return f"DataParallel({self.comm!r}, bucket_bytes={self.bucket_bytes})"
