"""Worker threads for the CPU kernels: blocks of work spread over Python threads running ``nogil`` kernels.

How many: :func:`workers` -- ``using_workers(n)`` inside its block, else the count set with
:func:`set_workers` or ``$XPCNN_NUM_THREADS``, else NumPy's BLAS thread limit as the kernels first found it
(``threadpoolctl.threadpool_limits(1)`` around the first op, ``OMP_NUM_THREADS=1``, ... make them
single-threaded).

BLAS is held at one thread from the first kernel call on (:func:`hold_blas`; :func:`release_blas` gives
the limit back), because our own threads supply the parallelism and OpenBLAS's threads get in their way:
after each multi-threaded call, and each time its thread limit is raised again, OpenBLAS's worker threads
spin for a while (``OPENBLAS_THREAD_TIMEOUT``, about 0.1 s by default) on the core the next op's second
worker needs.  Measured on 2 cores: restoring the BLAS limit after every op made a ResNet-8 training step
take 210 ms instead of 130 ms.

Work is split into *blocks* whose results never depend on which thread ran them: per-block partial
sums are stored per block and added in block order afterwards, so 1 and 2 threads give bitwise the
same result.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl is a dependency of the fast path
    ThreadpoolController = None

__all__ = ["hold_blas", "release_blas", "run_blocks", "run_shares", "set_workers",
           "using_workers", "workers"]

_FORCED: int | None = None
_CONFIGURED: int | None = None
#: BLAS controllers' thread limits before hold_blas lowered them (by id of the controller)
_HELD: dict[int, int] = {}
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


def set_workers(n: int | None) -> None:
    """Use ``n`` worker threads from now on (None: back to ``$XPCNN_NUM_THREADS`` or the BLAS limit)."""
    global _CONFIGURED
    _CONFIGURED = None if n is None else max(1, int(n))


def _initial_count() -> int:
    env = os.environ.get("XPCNN_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"XPCNN_NUM_THREADS must be a positive integer, got {env!r}") from None
    return max(1, max((c.num_threads for c in _BLAS), default=1))


def workers() -> int:
    """How many threads the kernels use now (see the module docstring for the order of precedence)."""
    global _CONFIGURED
    if _FORCED is not None:
        return _FORCED
    if _CONFIGURED is None:
        _CONFIGURED = _initial_count()
    return _CONFIGURED


def hold_blas() -> None:
    """Set NumPy's BLAS to one thread (the first time, after fixing the worker count the limit implied)."""
    workers()
    for c in _BLAS:
        n = c.num_threads
        if n != 1:
            _HELD.setdefault(id(c), n)
            c.set_num_threads(1)


def release_blas() -> None:
    """Give BLAS back the thread limits :func:`hold_blas` lowered (for NumPy-heavy code outside xpcnn)."""
    for c in _BLAS:
        n = _HELD.pop(id(c), None)
        if n is not None:
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
