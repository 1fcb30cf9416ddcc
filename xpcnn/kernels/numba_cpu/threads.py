"""Worker threads for the CPU kernels: blocks of work spread over Python threads running ``nogil`` kernels.

The number of workers is the BLAS thread limit in force (``threadpoolctl.threadpool_limits(1)`` makes the
kernels single-threaded too); while the workers run, BLAS is held at one thread so the two levels of
threading do not fight.  Work is split into *blocks* whose results never depend on which thread ran
them: per-block partial sums are stored per block and added in block order afterwards, so 1 and 2
threads give bitwise the same result.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl is a dependency of the fast path
    ThreadpoolController = None

__all__ = ["blas_single_thread", "run_blocks", "run_shares", "using_workers", "workers"]

_FORCED: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _blas_controllers() -> list[Any]:
    if ThreadpoolController is None:
        return []
    try:
        return [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    except Exception:  # pragma: no cover - a BLAS threadpoolctl cannot talk to
        return []


_BLAS = _blas_controllers()


@contextlib.contextmanager
def using_workers(n: int) -> Iterator[int]:
    """Use exactly ``n`` worker threads inside the block, whatever the BLAS limit (tests compare 1 and 2)."""
    global _FORCED
    before, _FORCED = _FORCED, max(1, int(n))
    try:
        yield _FORCED
    finally:
        _FORCED = before


def workers() -> int:
    """How many threads the kernels use now: the BLAS thread limit, or :func:`using_workers`'s count."""
    if _FORCED is not None:
        return _FORCED
    return max(1, max((c.num_threads for c in _BLAS), default=1))


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Hold BLAS at one thread (our own threads supply the parallelism), restoring the limit afterwards."""
    before = [c.num_threads for c in _BLAS]
    if all(n == 1 for n in before):
        yield
        return
    for c in _BLAS:
        c.set_num_threads(1)
    try:
        yield
    finally:
        for c, n in zip(_BLAS, before, strict=True):
            c.set_num_threads(n)


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:  # grows only
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="xpcnn-cpu")
        return _pool


def run_blocks(task: Callable[[int], Any], n_blocks: int, n_workers: int | None = None) -> None:
    """Call ``task(i)`` for every block ``i`` in ``range(n_blocks)``, spread over the worker threads.

    Blocks are pulled in order from a shared counter (the calling thread works too); ``task`` must write
    only block ``i``'s own outputs.  Exceptions propagate to the caller.
    """
    n = workers() if n_workers is None else n_workers
    n = min(n, n_blocks)
    if n <= 1:
        for i in range(n_blocks):
            task(i)
        return
    counter = itertools.count()

    def loop() -> None:
        while True:
            i = next(counter)  # atomic under the GIL
            if i >= n_blocks:
                return
            task(i)

    futures = [_executor(n - 1).submit(loop) for _ in range(n - 1)]
    try:
        loop()
    finally:
        for f in futures:
            f.result()


def run_shares(share: Callable[[int, int], Any], n_blocks: int, n_workers: int | None = None) -> None:
    """Call ``share(first, step)`` once per worker thread: worker ``t`` of ``n`` runs blocks ``t, t + n, ...``.

    One call per thread (the calling thread is worker 0), so a compiled ``nogil`` share takes the GIL
    once; the fixed assignment keeps every block's result independent of timing.  Exceptions propagate.
    """
    n = workers() if n_workers is None else n_workers
    n = max(1, min(n, n_blocks))
    if n == 1:
        share(0, 1)
        return
    futures = [_executor(n - 1).submit(share, t, n) for t in range(1, n)]
    try:
        share(0, n)
    finally:
        for f in futures:
            f.result()
