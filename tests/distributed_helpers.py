"""In-process stand-ins for MPI ranks (threads) and the shared pieces of the distributed tests.

:class:`ThreadCommunicator` implements :class:`xpcnn.distributed.Communicator` for ``size``
threads of one process: every collective puts each rank's contribution in a slot, waits for all,
and combines them in rank order with NumPy.  It shares no code with the MPI transport, so the
distributed logic (bucketing, synchronised batch norm, sharding) can be checked without MPI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from xpcnn.distributed import Communicator


class ThreadGroup:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size


class ThreadCommunicator(Communicator):
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size
        self.calls = 0

    def _exchange(self, value: Any) -> list[Any]:
        self.calls += 1
        self.group.slots[self.rank] = value
        self.group.barrier.wait()
        out = list(self.group.slots)
        self.group.barrier.wait()
        return out

    def _host_allreduce(self, host: np.ndarray) -> np.ndarray:
        parts = self._exchange(host.copy())
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        return total

    def _host_broadcast(self, host: np.ndarray, root: int) -> None:
        host[...] = self._exchange(host.copy())[root]

    def allgather_object(self, obj: Any) -> list[Any]:
        return self._exchange(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self._exchange(obj)[root]

    def barrier(self) -> None:
        self.group.barrier.wait()


def run_ranks(size: int, fn: Callable[[ThreadCommunicator], Any]) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` threads, one per rank; returns the results by rank (re-raises errors)."""
    group = ThreadGroup(size)
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            results[rank] = fn(ThreadCommunicator(group, rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def max_rel_err(a: Any, b: Any) -> float:
    """max |a - b| / max |b| (0 when both are all zeros)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b))) / scale if scale else float(np.max(np.abs(a - b), initial=0.0))
