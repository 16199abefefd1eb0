"""The master's MPI side: ship coded subtasks, collect k-of-n with Waitsome, drain late.

Each round posts one Isend per subtask and one Irecv per expected reply, computes the
remainder columns while workers run, then calls MPI.Request.Waitsome over the round's
receives, the receives still open from earlier rounds (late replies) and the error
channel, until the code can decode. Receives left open move to the late pool; their
workers are told the round is done. Buffers live as long as their requests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from ..blocks import BlockSpec
from ..codes import Scheme
from ..convtask import ConvSpec, Prepared
from ..engine import Engine, Execution, layer_id
from ..scenarios import FaultModel, Scenario
from ..subtasks import masks_for, reply_shape, rest_output
from .protocol import (
    CTRL,
    ERROR,
    ERROR_BYTES,
    FAILED,
    TRAILER,
    Done,
    LayerMeta,
    Stop,
    Task,
    data_tag,
    decode_error,
    reply_buffer,
)


class WorkerError(RuntimeError):
    """A worker reported an exception; the message says which and what."""


class RoundFailed(RuntimeError):
    """Too few replies can ever arrive for a round to decode."""


class ShutdownTimeout(RuntimeError):
    """Workers did not close their open replies in time at the end of the run."""


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

    @property
    def arrived(self) -> bool:
        return self.row.get("arrival_t") is not None


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

    @property
    def tag(self) -> int:
        return data_tag(self.round_id)

    def open(self) -> list[Pending]:
        return [p for p in self.pending if not p.arrived]

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
    ):
        super().__init__(len(workers), k, code, systematic, clock=MPI.Wtime, scheme=scheme)
        self.comm, self.workers = comm, list(workers)
        self.seed = seed
        self.faults = FaultModel(scenario or Scenario(), self.workers, seed, silent)
        self.late: list[Pending] = []
        self.sends: list[tuple[MPI.Request, object]] = []
        self.resolved: list[dict] = []  # late rows resolved, appended with the next rows
        self.err_buf = bytearray(ERROR_BYTES)
        self.err_req = comm.Irecv(self.err_buf, source=MPI.ANY_SOURCE, tag=ERROR)

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
        self.comm.bcast(metas, root=0)
        for spec in specs:
            self.comm.Bcast(np.ascontiguousarray(spec.weight.numpy()), root=0)
        self.comm.bcast(list(blocks), root=0)
        return self.comm.gather(socket.gethostname(), root=0)

    def _execute(
        self, spec: ConvSpec | BlockSpec, prep: Prepared, code: Scheme, round_id: int
    ) -> Execution:
        rnd = Round(round_id, spec, prep, code, reply_shape(spec, prep, code))
        rnd.fault_key = self.fault_key
        t0 = self.now()
        for i in range(code.n):
            self.issue(rnd, i, self.workers[i % len(self.workers)])
        rnd.issued = code.n
        t_sent = self.now()
        rest = rest_output(spec, prep)
        t_rest = self.now()
        try:
            self.collect(rnd)
        finally:  # posted receives own their buffers until completed, error or not
            open_ = rnd.open()
            self.close_round(round_id, open_)
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
        )

    def subtask_input(self, rnd: Round, index: int) -> np.ndarray:
        if index < rnd.prep.coded.shape[0]:
            return rnd.prep.coded[index].numpy()
        pieces = rnd.prep.pieces
        return rnd.code.subtask_input(pieces, index).contiguous().numpy()

    def issue(self, rnd: Round, index: int, rank: int) -> None:
        """Send subtask ``index`` to ``rank`` and post the receive for its reply."""
        payload = self.subtask_input(rnd, index)
        out_bytes = payload.itemsize * int(np.prod(rnd.out_shape))
        fault = self.faults.fault(rnd.fault_key, index, rank, payload.nbytes, out_bytes)
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
        )
        self.sends.append((self.comm.isend(task, dest=rank, tag=CTRL), None))
        self.sends.append((self.comm.Isend(payload, dest=rank, tag=rnd.tag), payload))
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
        if fault.fail == "silent":  # never replies: nothing to receive
            rnd.rows.append({**row, "status": "failed"})
            rnd.failed.add(index)
            rnd.down.add(rank)
            return
        buf = reply_buffer(rnd.out_shape, task.dtype)
        req = self.comm.Irecv(buf, source=rank, tag=rnd.tag)
        rnd.pending.append(Pending(index, rank, req, buf, rnd.out_shape, row))

    def collect(self, rnd: Round) -> None:
        """Waitsome until the scheme can decode, re-sending and streaming as it asks."""
        code = rnd.code
        while not code.decodable(rnd.outputs):
            waiting = rnd.open()
            if not waiting:
                raise RoundFailed(
                    f"only {len(rnd.outputs)} of {code.n} subtasks replied; "
                    f"{code.describe()} cannot decode"
                )
            for p in self.wait_some(waiting):
                rnd.rows.append(p.row)
                if p.row["status"] == "failed":
                    self.on_failure(rnd, p)
                elif p.row["status"] != "skipped":
                    rnd.outputs[p.index] = torch.from_numpy(p.buffer[: -len(TRAILER)]).view(p.shape)
                    rnd.ranks[p.index] = p.rank
                    self.on_reply(rnd, p)

    def on_failure(self, rnd: Round, p: Pending) -> None:
        """A worker said it failed: re-send its input elsewhere if the scheme needs it."""
        rnd.failed.add(p.index)
        rnd.down.add(p.rank)
        pending = {q.index for q in rnd.open()}
        if not rnd.code.needs_resend(p.index, rnd.outputs, pending):
            return
        live = [r for r in self.workers if r not in rnd.down and r not in self.silent]
        if not live:
            raise RoundFailed(f"round {rnd.round_id}: every worker failed")
        target = min(live, key=lambda r: (rnd.busy(r), self.workers.index(r)))
        self.issue(rnd, p.index, target)

    def on_reply(self, rnd: Round, p: Pending) -> None:
        """Streaming schemes give the worker that just answered another subtask."""
        if rnd.code.decodable(rnd.outputs):
            return
        index = rnd.code.next_subtask(rnd.issued)
        if index is not None:
            rnd.issued += 1
            self.issue(rnd, index, p.rank)

    def wait_some(self, waiting: list[Pending]) -> list[Pending]:
        """One Waitsome over errors, this round and the late pool; returns this round's."""
        pool = waiting + self.late
        requests = [self.err_req] + [p.request for p in pool]
        statuses = [MPI.Status() for _ in requests]
        done = MPI.Request.Waitsome(requests, statuses) or []
        t = self.now()
        mine, error = [], None
        for j, idx in enumerate(done):  # statuses[j] belongs to requests[done[j]]
            if idx == 0:
                error = decode_error(self.err_buf, statuses[j].Get_count(MPI.BYTE))
                continue
            p = pool[idx - 1]
            finish_row(p, statuses[j], t)
            if p.late:
                self.late.remove(p)
                self.resolved.append(mark_late(p.row))
            else:
                mine.append(p)
        if error is not None:  # only after every completed request is recorded
            raise WorkerError(error)
        return mine

    def close_round(self, round_id: int, open_: list[Pending]) -> None:
        """Tell workers still owing a reply that the round is decoded; keep their receives."""
        for rank in sorted({p.rank for p in open_}):
            self.sends.append((self.comm.isend(Done((round_id,)), dest=rank, tag=CTRL), None))
        for p in open_:
            p.late = True
        self.late.extend(open_)
        self.reap_sends()

    def reap_sends(self) -> None:
        """Forget sends that completed; their buffers can go."""
        self.sends = [(req, buf) for req, buf in self.sends if not req.Test()]

    def take_resolved(self) -> list[dict]:
        rows, self.resolved = self.resolved, []
        return rows

    def poll_late(self) -> None:
        """Record late replies that came in since the last wait (between requests)."""
        if not self.late:
            return
        requests = [p.request for p in self.late]
        statuses = [MPI.Status() for _ in requests]
        done = MPI.Request.Testsome(requests, statuses) or []
        t = self.now()
        finished = sorted(zip(done, statuses, strict=False), key=lambda d: -d[0])
        for idx, status in finished:  # pop from the end so indices stay valid
            p = self.late.pop(idx)
            finish_row(p, status, t)
            self.resolved.append(mark_late(p.row))
        self.subtasks.extend(self.take_resolved())

    def shutdown(self, timeout: float = 60.0) -> list[dict]:
        """Stop workers, wait for every open reply and send, gather the worker logs."""
        for rank in self.workers:
            self.sends.append((self.comm.isend(Stop(), dest=rank, tag=CTRL), None))
        deadline = time.monotonic() + timeout
        while self.late or self.sends:
            self.poll_late()
            self.reap_sends()
            if time.monotonic() > deadline:
                raise ShutdownTimeout(
                    f"{len(self.late)} replies and {len(self.sends)} sends still open after "
                    f"{timeout:.0f} s at shutdown"
                )
            time.sleep(0.001)
        if self.err_req:  # still posted (no worker reported an error)
            self.err_req.Cancel()
            self.err_req.Wait()
        logs = self.comm.gather(None, root=0)
        return [log for log in logs if log is not None]


def mark_late(row: dict) -> dict:
    """A reply that came after its round decoded: 'late', or 'skipped' if the worker
    skipped it on hearing the round was done."""
    if row["status"] not in ("skipped", "failed"):
        row["status"] = "late"
    return row


def finish_row(p: Pending, status: MPI.Status, t: float) -> None:
    """Fill a subtask row from its reply: arrival, worker durations, or its notice."""
    count = status.Get_elements(from_numpy_dtype(p.buffer.dtype))
    p.row["arrival_t"] = t
    if count == len(TRAILER):
        code = float(p.buffer[0])
        p.row["status"] = "failed" if code == FAILED else "skipped"
        return
    recv_s, queue_s, compute_s, delay_s = (float(v) for v in p.buffer[count - len(TRAILER) : count])
    p.row.update(
        status="replied",
        worker_recv_s=recv_s,
        worker_queue_s=queue_s,
        worker_compute_s=compute_s,
        worker_slept_s=delay_s,
    )
