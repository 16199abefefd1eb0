"""The master's MPI side: ship coded subtasks, collect k-of-n, drain late replies.

Each round posts one Isend per subtask (each input made just before its send) and one
Irecv per expected reply, then waits with MPI.Request.Testsome over the
round's receives, the receives still open from earlier rounds (late replies) and the
per-worker error channels, until the code can decode. Receives left open move to the
late pool; their workers are told the round is done. Buffers live as long as their
requests.

This module is the round logic: which worker gets which subtask, when a round can
decode, what is re-sent, what a deadline does. The MPI traffic (buffers, the polling
wait, error channels, deaths seen by ULFM or the liveness channel) is the
:class:`~.transport.Transport` part, the end of the run the :class:`~.ending.Ending`
part; :mod:`.ulfm` has the calls that survive a dead peer. Under ULFM a worker's death
completes its requests with MPI_ERR_PROC_FAILED: its subtasks count as failed, the
code decodes from the others (or re-sends, for uncoded and replication) and it is
never sent to again.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from ..codes import Scheme
from ..engine.core import Engine
from ..engine.rows import Execution, RoundShortfall, layer_id
from ..experiment.scenarios import Crash, FaultModel, Scenario
from ..geometry.blocks import BlockSpec
from ..geometry.conv import ConvSpec
from ..geometry.rounds import Prepared
from ..geometry.units import masks_for, reply_shape, rest_output
from .ending import Ending, ShutdownTimeout
from .liveness import MasterLink
from .protocol import CTRL, TRAILER, Done, LayerMeta, Task, data_tag
from .transport import (
    BufferPool,
    Interrupted,
    Pending,
    Transport,
    WorkerError,
    exit_during_setup,
    open_listener,
)
from .ulfm import is_proc_failure, ulfm_enabled

# What the job and the tests use from the master's parts, importable from here too.
__all__ = ["Interrupted", "MasterEngine", "ShutdownTimeout", "WorkerError"]


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
    held: list[Pending] = field(default_factory=list)  # failures not yet noticed
    first_reply_s: float | None = None  # send to arrival of the round's first reply

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


class MasterEngine(Transport, Ending, Engine):
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
        layer_timeouts: Mapping[str, float] | None = None,
        codecs: Mapping[str, Scheme] | None = None,
        on_shortfall: str = "local",
    ):
        super().__init__(len(workers), k, code, systematic, clock=MPI.Wtime, scheme=scheme)
        self.comm, self.workers = comm, list(workers)
        self.seed = seed
        self.faults = FaultModel(scenario or Scenario(), self.workers, seed, silent)
        self.round_timeout = round_timeout  # seconds; None waits as long as it takes
        self.layer_timeouts = dict(layer_timeouts or {})  # per layer, from the plan (auto)
        self.codecs = dict(codecs or {})  # block name -> its learned scheme
        self.on_shortfall = on_shortfall  # a round that cannot decode: "local" or "error"
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

    def configure(self, scheme, k: int, scenario, fault_seed: int, planned=None, active=None):
        """One sweep cell: scheme, k, faults, the plan's k per layer, proxies that distribute."""
        self.use(scheme, k)
        self.set_scenario(scenario, fault_seed)
        self.planned, self.active = planned or {}, active

    def setup(self, specs: Sequence[ConvSpec], blocks: Sequence[BlockSpec] = ()) -> list[str]:
        """Give every worker the type-1 convs (metadata by bcast, weights and biases as raw Bcast)
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
                s.bias is not None,
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
            if spec.bias is not None:
                self.comm.Bcast(np.ascontiguousarray(spec.bias.numpy()), root=0)
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
            rnd.code.bias_scales(index) if isinstance(rnd.spec, ConvSpec) else (),
        )
        row = dict(
            request=self.request,
            round=rnd.round_id,
            worker=rank,
            code_row=index,
            bytes_in=payload.nbytes,
            bytes_out=out_bytes,
            injected_delay_s=fault.injected,
            injected_recv_s=fault.recv_delay,
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
        (its receive stays posted: a late reply is still recorded). A failed worker's
        notice is acted on when the scenario's detection notices it (held till then)."""
        code = rnd.code
        deadline = self.deadline(rnd)
        while not code.decodable(rnd.outputs):
            self.notice_due(rnd)
            waiting = rnd.waiting()
            if not waiting and not rnd.held:
                raise RoundShortfall(
                    f"round {rnd.round_id} ({rnd.spec.name}): {len(rnd.outputs)} of "
                    f"{code.n} subtasks replied and no live worker is left to ask; "
                    f"{code.describe()} cannot decode"
                )
            finished = self.wait_some(waiting, earliest(deadline, self.next_notice(rnd)))
            if finished is None:
                if deadline is not None and self.now() >= deadline:
                    self.time_out(rnd, waiting)
                    deadline = self.deadline(rnd)
                continue
            for p in finished:
                rnd.rows.append(p.row)
                if p.row["status"] in ("failed", "dead"):
                    self.on_failure(rnd, p)
                elif p.row["status"] != "skipped":
                    out = torch.from_numpy(p.buffer[: -len(TRAILER)]).view(p.shape)
                    rnd.outputs[p.index] = out
                    rnd.ranks[p.index] = p.rank
                    if rnd.first_reply_s is None:
                        rnd.first_reply_s = p.row["arrival_t"] - p.row["sent_t"]
                    self.place_arrival(rnd, p.index, out)
                    self.on_reply(rnd, p)

    def noticed_at(self, rnd: Round, p: Pending) -> float | None:
        """When the master learns of the failure ``p`` reported (None: not yet known)."""
        after = self.faults.scenario.failure_detection.noticed_after(rnd.first_reply_s)
        return None if after is None else p.row["sent_t"] + after

    def next_notice(self, rnd: Round) -> float | None:
        times = [t for p in rnd.held if (t := self.noticed_at(rnd, p)) is not None]
        return min(times, default=None)

    def notice_due(self, rnd: Round, everything: bool = False) -> None:
        """Act on the held failures whose detection time came (all of them at a deadline)."""
        now = self.now()
        for p in list(rnd.held):
            t = self.noticed_at(rnd, p)
            if everything or (t is not None and t <= now):
                rnd.held.remove(p)
                self.act_on_failure(rnd, p)

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
        """The deadline passed: every open subtask of the round counts as failed, and
        every failure not yet noticed is."""
        self.notice_due(rnd, everything=True)
        for p in waiting:
            p.timed_out = True
            p.row["status"] = "timeout"
            rnd.failed.add(p.index)
            rnd.down.add(p.rank)
        for p in waiting:
            self.resend_if_needed(rnd, p.index)

    def on_failure(self, rnd: Round, p: Pending) -> None:
        """A worker failed (said so, or died). A death is seen at once; a notice when
        the scenario's detection would have seen it (``noticed_at``)."""
        if p.row["status"] == "failed" and not self.faults.scenario.failure_detection.immediate:
            rnd.held.append(p)
            return
        self.act_on_failure(rnd, p)

    def act_on_failure(self, rnd: Round, p: Pending) -> None:
        """Re-send the failed subtask's input if the scheme needs it."""
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


def earliest(*times: float | None) -> float | None:
    """The first of some moments (None: never)."""
    known = [t for t in times if t is not None]
    return min(known, default=None)
