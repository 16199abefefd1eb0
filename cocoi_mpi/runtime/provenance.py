"""Where and with what a run happened: the versions (``cocoi info`` prints them too),
the hosts, the git commit, the command line and the Slurm job, stored as the trace's
root attributes.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from mpi4py import MPI

from .. import __version__
from .ulfm import ulfm_enabled

# Where a Slurm job ran, when it did: enough to find its log and accounting record.
SLURM_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_CLUSTER_NAME",
)


def provenance(comm: MPI.Comm, hosts: list[str]) -> dict:
    """Versions and where the run happened, stored as root attributes."""
    return dict(
        versions=versions(),
        hostnames=hosts,
        world_size=MPI.COMM_WORLD.Get_size(),
        git_commit=git_commit(),
        command=" ".join(sys.argv),
        slurm={key: os.environ[key] for key in SLURM_KEYS if key in os.environ},
    )


def versions() -> dict:
    return dict(
        cocoi_mpi=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        mpi4py=__import__("mpi4py").__version__,
        mpi_library=MPI.Get_library_version().splitlines()[0].strip(),
        h5py=h5py.__version__,
        hdf5=h5py.version.hdf5_version,
        ulfm=ulfm_support(),
    )


def ulfm_support() -> str:
    """Can this MPI survive a worker's death? Open MPI says so in ompi_info."""
    if ulfm_enabled():
        return "enabled (mpirun --with-ft ulfm)"
    if not MPI.Get_library_version().startswith("Open MPI"):
        return "unknown (not Open MPI; see docs/reliability.md)"
    tool = shutil.which("ompi_info") or str(Path(sys.executable).with_name("ompi_info"))
    try:
        out = subprocess.run([tool], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (ompi_info did not run)"
    line = next((ln for ln in out.splitlines() if "FT MPI support" in ln), "")
    if line.strip().endswith("yes"):
        return "available, off (start with mpirun --with-ft ulfm)"
    return "not available (Open MPI built without --with-ft)"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
