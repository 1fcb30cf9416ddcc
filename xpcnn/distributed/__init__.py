"""Data-parallel training: ``mpiexec -n N xpcnn train ...`` (or a script calling ``fit``) on N processes.

The same command or script becomes data-parallel when it runs under an MPI launcher with more than
one rank (recognised from environment variables, :mod:`~xpcnn.distributed.launcher`); nothing else
changes.  ``batch_size`` stays the *global* batch; each rank takes a disjoint shard of it, batch norm
uses global-batch statistics, dropout and augmentation are drawn for the global batch, and the
gradients are summed with a bucketed flat-buffer Allreduce, so N ranks train the same model as one
process (to rounding).  Rank 0 alone prints and writes files.  Install: ``pip install 'xpcnn[mpi]'``.

Modules: ``launcher`` (environment detection), ``comm`` (mpi4py communicator), ``nccl`` (CuPy/NCCL
communicator, untested), ``buckets`` (gradient Allreduce), ``syncbn``, ``sharding``, ``context``
(:class:`DataParallel`, the hooks :func:`xpcnn.train.fit` calls).

From a script, nothing is needed beyond running it under ``mpiexec``; :func:`init` starts it
explicitly (for example over a sub-communicator) and :func:`current` is what ``fit`` consults.
"""

from __future__ import annotations

import sys
from typing import Any

from .comm import Communicator, MissingMPIError, MPICommunicator, import_mpi
from .context import CollectiveError, DataParallel, describe, fingerprint
from .launcher import Launch, detect
from .sharding import ShardedBatchIterator, ShardedGenerator, shard_bounds

__all__ = ["CollectiveError", "Communicator", "DataParallel", "Launch", "MPICommunicator", "MissingMPIError",
           "ShardedBatchIterator", "ShardedGenerator", "active", "current", "describe", "detect", "fingerprint",
           "import_mpi", "init", "is_root", "shard_bounds", "shutdown"]

_context: DataParallel | None = None
_started = False


def init(comm: Any = None, bucket_bytes: int | None = None) -> DataParallel | None:
    """Start data parallelism over ``comm`` (a :class:`Communicator`, an mpi4py communicator, or None for
    ``MPI.COMM_WORLD``); returns the :class:`DataParallel`, or None when the group has one rank.

    Also makes an uncaught exception on any rank abort all ranks with a message (instead of leaving
    the others waiting in a collective forever).
    """
    global _context, _started
    communicator = comm if isinstance(comm, Communicator) else MPICommunicator(comm)
    _started = True
    if communicator.size == 1:
        _context = None
        return None
    kwargs = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    _context = DataParallel(communicator, **kwargs)
    _install_abort_hook(_context)
    return _context


def current() -> DataParallel | None:
    """The active :class:`DataParallel`, starting it on first use when launched with more than one rank.

    Raises :class:`MissingMPIError` (an ImportError naming the launcher and ``pip install 'xpcnn[mpi]'``)
    when an MPI launcher started several ranks but mpi4py cannot be imported, so the ranks never train
    independently.
    """
    global _started
    if _started:
        return _context
    launch = detect()
    if launch is None or launch.size == 1:
        _started = True
        return None
    import_mpi(f"this process is rank {launch.rank} of {launch.size} started by {launch.launcher}")
    dp = init()
    if dp is None or dp.size != launch.size:
        raise RuntimeError(f"{launch.launcher} started {launch.size} ranks, but MPI.COMM_WORLD has "
                           f"{1 if dp is None else dp.size}: mpi4py is built against a different MPI than the "
                           f"launcher (use the mpiexec of the MPI mpi4py was built with)")
    return dp


def active() -> DataParallel | None:
    """The :class:`DataParallel` already started (by :func:`init` or :func:`current`), without starting one."""
    return _context


def is_root() -> bool:
    """True unless this process is a data-parallel rank other than 0 (only rank 0 prints and writes files)."""
    dp = current()
    return dp is None or dp.is_root


def shutdown() -> None:
    """Forget the active context (tests; a later :func:`current` detects the launch again)."""
    global _context, _started
    _context, _started = None, False


def _install_abort_hook(dp: DataParallel) -> None:
    previous = sys.excepthook

    def hook(etype: Any, value: Any, tb: Any) -> None:
        if isinstance(value, CollectiveError):  # every rank raised it: a normal exit, no abort
            previous(etype, value, tb)
            return
        dp.fail(value)

    sys.excepthook = hook
