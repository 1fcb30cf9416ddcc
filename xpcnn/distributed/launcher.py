"""Recognise an MPI launcher from its environment variables, without importing mpi4py.

``mpiexec -n 2 xpcnn train`` starts two processes that each see the launcher's variables; reading
them first lets a process that would run data-parallel fail with a clear message when mpi4py is
missing, instead of running two independent trainings into one run directory.

>>> detect({"PMI_RANK": "1", "PMI_SIZE": "3"})
Launch(rank=1, size=3, launcher='MPICH/Hydra or Intel MPI (PMI_RANK, PMI_SIZE)')
>>> detect({}) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LAUNCHERS", "Launch", "detect", "local_rank"]

#: (description, rank variable, size variable), in the order they are tried.
LAUNCHERS: tuple[tuple[str, str, str], ...] = (
    ("Open MPI (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE)", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("MPICH/Hydra or Intel MPI (PMI_RANK, PMI_SIZE)", "PMI_RANK", "PMI_SIZE"),
    ("MVAPICH2 (MV2_COMM_WORLD_RANK, MV2_COMM_WORLD_SIZE)", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
    # Slurm sets SLURM_PROCID/SLURM_NTASKS in a batch script too; SLURM_STEP_NUM_TASKS only inside `srun`.
    ("Slurm srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS)", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
)

#: Per-node rank variables (to choose a GPU), tried in order.
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: ``rank`` in ``[0, size)`` and the launcher that said so."""

    rank: int
    size: int
    launcher: str


def detect(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, or None when no known launcher variables are set.

    Raises ValueError when the variables are present but malformed (not integers, rank outside [0, size)).
    """
    env = os.environ if environ is None else environ
    for name, rank_var, size_var in LAUNCHERS:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
            except ValueError:
                raise ValueError(f"{name}: expected integers, got {rank_var}={env[rank_var]!r} "
                                 f"and {size_var}={env[size_var]!r}") from None
            if size < 1 or not 0 <= rank < size:
                raise ValueError(f"{name}: expected 0 <= rank < size, got {rank_var}={rank} and {size_var}={size}")
            return Launch(rank, size, name)
    return None


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank on its node (0 when the launcher does not say): the GPU it should use."""
    env = os.environ if environ is None else environ
    for var in LOCAL_RANK_VARS:
        if var in env:
            try:
                return int(env[var])
            except ValueError:
                continue
    return 0
