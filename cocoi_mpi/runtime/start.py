"""MPI_Init, guarded: the one place the job's entry point starts MPI (cocoi_mpi.cli.run
imports no mpi4py itself, so only runtime/ does)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys

from .memory import keep_freed_memory


def init_world():
    """Import mpi4py (which runs MPI_Init) under the start-up watchdog; COMM_WORLD.
    Before that, malloc is told to keep freed memory (``memory.keep_freed_memory``)."""
    keep_freed_memory()
    with start_up_watchdog():
        from mpi4py import MPI  # MPI_Init

    return MPI.COMM_WORLD


INIT_TIMEOUT_S = 300.0  # $COCOI_INIT_TIMEOUT_S; 0 turns the watchdog off


@contextlib.contextmanager
def start_up_watchdog():
    """MPI_Init must not hang for ever. Under ``--with-ft ulfm`` a rank that dies
    before joining Open MPI's start-up fence (killed, or a wrapper that exits) leaves
    every other rank waiting in it; without ULFM mpirun ends such a job. MPI_Init holds
    the GIL, so no Python thread can act: faulthandler's C watchdog dumps where each
    thread is (the import of mpi4py) and exits with status 1 after the timeout, far
    above any start-up seen here (seconds, on a loaded machine)."""
    timeout = float(os.environ.get("COCOI_INIT_TIMEOUT_S", INIT_TIMEOUT_S))
    stream = real_stderr()
    if stream is None:  # nowhere to say why (e.g. run in-process by a test runner)
        timeout = 0
    if timeout > 0:
        stream.flush()
        faulthandler.dump_traceback_later(timeout, exit=True, file=stream)
    try:
        yield
    finally:
        if timeout > 0:
            faulthandler.cancel_dump_traceback_later()


def real_stderr():
    """The process's own stderr, if it has a file descriptor (faulthandler needs one;
    click's test runner swaps sys.stderr for a buffer without)."""
    stream = sys.__stderr__
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return stream
