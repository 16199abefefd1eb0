"""The command lines: ``cocoi`` (:mod:`.commands`) and the MPI job ``python -m
cocoi_mpi.run`` (:mod:`.run`). ``main`` is the ``cocoi`` entry point (setup.cfg)."""

from .commands import main

__all__ = ["main"]
