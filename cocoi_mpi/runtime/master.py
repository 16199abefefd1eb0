"""The master's MPI side: ship coded subtasks, collect k-of-n, drain late replies.

Each round posts one Isend per subtask and one Irecv per expected reply, computes the
remainder columns while workers run, then waits with MPI.Request.Testsome over the
round's receives, the receives still open from earlier rounds (late replies) and the
per-worker error channels, until the code can decode. Receives left open move to the
late pool; their workers are told the round is done. Buffers live as long as their
requests.

The wait polls Testsome with a back-off sleep of at most 1 ms rather than blocking in
Waitsome, for three reasons: a blocking MPI call cannot be interrupted by SIGTERM or
by the round's deadline, Open MPI's Waitsome spins a core that co-located workers
need, and under ULFM (``mpirun --with-ft ulfm``) a worker's death completes its
requests with MPI_ERR_PROC_FAILED, which the poll turns into a dead worker: its
subtasks count as failed, the code decodes from the others (or re-sends, for uncoded
and replication) and it is never sent to again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from ..codes import Scheme
from ..engine.core import Engine, Execution, RoundShortfall, layer_id
from ..errors import RunError, Stopped
from ..experiment.scenarios import Crash, FaultModel, Scenario
from ..geometry.blocks import BlockSpec
from ..geometry.conv import ConvSpec, Prepared
from ..geometry.units import masks_for, reply_shape, rest_output
from .liveness import Exit, Listener, MasterLink
from .protocol import (
    CTRL,
    ERROR,
    ERROR_BYTES,
    FAILED,
    FAREWELL,
    LOG,
    SENDS,
    TRAILER,
    Done,
    LayerMeta,
    Stop,
    Task,
    data_tag,
    decode_error,
)


class WorkerError(RunError, RuntimeError):
    """A worker reported an exception; the message's first line says which and what,
    the lines after it hold the worker's stack, indented (protocol.error_report)."""


class ShutdownTimeout(RunError, RuntimeError):
    """Workers did not close their open replies in time at the end of the run."""


class Interrupted(Stopped, RuntimeError):
    """SIGTERM or SIGINT arrived: the run stops at the next safe point."""


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


@dataclass
class Round:
    """One coded round in flight on the master."""

    round_id: int
    spec: ConvSpec | BlockSpec
    prep: Prepared
    code: Scheme
    out_shape: tuple[int, ...]
    pending: list[Pending] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    ranks: dict[int, int] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)  # subtasks that failed
    down: set[int] = field(default_factory=set)  # ranks that failed in this round
    issued: int = 0  # subtasks created so far (streaming schemes add more)
    fault_key: int = 0  # (request, step) key of the injected faults
    sent: list = field(default_factory=list)  # this round's payload send requests

    @property
    def tag(self) -> int:
        return data_tag(self.round_id)

    def open(self) -> list[Pending]:
        return [p for p in self.pending if not p.done]

    def waiting(self) -> list[Pending]:
        """Open receives that can still help this round (not past its deadline)."""
        return [p for p in self.open() if not p.timed_out]

    def busy(self, rank: int) -> int:
        return sum(p.rank == rank for p in self.open())


class MasterEngine(Engine):
    """Engine whose subtasks run on worker ranks ``workers`` of ``comm``."""

    def __init__(
        self,
        comm: MPI.Comm,
        workers: Sequence[int],
        k: int,
        code: str,
        systematic: bool = False,
        silent: Sequence[int] = (),
        scheme: str = "cocoi",
        scenario: Scenario | None = None,
        seed: int = 0,
        round_timeout: float | None = None,
        crashes: Sequence[Crash] = (),
        interrupted: Callable[[], str | None] = lambda: None,
    ):
        super().__init__(len(workers), k, code, systematic, clock=MPI.Wtime, scheme=scheme)
        self.comm, self.workers = comm, list(workers)
        self.seed = seed
        self.faults = FaultModel(scenario or Scenario(), self.workers, seed, silent)
        self.round_timeout = round_timeout  # seconds; None waits as long as it takes
        self.layer_timeouts: dict[str, float] = {}  # per layer, from the plan (auto)
        self.crashes = list(crashes)
        self.interrupted = interrupted  # the signal's name once one arrived, else None
        self.late: list[Pending] = []
        self.sends: list[tuple[MPI.Request, object, int]] = []  # request, buffer, peer
        self.resolved: list[dict] = []  # late rows resolved, appended with the next rows
        self.dead: dict[int, dict] = {}  # rank -> when its death was detected
        self.unresponsive: list[int] = []  # ranks that never closed their replies
        self.later_errors: list[str] = []  # worker errors reported while shutting down
        self.errors = {r: self.post_error_channel(r) for r in self.workers}
        self.stopping = False  # shutdown began: worker errors are logged, not raised
        self.shut_down = False  # every live worker sent its log and waits for the farewell
        self.inputs = BufferPool()  # subtask-input (send) buffers, per layer shape
        self.replies = BufferPool()  # reply (receive) buffers
        self.lent: list[tuple[torch.Tensor, list[MPI.Request]]] = []  # inputs still sending
        self.link: MasterLink | None = None  # the liveness channel (under ULFM)
        self.exited: set[int] = set()  # ranks the liveness channel saw end
        self.abandoned: list[tuple] = []  # requests to exited ranks, with their buffers
        self.worker_sends: list[tuple[int, int, float]] = []  # shipped send durations

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

    @property
    def silent(self) -> frozenset:
        return self.faults.silent

    @silent.setter
    def silent(self, ranks) -> None:
        self.faults.silent = frozenset(ranks)

    def set_scenario(self, scenario: Scenario, seed: int | None = None) -> None:
        """Change the injected behaviour between requests (sweeps); ``seed`` its faults."""
        seed = self.seed if seed is None else seed
        self.faults = FaultModel(scenario, self.workers, seed, self.faults.silent)

    def setup(self, specs: Sequence[ConvSpec], blocks: Sequence[BlockSpec] = ()) -> list[str]:
        """Give every worker the type-1 convs (metadata by bcast, weights as raw Bcast)
        and the learned scheme's conv blocks (pickled layers, one bcast).

        Returns the hostnames of all ranks of the communicator, master first.
        """
        metas = [
            LayerMeta(
                s.layer_id,
                s.name,
                tuple(s.weight.shape),
                str(s.weight.numpy().dtype),
                s.stride,
                s.dilation,
                s.groups,
                s.pad_h,
                s.pad_w,
            )
            for s in specs
        ]
        listener = open_listener() if ulfm_enabled() else None
        self.comm.bcast((metas, listener.address if listener else None), root=0)
        if listener is not None:
            self.link = listener.accept(self.workers)
            self.link.on_setup_exit = exit_during_setup
            self.link.start()
            if self.link.missing:
                print(
                    f"cocoi: warning: worker rank(s) {self.link.missing} could not reach "
                    f"the master's liveness channel (port {listener.address.port}); "
                    "their deaths are seen by ULFM alone",
                    file=sys.stderr,
                )
        for spec in specs:
            self.comm.Bcast(np.ascontiguousarray(spec.weight.numpy()), root=0)
        self.comm.bcast(list(blocks), root=0)
        hosts = self.comm.gather(socket.gethostname(), root=0)
        if self.link is not None:
            self.link.serving = True
        return hosts

    def _execute(
        self, spec: ConvSpec | BlockSpec, prep: Prepared, code: Scheme, round_id: int
    ) -> Execution:
        rnd = Round(round_id, spec, prep, code, reply_shape(spec, prep, code))
        rnd.fault_key = self.fault_key
        t0 = self.now()
        lost = [i for i in range(code.n) if not self.issue(rnd, i, self.assign(i))]
        rnd.issued = code.n
        try:
            for index in lost:  # workers known dead: re-send only once all n are out
                self.resend_if_needed(rnd, index)
            t_sent = self.now()
            rest = rest_output(spec, prep)
            t_rest = self.now()
            self.collect(rnd)
        except RoundShortfall as exc:
            exc.rows = rnd.rows + exc.rows
            raise
        finally:  # posted receives own their buffers until completed, error or not
            open_ = rnd.open()
            self.close_round(rnd, open_)
        t_ready = self.now()
        return Execution(
            outputs=rnd.outputs,
            send_s=t_sent - t0,
            wait_s=t_ready - t_sent,
            remainder_s=t_rest - t_sent,
            rest=rest,
            n_outstanding=len(open_),
            n_failed=len(rnd.failed),
            subtasks=rnd.rows + self.take_resolved(),
            ranks=rnd.ranks,
            release=lambda: self.release_replies(rnd),
        )

    def release_replies(self, rnd: Round) -> None:
        """The round is decoded: its completed reply buffers can serve later rounds."""
        for p in rnd.pending:
            if p.done and not p.late:
                self.replies.give(p.buffer)
        rnd.outputs = {}

    def assign(self, index: int) -> int:
        """Subtask i goes to worker i (mod n), dead or alive: a dead one's subtask is
        lost at once, which is what the code was built to tolerate."""
        return self.workers[index % len(self.workers)]

    def subtask_input(self, rnd: Round, index: int) -> np.ndarray:
        """Subtask ``index``'s input, made now in its send buffer (a conv round makes
        each input just before its send, so worker 1 computes while the master still
        cuts and encodes the others)."""
        return rnd.prep.subtask_input(index).numpy()

    def issue(self, rnd: Round, index: int, rank: int) -> bool:
        """Send subtask ``index`` to ``rank`` and post the receive for its reply.

        Returns False when the subtask is lost at once (a silent or dead worker)."""
        payload = self.subtask_input(rnd, index)
        out_bytes = payload.itemsize * int(np.prod(rnd.out_shape))
        fault = self.faults.fault(rnd.fault_key, index, rank, payload.nbytes, out_bytes)
        crash = self.due_crash(rank)
        task = Task(
            rnd.round_id,
            layer_id(rnd.spec),
            payload.shape,
            str(payload.dtype),
            index,
            fault.fail,
            fault.recv_delay,
            fault.send_delay,
            fault.slowdown,
            masks_for(rnd.spec, rnd.prep, index),
            crash.kind if crash else "",
            crash.hang_s if crash else 0.0,
        )
        row = dict(
            request=self.request,
            round=rnd.round_id,
            worker=rank,
            code_row=index,
            bytes_in=payload.nbytes,
            bytes_out=out_bytes,
            injected_delay_s=fault.injected,
            slowdown=fault.slowdown,
            sent_t=self.now(),
        )
        if rank in self.dead:
            return self.lose(rnd, index, rank, {**row, "status": "dead"})
        try:
            self.sends.append((self.comm.isend(task, dest=rank, tag=CTRL), None, rank))
            data = self.comm.Isend(payload, dest=rank, tag=rnd.tag)
            self.sends.append((data, payload, rank))
            rnd.sent.append(data)
            if fault.fail == "silent":  # never replies: nothing to receive
                return self.lose(rnd, index, rank, {**row, "status": "failed"})
            buf = self.reply_buffer(rnd.out_shape, task.dtype)
            req = self.comm.Irecv(buf, source=rank, tag=rnd.tag)
        except MPI.Exception as exc:  # ULFM: the peer died after our last look
            if not is_proc_failure(exc):
                raise
            self.mark_dead(rank)
            return self.lose(rnd, index, rank, {**row, "status": "dead"})
        rnd.pending.append(Pending(index, rank, req, buf, rnd.out_shape, row))
        return True

    def due_crash(self, rank: int) -> Crash | None:
        """The fault drill this worker runs on its next subtask, if its request came."""
        for crash in self.crashes:
            if crash.rank == rank and crash.request <= self.request:
                self.crashes.remove(crash)
                return crash
        return None

    def lose(self, rnd: Round, index: int, rank: int, row: dict) -> bool:
        """Record a subtask that will never reply; False, for issue's caller."""
        rnd.rows.append(row)
        rnd.failed.add(index)
        rnd.down.add(rank)
        return False

    def collect(self, rnd: Round) -> None:
        """Wait until the scheme can decode, re-sending and streaming as it asks.

        A subtask still open at the round's deadline counts as failed for the round
        (its receive stays posted: a late reply is still recorded)."""
        code = rnd.code
        deadline = self.deadline(rnd)
        while not code.decodable(rnd.outputs):
            waiting = rnd.waiting()
            if not waiting:
                raise RoundShortfall(
                    f"round {rnd.round_id} ({rnd.spec.name}): {len(rnd.outputs)} of "
                    f"{code.n} subtasks replied and no live worker is left to ask; "
                    f"{code.describe()} cannot decode"
                )
            finished = self.wait_some(waiting, deadline)
            if finished is None:
                self.time_out(rnd, waiting)
                deadline = self.deadline(rnd)
                continue
            for p in finished:
                if p.row["status"] in ("failed", "dead"):
                    rnd.rows.append(p.row)
                    self.on_failure(rnd, p)
                elif p.row["status"] != "skipped":
                    rnd.rows.append(p.row)
                    out = torch.from_numpy(p.buffer[: -len(TRAILER)]).view(p.shape)
                    rnd.outputs[p.index] = out
                    rnd.ranks[p.index] = p.rank
                    self.place_arrival(rnd, p.index, out)
                    self.on_reply(rnd, p)
                else:
                    rnd.rows.append(p.row)

    def place_arrival(self, rnd: Round, index: int, out: torch.Tensor) -> None:
        """A subtask that carries source pieces goes into the layer output at once,
        while the master still waits for the others."""
        assembly = getattr(rnd.prep, "assembly", None)
        if assembly is not None:
            assembly.place_subtask(rnd.code, index, out)

    def deadline(self, rnd: Round) -> float | None:
        timeout = self.layer_timeouts.get(rnd.spec.name, self.round_timeout)
        return None if timeout is None else self.now() + timeout

    def time_out(self, rnd: Round, waiting: list[Pending]) -> None:
        """The deadline passed: every open subtask of the round counts as failed."""
        for p in waiting:
            p.timed_out = True
            p.row["status"] = "timeout"
            rnd.failed.add(p.index)
            rnd.down.add(p.rank)
        for p in waiting:
            self.resend_if_needed(rnd, p.index)

    def on_failure(self, rnd: Round, p: Pending) -> None:
        """A worker failed (said so, or died): re-send its input if the scheme needs it."""
        rnd.failed.add(p.index)
        rnd.down.add(p.rank)
        self.resend_if_needed(rnd, p.index)

    def resend_if_needed(self, rnd: Round, index: int) -> None:
        pending = {q.index for q in rnd.waiting()}
        if not rnd.code.needs_resend(index, rnd.outputs, pending):
            return
        down = rnd.down | set(self.dead) | self.silent
        live = [r for r in self.workers if r not in down]
        if not live:
            return  # collect finds nothing to wait for and reports the shortfall
        target = min(live, key=lambda r: (rnd.busy(r), self.workers.index(r)))
        if not self.issue(rnd, index, target):
            self.resend_if_needed(rnd, index)

    def on_reply(self, rnd: Round, p: Pending) -> None:
        """Streaming schemes give the worker that just answered another subtask."""
        if rnd.code.decodable(rnd.outputs):
            return
        index = rnd.code.next_subtask(rnd.issued)
        if index is not None:
            rnd.issued += 1
            self.issue(rnd, index, p.rank)

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

    def close_round(self, rnd: Round, open_: list[Pending]) -> None:
        """Tell workers still owing a reply that the round is decoded; keep their receives.
        The round's input buffer goes back to the pool once its sends are done."""
        for rank in sorted({p.rank for p in open_} - set(self.dead)):
            self.post_control(Done((rnd.round_id,)), rank)
        for p in open_:
            p.late = True
        self.late.extend(open_)
        buffer = getattr(rnd.prep, "buffer", None)
        if buffer is not None:
            self.lent.append((buffer, rnd.sent))
        self.reap_sends()

    def post_control(self, message: object, rank: int) -> None:
        """A control message; a worker that died meanwhile is marked dead, not an error."""
        try:
            self.sends.append((self.comm.isend(message, dest=rank, tag=CTRL), None, rank))
        except MPI.Exception as exc:
            if not is_proc_failure(exc):
                raise
            self.mark_dead(rank)

    def reap_sends(self) -> None:
        """Forget sends that completed (or whose peer died); their buffers can go.

        A send to a worker the liveness channel saw exit may never complete (MPI was
        not told): it is dropped, its buffer kept alive but never reused."""
        kept = []
        for req, buf, rank in self.sends:
            if rank in self.exited:
                self.abandoned.append((req, buf))
                continue
            try:
                if not req.Test():
                    kept.append((req, buf, rank))
            except MPI.Exception as exc:
                if not is_proc_failure(exc):
                    raise
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
            try:
                while self.comm.Iprobe(source=rank, tag=SENDS):
                    batch = self.comm.recv(source=rank, tag=SENDS)
                    self.worker_sends.extend((r, rank, s) for r, _row, s in batch)
            except MPI.Exception as exc:
                if not is_proc_failure(exc):
                    raise
                self.mark_dead(rank)

    def take_sends(self) -> list[tuple[int, int, float]]:
        out, self.worker_sends = self.worker_sends, []
        return out

    def shutdown(self, timeout: float = 60.0) -> list[dict]:
        """Stop the live workers, wait for every open reply and send, collect their logs.

        Workers that never close their replies within ``timeout`` are listed in
        ``unresponsive`` and ShutdownTimeout is raised: only an abort ends them."""
        self.stopping = True
        for rank in self.live_workers():
            self.post_control(Stop(), rank)
        deadline = time.monotonic() + timeout
        logs: dict[int, dict] = {}
        while self.late or self.sends or len(logs) < len(self.live_workers()):
            self.poll_late()
            self.reap_sends()
            self.receive_logs(logs)  # a worker ships its last batch before its log
            if time.monotonic() > deadline:
                owing = {p.rank for p in self.late} | (set(self.live_workers()) - set(logs))
                self.unresponsive = sorted(owing - set(self.dead))
                self.close_unresolved()
                raise ShutdownTimeout(
                    f"worker rank(s) {self.unresponsive} still owed {len(self.late)} replies "
                    f"or their log {timeout:.0f} s after the run ended"
                )
            time.sleep(POLL_MAX_SLEEP)
        for channel in self.errors.values():  # still posted: no error came from it
            cancel(channel.request)
        self.errors = {}
        self.shut_down = True
        return [logs[r] for r in sorted(logs)]

    def say_farewell(self) -> None:
        """Tell each live worker whether any rank died: the master's last word, sent
        after the summary so that no worker leaves while the master still prints.

        ULFM never hears of a worker that exits with a non-zero status (only the
        master's liveness channel does); a worker would find its own failed group empty,
        call MPI_Finalize and hang there (guard_finalize). The liveness channel's
        GOODBYE goes first, so no worker takes the master's exit for a death. Without a
        completed shutdown the workers are not waiting for it (the job is aborted)."""
        if not self.shut_down:
            return
        if self.link is not None:  # GOODBYE first: the workers' watchers stand down
            self.link.close()
        deaths = bool(self.dead or failed_ranks(MPI.COMM_WORLD))
        for rank in self.live_workers():
            try:
                self.comm.send(deaths, dest=rank, tag=FAREWELL)
            except MPI.Exception as exc:
                if not is_proc_failure(exc):
                    raise
                self.mark_dead(rank)

    def receive_logs(self, logs: dict[int, dict]) -> None:
        """Take each live worker's end-of-run log once it has sent it."""
        for rank in self.live_workers():
            if rank in logs:
                continue
            try:
                if self.comm.Iprobe(source=rank, tag=LOG):
                    logs[rank] = self.comm.recv(source=rank, tag=LOG)
            except MPI.Exception as exc:
                if not is_proc_failure(exc):
                    raise
                self.mark_dead(rank)

    def close_unresolved(self) -> None:
        """At a shutdown timeout, keep the rows of replies that never came."""
        for p in self.late:
            p.row.setdefault("status", "timeout")
            self.resolved.append(mark_late(p.row))
        self.subtasks.extend(self.take_resolved())


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


def source_of(items: list) -> list[int]:
    return [item.rank for item in items]


def cancel(request: MPI.Request) -> None:
    """Cancel a posted receive and wait for it; a dead peer's request just goes."""
    try:
        if request:
            request.Cancel()
            request.Wait()
    except MPI.Exception as exc:
        if not is_proc_failure(exc):
            raise


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
