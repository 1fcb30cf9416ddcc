"""Process-wide settings for a benchmark run, each applied by an explicit call (nothing on import).

Idle thread pools must not spin.  Interleaving OpenBLAS (NumPy) and OpenMP (torch) in one process on a
small, shared machine is badly hurt by their spin-waiting: an idle pool's threads keep burning the cores
the other library needs (measured here, 2 busy cores: a LeNet-5 step 145-185 ms for xpcnn and 255-280 ms
for torch with the defaults, 38-69 ms and 24-39 ms without spinning).  Both libraries read their settings
once, when they load, so :func:`relaunch_with_thread_env` re-executes the script with
``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` in its environment unless they are already
set (``XPCNN_BENCH_THREAD_ENV=0`` leaves the environment alone, and never relaunches).

glibc malloc is tuned as ``xpcnn train`` tunes it (:func:`xpcnn.perf.tune_malloc`; ``XPCNN_BENCH_MALLOC=0``
turns it off); it applies to the whole process, so torch gets it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["THREAD_ENV", "limit_threads", "relaunch_with_thread_env", "thread_env_applied", "tune_malloc"]

#: read by OpenBLAS (NumPy) and libgomp (torch) when they load; see the module docstring
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
SWITCH = "XPCNN_BENCH_THREAD_ENV"


def thread_env_applied() -> bool:
    """Whether this process runs with every :data:`THREAD_ENV` variable set (by us or by the caller)."""
    return all(key in os.environ for key in THREAD_ENV)


def relaunch_with_thread_env(argv: Sequence[str] | None = None) -> None:
    """Re-execute this script with :data:`THREAD_ENV` added to its environment, unless already there.

    Call it first thing under ``if __name__ == "__main__":``.  It returns normally (and changes nothing)
    when the variables are set already or ``XPCNN_BENCH_THREAD_ENV=0``; otherwise it does not return.
    ``argv`` defaults to ``sys.argv``.
    """
    if os.environ.get(SWITCH, "1") == "0" or thread_env_applied():
        return
    env = {**os.environ, **{k: v for k, v in THREAD_ENV.items() if k not in os.environ}}
    args = [sys.executable, *(sys.argv if argv is None else argv)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def tune_malloc() -> dict[str, int] | None:
    """:func:`xpcnn.perf.tune_malloc` unless ``XPCNN_BENCH_MALLOC=0``; returns the settings applied (or None)."""
    if os.environ.get("XPCNN_BENCH_MALLOC", "1") == "0":
        return None
    from xpcnn.perf import tune_malloc as tune

    return tune()


def limit_threads(n: int) -> Any:
    """Limit NumPy's BLAS (threadpoolctl) and torch to ``n`` threads; keep the returned handle alive."""
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=n, user_api="blas")
    if "torch" in sys.modules or _has_torch():
        import torch

        torch.set_num_threads(n)
    return limits


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
