"""Communicators: the collective operations data-parallel training needs, over mpi4py.

A :class:`Communicator` sums arrays over all ranks (``allreduce``), copies rank ``root``'s array to
every rank (``broadcast``) and exchanges small Python objects (``allgather_object``, ``bcast_object``).
Array operations never write into their input: they return a new array on the input's backend,
device and dtype (an in-place Allreduce of a gradient that another array aliases would count it twice).

:class:`MPICommunicator` moves host arrays (NumPy; torch CPU and array-api-strict arrays through a
NumPy copy).  :class:`~xpcnn.distributed.nccl.NCCLCommunicator` shares everything with it but the
transport of CuPy arrays.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .. import backend as B

__all__ = ["Communicator", "MPICommunicator", "MissingMPIError", "import_mpi"]


class MissingMPIError(ImportError):
    """mpi4py (the ``mpi`` extra) is needed but cannot be imported; the message says how to install it."""


def import_mpi(reason: str = "") -> Any:
    """``mpi4py.MPI``, or :class:`MissingMPIError` with the install command (``pip install 'xpcnn[mpi]'``)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        why = f"{reason}, but " if reason else ""
        raise MissingMPIError(f"{why}mpi4py is not installed (or has no MPI library): install the extra with "
                          f"pip install 'xpcnn[mpi]' (mpi4py + the mpich wheel); import error: {exc}") from None
    return MPI


class Communicator:
    """The collective operations of one group of ``size`` processes; this one is ``rank``.

    Subclasses implement the ``_host_*`` primitives on contiguous NumPy arrays and the object
    operations; the public array methods accept any backend's array.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    # -- arrays ----------------------------------------------------------------------------------
    def allreduce(self, array: Any) -> Any:
        """The elementwise sum of ``array`` over all ranks, as a new array like ``array`` (any shape)."""
        host = np.ascontiguousarray(B.to_numpy(array))
        out = self._host_allreduce(host)
        return out if isinstance(array, np.ndarray) else B.to_device_like(out, array)

    def broadcast(self, array: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``array`` on every rank, as a new array like the local ``array``.

        Every rank passes an array of the same shape and dtype.
        """
        host = np.array(B.to_numpy(array), copy=True, order="C")
        self._host_broadcast(host, root)
        return host if isinstance(array, np.ndarray) else B.to_device_like(host, array)

    def _host_allreduce(self, host: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _host_broadcast(self, host: np.ndarray, root: int) -> None:
        raise NotImplementedError

    # -- objects ---------------------------------------------------------------------------------
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small), indexed by rank."""
        raise NotImplementedError

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` on every rank."""
        raise NotImplementedError

    def allreduce_floats(self, values: list[float]) -> list[float]:
        """Sums of a few Python numbers over all ranks (float64)."""
        return [float(v) for v in self._host_allreduce(np.asarray(values, dtype=np.float64))]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the group now (MPI_Abort); does not return."""
        raise SystemExit(code)


class MPICommunicator(Communicator):
    """A communicator over an mpi4py intracommunicator (default ``MPI.COMM_WORLD``) for host arrays."""

    def __init__(self, comm: Any = None) -> None:
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())

    def _host_allreduce(self, host: np.ndarray) -> np.ndarray:
        out = np.empty_like(host)
        self.comm.Allreduce(host, out, op=self.MPI.SUM)
        return out

    def _host_broadcast(self, host: np.ndarray, root: int) -> None:
        self.comm.Bcast(host, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self.comm.allgather(obj))

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)  # MPI_Abort may return on this rank before the launcher ends it: run nothing more

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"
