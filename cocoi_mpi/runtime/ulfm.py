"""What ULFM (``mpirun --with-ft ulfm``) says about dead peers, for the master's and
the workers' MPI calls: is it on, which ranks failed, was this error a peer's death,
and a Testsome, a cancel and a context manager that survive one.

Under ULFM a dead peer completes or fails requests with MPI_ERR_PROC_FAILED (or
_PENDING, or REVOKED) instead of ending the job; every call that talks to a worker
must tell that from a real error. Without ULFM none of this ever triggers.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from mpi4py import MPI

# Under ULFM a dead peer completes requests with one of these (names exist in mpi4py 4).
PROC_FAILED = {
    getattr(MPI, name)
    for name in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
    if hasattr(MPI, name)
}
PROC_FAILED_CODE = getattr(MPI, "ERR_PROC_FAILED", -1)  # what a liveness-seen death looks like
POLL_MAX_SLEEP = 1e-3
CANCEL_GRACE_S = 1.0  # a cancelled receive from an exited worker gets this long to end
# What Get_failed/Ack_failed raise on an MPI or mpi4py without ULFM's MPIX calls.
NO_ULFM = (MPI.Exception, NotImplementedError, AttributeError)


def ulfm_enabled() -> bool:
    """Did mpirun start us with --with-ft ulfm (Open MPI's fault-tolerance switch)?"""
    return os.environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes")


def failed_ranks(comm: MPI.Comm) -> set[int]:
    """Ranks of ``comm`` that ULFM reports failed (empty without ULFM)."""
    try:
        group = comm.Get_failed()
    except NO_ULFM:
        return set()
    try:
        world = comm.Get_group()
        ranks = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world)
        world.Free()
    finally:
        group.Free()
    return {r for r in ranks if r != MPI.UNDEFINED}


def is_proc_failure(exc: MPI.Exception) -> bool:
    return exc.Get_error_class() in PROC_FAILED


@contextlib.contextmanager
def peer_may_die(on_death: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Around an MPI call to one peer: if the peer turns out dead (ULFM), call
    ``on_death`` (usually: mark it dead) and go on; any other MPI error propagates.
    The block stops at the failed call, so what follows it in the block is skipped."""
    try:
        yield
    except MPI.Exception as exc:
        if not is_proc_failure(exc):
            raise
        on_death()


def test_requests(requests: list[MPI.Request], expect: list[int | None]) -> list[tuple]:
    """Testsome that survives dead peers: [(index, status, error class or None)].

    Under ULFM, Testsome raises MPI_ERR_IN_STATUS when a peer died; the requests it
    completed are those now null, and its statuses are theirs in completion order.
    Statuses are matched to requests by source (``expect``: each request's peer),
    which needs no assumption about that order within different peers."""
    statuses = [MPI.Status() for _ in requests]
    try:
        done = MPI.Request.Testsome(requests, statuses) or []
    except MPI.Exception as exc:
        if exc.Get_error_class() != MPI.ERR_IN_STATUS and not is_proc_failure(exc):
            raise
        return sort_out_failures(requests, statuses, expect)
    return [(idx, statuses[j], failure_in(statuses[j])) for j, idx in enumerate(done)]


def failure_in(status: MPI.Status) -> int | None:
    """A request can complete with its peer's death in its status even when Testsome
    itself returns success (Open MPI's ULFM does this for some requests)."""
    error = status.Get_error()
    if error == MPI.SUCCESS:
        return None
    return error if MPI.Get_error_class(error) in PROC_FAILED else None


def sort_out_failures(requests, statuses, expect) -> list[tuple]:
    """Attribute the statuses of a failed Testsome to the requests it completed."""
    completed = [i for i, req in enumerate(requests) if not req]
    used = statuses[: len(completed)]
    out, left = [], list(completed)
    for status in used:  # successes carry their source; failures may not
        if status.Get_error() == MPI.SUCCESS:
            idx = next((i for i in left if expect[i] == status.Get_source()), left[0])
            left.remove(idx)
            out.append((idx, status, None))
    failures = [s for s in used if s.Get_error() != MPI.SUCCESS]
    for idx, status in zip(left, failures, strict=False):
        out.append((idx, status, status.Get_error()))
    return sorted(out, key=lambda t: t[0])


def cancelled_or_done(request: MPI.Request, status: MPI.Status) -> bool:
    """Cancel a receive and wait for it to end, but not forever: one already matched
    to a message from a peer that then died may never end (False)."""
    try:
        request.Cancel()
        deadline = time.monotonic() + CANCEL_GRACE_S
        while not request.Test(status):
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_MAX_SLEEP)
    except MPI.Exception as exc:
        if not is_proc_failure(exc):
            raise
        status.Set_error(exc.Get_error_code())
    return True


def cancel(request: MPI.Request) -> None:
    """Cancel a posted receive and wait for it; a dead peer's request just goes."""
    with peer_may_die():
        if request:
            request.Cancel()
            request.Wait()
