"""The master's MPI traffic, apart from what a round means: buffers, sends and their
reaping, the polling wait over this round's receives, the late pool and the workers'
error channels, and the deaths that ULFM and the liveness channel report.

:class:`Transport` is one part of :class:`~cocoi_mpi.runtime.master.MasterEngine`
(the round logic lives there, the end of the run in :mod:`.ending`). It works on
state the engine's ``__init__`` creates: ``comm``, ``workers``, ``dead``, ``exited``,
``link``, ``errors``, ``sends``, ``lent``, ``inputs``, ``replies``, ``abandoned``,
``late``, ``resolved``, ``stopping``, ``later_errors``, ``worker_sends``.

The wait polls Testsome with a back-off sleep of at most 1 ms rather than blocking in
Waitsome, for three reasons: a blocking MPI call cannot be interrupted by SIGTERM or
by the round's deadline, Open MPI's Waitsome spins a core that co-located workers
need, and under ULFM a worker's death completes its requests with
MPI_ERR_PROC_FAILED, which the poll turns into a dead worker.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from ..errors import RunError, Stopped
from .liveness import Exit, Listener
from .protocol import CTRL, ERROR, ERROR_BYTES, FAILED, SENDS, TRAILER, decode_error
from .ulfm import (
    NO_ULFM,
    POLL_MAX_SLEEP,
    PROC_FAILED_CODE,
    cancel,
    cancelled_or_done,
    failed_ranks,
    peer_may_die,
    test_requests,
)


class WorkerError(RunError, RuntimeError):
    """A worker reported an exception; the message's first line says which and what,
    the lines after it hold the worker's stack, indented (protocol.error_report)."""


class Interrupted(Stopped, RuntimeError):
    """SIGTERM or SIGINT arrived: the run stops at the next safe point."""


@dataclass(eq=False)
class Pending:
    """A posted receive and everything needed to record it when it completes."""

    index: int  # subtask index (code row block)
    rank: int  # the worker computing it
    request: MPI.Request
    buffer: np.ndarray
    shape: tuple[int, ...]
    row: dict  # its subtask trace row, completed on arrival
    late: bool = False  # still open when its round decoded
    timed_out: bool = False  # missed the round's deadline (it may still reply)
    done: bool = False  # its receive completed (a reply, a notice, or the worker's death)


class BufferPool:
    """Buffers that live as long as the run, handed out by (shape, dtype).

    A buffer comes back once nothing MPI still uses points into it (its sends done,
    its receive completed and decoded); a round that finds none free gets a new one,
    so a slow send never makes the master wait for its buffer."""

    def __init__(self) -> None:
        self.free: dict[tuple, list] = defaultdict(list)
        self.made = 0

    def take(self, shape: tuple[int, ...], dtype, make: Callable):
        key = (tuple(shape), str(dtype))
        if self.free[key]:
            return self.free[key].pop()
        self.made += 1
        return make(shape, dtype)

    def give(self, buffer) -> None:
        self.free[(tuple(buffer.shape), str(buffer.dtype))].append(buffer)


@dataclass(eq=False)
class ErrorChannel:
    """The receive a worker's exception report lands in (one per worker)."""

    rank: int
    request: MPI.Request
    buffer: bytearray


class Transport:
    """The master's sends, receives and peer deaths (a part of MasterEngine)."""

    def alloc(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A subtask-input buffer from the pool (see reap_sends for its return)."""
        return self.inputs.take(shape, dtype, lambda sh, dt: torch.empty(sh, dtype=dt))

    def reply_buffer(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        size = int(np.prod(shape)) + len(TRAILER)
        return self.replies.take((size,), np.dtype(dtype), lambda sh, dt: np.empty(sh, dt))

    def post_error_channel(self, rank: int) -> ErrorChannel:
        buf = bytearray(ERROR_BYTES)
        return ErrorChannel(rank, self.comm.Irecv(buf, source=rank, tag=ERROR), buf)

    def live_workers(self) -> list[int]:
        return [r for r in self.workers if r not in self.dead]

    def wait_some(self, waiting: list[Pending], deadline: float | None) -> list[Pending] | None:
        """Poll the error channels, this round and the late pool until something
        completes; returns this round's finished receives, or None at the deadline."""
        pause = 1e-5
        while True:
            mine = self.test_some(waiting)
            if mine is not None:
                return mine
            if (signame := self.interrupted()) is not None:
                raise Interrupted(f"stopped by {signame}")
            if deadline is not None and self.now() >= deadline:
                return None
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX_SLEEP)

    def test_some(self, waiting: list[Pending]) -> list[Pending] | None:
        """One Testsome; None if nothing completed. Late replies are recorded, this
        round's are returned, a worker's error report raises WorkerError."""
        self.notice_exits()
        channels = list(self.errors.values())
        pool = waiting + self.late
        items = channels + pool
        completed = test_requests([item.request for item in items], expect=source_of(items))
        if self.exited:
            completed += self.give_up_on_exited(items, {idx for idx, _, _ in completed})
        if not completed:
            return None
        t = self.now()
        mine, report = [], None
        for idx, status, error in completed:
            item = items[idx]
            if error is None and status.Get_count(MPI.BYTE) == 0:
                error = self.empty_completion(item.rank)
            if isinstance(item, ErrorChannel):
                report = report or self.on_error_channel(item, status, error)
                continue
            finish_row(item, status, t, error)
            if error is not None:
                self.mark_dead(item.rank)
            if item.late:
                self.late.remove(item)
                self.resolved.append(mark_late(item.row))
                self.replies.give(item.buffer)
            else:
                mine.append(item)
        if report is not None:  # only after every completed request is recorded
            if self.stopping:  # the run already ended (maybe for this very error)
                self.later_errors.append(report)
            else:
                raise WorkerError(report)
        return mine

    def liveness_meta(self) -> dict:
        """Which workers the liveness channel watched (the trace's reliability)."""
        if self.link is None:
            return dict(on=False)
        return dict(on=True, watched=sorted(self.link.peers), missing=self.link.missing)

    def notice_exits(self) -> None:
        """Workers the liveness channel saw end since the last look: dead."""
        if self.link is None:
            return
        for event in self.link.take_exits():
            self.exited.add(event.rank)
            self.mark_dead(event.rank, seen_by=f"liveness channel ({event.how})")

    def give_up_on_exited(self, items: list, done: set[int]) -> list[tuple]:
        """Completions for the open receives from exited workers. MPI may never end
        them (ULFM is not told of an exit with a non-zero status), so each is
        cancelled; one whose reply came in the meantime completes as that reply."""
        out = []
        for idx, item in enumerate(items):
            if idx in done or item.rank not in self.exited or not item.request:
                continue
            status = MPI.Status()
            if cancelled_or_done(item.request, status):
                failed = status.Is_cancelled() or status.Get_error() != MPI.SUCCESS
                out.append((idx, status, PROC_FAILED_CODE if failed else None))
            else:  # matched but never finished: its sender is gone
                self.abandoned.append((item.request, getattr(item, "buffer", None)))
                item.request = MPI.REQUEST_NULL
                out.append((idx, status, PROC_FAILED_CODE))
        return out

    def empty_completion(self, rank: int) -> int:
        """No message of ours is empty: a request that completed with nothing in it
        was failed by ULFM without an error code in its status (Open MPI does this
        for some requests). The failed group says so; the rank is dead either way."""
        for dead in failed_ranks(self.comm) | {rank}:
            self.mark_dead(dead)
        return getattr(MPI, "ERR_PROC_FAILED", -1)

    def on_error_channel(self, channel: ErrorChannel, status: MPI.Status, error) -> str | None:
        """A worker's error report (its text), or its death (None: handled as dead)."""
        self.errors.pop(channel.rank, None)
        if error is not None:
            self.mark_dead(channel.rank)
            return None
        self.errors[channel.rank] = self.post_error_channel(channel.rank)  # it may report again
        return decode_error(channel.buffer, status.Get_count(MPI.BYTE))

    def mark_dead(self, rank: int, seen_by: str = "ulfm") -> None:
        """ULFM (or the liveness channel) told us ``rank`` failed: acknowledge it and
        never send to it again."""
        if rank in self.dead:
            return
        self.dead[rank] = dict(
            rank=rank,
            request=self.request,
            round=self.round,
            t=self.now(),
            wall=time.time(),
            seen_by=seen_by,
        )
        with contextlib.suppress(*NO_ULFM):  # without ULFM there is nothing to acknowledge
            self.comm.Ack_failed()
        channel = self.errors.pop(rank, None)
        if channel is not None and channel.request:
            cancel(channel.request)

    def post_control(self, message: object, rank: int) -> None:
        """A control message; a worker that died meanwhile is marked dead, not an error."""
        with peer_may_die(lambda: self.mark_dead(rank)):
            self.sends.append((self.comm.isend(message, dest=rank, tag=CTRL), None, rank))

    def reap_sends(self) -> None:
        """Forget sends that completed (or whose peer died); their buffers can go.

        A send to a worker the liveness channel saw exit may never complete (MPI was
        not told): it is dropped, its buffer kept alive but never reused."""
        kept = []
        for req, buf, rank in self.sends:
            if rank in self.exited:
                self.abandoned.append((req, buf))
                continue
            with peer_may_die():  # a send to a dead peer is over, not kept
                if not req.Test():
                    kept.append((req, buf, rank))
        self.sends = kept
        still = []
        for buffer, requests in self.lent:
            if any(requests):  # a request is falsy once completed (MPI_REQUEST_NULL)
                still.append((buffer, requests))
            else:
                self.inputs.give(buffer)
        self.lent = still

    def take_resolved(self) -> list[dict]:
        rows, self.resolved = self.resolved, []
        return rows

    def poll_late(self) -> None:
        """Record late replies that came in since the last wait, and take the workers'
        batches of send durations (between requests)."""
        if self.late:
            self.test_some([])
        self.subtasks.extend(self.take_resolved())
        self.receive_sends()

    def receive_sends(self) -> None:
        """The send durations live workers shipped (protocol.SENDS), kept for the
        trace (take_sends) as (round, worker, seconds)."""
        for rank in self.live_workers():
            with peer_may_die(lambda rank=rank: self.mark_dead(rank)):
                while self.comm.Iprobe(source=rank, tag=SENDS):
                    batch = self.comm.recv(source=rank, tag=SENDS)
                    self.worker_sends.extend((r, rank, s) for r, _row, s in batch)

    def take_sends(self) -> list[tuple[int, int, float]]:
        out, self.worker_sends = self.worker_sends, []
        return out


def open_listener() -> Listener | None:
    """The liveness channel's listening socket; None (ULFM alone) if this host cannot
    open one, which is said once on stderr."""
    try:
        return Listener()
    except OSError as exc:
        print(f"cocoi: warning: no liveness channel ({exc}); deaths by ULFM alone", file=sys.stderr)
        return None


def exit_during_setup(event: Exit) -> None:
    """A worker ended while the weights were being broadcast: every rank sits in a
    collective that may never return, so the job ends here, saying why (called from
    the liveness thread; mpi4py runs MPI with MPI_THREAD_MULTIPLE)."""
    sys.stderr.write(
        f"cocoi: error: worker rank {event.rank} ended during set-up, before every worker "
        f"had its layers ({event.how}); nothing was served; ending the job\n"
    )
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)


def source_of(items: list) -> list[int]:
    return [item.rank for item in items]


def mark_late(row: dict) -> dict:
    """A reply that came after its round decoded: 'late', unless the worker skipped
    it, failed, died, or missed the round's deadline (those statuses stay)."""
    if row["status"] == "replied":
        row["status"] = "late"
    return row


def elements_received(status: MPI.Status, buffer: np.ndarray) -> int:
    """How many elements of ``buffer``'s type a completed receive delivered.

    Counted in bytes against the predefined ``MPI.BYTE``: ``mpi4py.util.dtlib.
    from_numpy_dtype`` returns a *duplicated* datatype that the caller must free, and
    ``Get_elements`` then caches a type map on it. Called once per reply and never
    freed, that was the master's whole native growth, about 10 KB per request
    (heaptrack, docs/reliability.md)."""
    return status.Get_count(MPI.BYTE) // buffer.itemsize


def finish_row(p: Pending, status: MPI.Status, t: float, error: int | None = None) -> None:
    """Fill a subtask row from its reply: arrival, worker durations, or its notice.
    ``error``: the request failed because the worker died (ULFM)."""
    p.done = True
    if error is not None:
        p.row["status"] = "dead"
        return
    count = elements_received(status, p.buffer)
    p.row["arrival_t"] = t
    keep = p.row.get("status") == "timeout"
    if count == len(TRAILER):
        code = float(p.buffer[0])
        if not keep:
            p.row["status"] = "failed" if code == FAILED else "skipped"
        return
    recv_s, queue_s, compute_s, delay_s, rss_mb = (
        float(v) for v in p.buffer[count - len(TRAILER) : count]
    )
    p.row.update(
        status="timeout" if keep else "replied",
        worker_recv_s=recv_s,
        worker_queue_s=queue_s,
        worker_compute_s=compute_s,
        worker_slept_s=delay_s,
        worker_rss_mb=rss_mb,
    )
