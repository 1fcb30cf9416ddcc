"""An NCCL communicator for CuPy arrays (``cupyx.distributed``), one GPU per rank.

UNTESTED: only one GPU is ever lent to this project and NCCL refuses two ranks on one device, so
this path has run on no multi-GPU machine yet.  It shares everything with
:class:`~xpcnn.distributed.comm.MPICommunicator` but the transport of CuPy arrays: objects,
barriers and aborts still go over MPI (the processes are started by ``mpiexec``), and host arrays
fall back to MPI as well.  Each rank selects the GPU of its node-local rank before NCCL starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .comm import MPICommunicator
from .launcher import local_rank

__all__ = ["NCCLCommunicator"]


class NCCLCommunicator(MPICommunicator):
    """MPICommunicator whose ``allreduce``/``broadcast`` of CuPy arrays run over NCCL (untested, see module)."""

    def __init__(self, comm: Any = None, device: int | None = None) -> None:
        super().__init__(comm)
        import cupy
        import cupyx.distributed

        self.cupy = cupy
        n_devices = cupy.cuda.runtime.getDeviceCount()
        self.device = local_rank() % n_devices if device is None else int(device)
        cupy.cuda.Device(self.device).use()
        # use_mpi=True: the rendezvous (NCCL unique id) goes over MPI instead of a TCP store
        self.nccl = cupyx.distributed.init_process_group(self.size, self.rank, backend="nccl", use_mpi=True)

    def allreduce(self, array: Any) -> Any:
        if not isinstance(array, self.cupy.ndarray):
            return super().allreduce(array)
        src = self.cupy.ascontiguousarray(array)
        out = self.cupy.empty_like(src)
        self.nccl.all_reduce(src, out, op="sum")
        return out

    def broadcast(self, array: Any, root: int = 0) -> Any:
        if not isinstance(array, self.cupy.ndarray):
            return super().broadcast(array, root)
        out = self.cupy.array(array, copy=True, order="C")
        self.nccl.broadcast(out, root)
        return out

    def allreduce_floats(self, values: list[float]) -> list[float]:
        return [float(v) for v in self._host_allreduce(np.asarray(values, dtype=np.float64))]

    def __repr__(self) -> str:
        return f"NCCLCommunicator(rank={self.rank}, size={self.size}, device={self.device})"
