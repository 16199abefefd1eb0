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
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from ..codes import Scheme
from ..convtask import ConvSpec, Prepared, remainder
from ..engine import Engine, Execution
from .protocol import (
    CTRL,
    ERROR,
    ERROR_BYTES,
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
    request: MPI.Request
    buffer: np.ndarray
    shape: tuple[int, ...]
    row: dict  # its subtask trace row, completed on arrival
    late: bool = False  # still open when its round decoded


@dataclass(frozen=True)
class Fault:
    fail: bool = False
    delay: float = 0.0


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
    ):
        super().__init__(len(workers), k, code, systematic, clock=MPI.Wtime)
        self.comm, self.workers = comm, list(workers)
        self.silent = frozenset(silent)
        self.late: list[Pending] = []
        self.sends: list[tuple[MPI.Request, object]] = []
        self.resolved: list[dict] = []  # late rows resolved, appended with the next rows
        self.err_buf = bytearray(ERROR_BYTES)
        self.err_req = comm.Irecv(self.err_buf, source=MPI.ANY_SOURCE, tag=ERROR)

    def worker_label(self, subtask: int) -> int:
        return self.workers[subtask]

    def setup(self, specs: Sequence[ConvSpec]) -> list[str]:
        """Give every worker the type-1 convs (metadata by bcast, weights as raw Bcast).

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
        return self.comm.gather(socket.gethostname(), root=0)

    def fault(self, round_id: int, rank: int) -> Fault:
        """Injected behaviour of one subtask; decided here so a seed reproduces a run."""
        return Fault(fail=rank in self.silent)

    def _execute(self, spec: ConvSpec, prep: Prepared, code: Scheme, round_id: int) -> Execution:
        tag = data_tag(round_id)
        out_shape = reply_shape(spec, prep, code)
        t0 = self.now()
        pending, rows = [], []
        for i, rank in enumerate(self.workers):
            fault = self.fault(round_id, rank)
            payload = prep.coded[i].numpy()
            task = Task(
                round_id,
                spec.layer_id,
                payload.shape,
                str(payload.dtype),
                i,
                fault.fail,
                fault.delay,
            )
            self.sends.append((self.comm.isend(task, dest=rank, tag=CTRL), None))
            self.sends.append((self.comm.Isend(payload, dest=rank, tag=tag), payload))
            row = dict(
                request=self.request,
                round=round_id,
                worker=rank,
                code_row=i,
                bytes_in=payload.nbytes,
                bytes_out=payload.itemsize * int(np.prod(out_shape)),
                injected_delay_s=fault.delay,
                sent_t=self.now(),
            )
            if fault.fail:
                rows.append({**row, "status": "failed"})
                continue
            buf = reply_buffer(out_shape, task.dtype)
            req = self.comm.Irecv(buf, source=rank, tag=tag)
            pending.append(Pending(i, req, buf, out_shape, row))
        t_sent = self.now()
        rest = remainder(spec, prep)
        t_rest = self.now()
        try:
            outputs = self.collect(code, pending, rows)
        finally:  # posted receives own their buffers until completed, error or not
            open_ = [p for p in pending if p.row.get("arrival_t") is None]
            self.close_round(round_id, open_)
        t_ready = self.now()
        return Execution(
            outputs=outputs,
            send_s=t_sent - t0,
            wait_s=t_ready - t_sent,
            remainder_s=t_rest - t_sent,
            rest=rest,
            n_outstanding=len(open_),
            n_failed=sum(r["status"] == "failed" for r in rows),
            subtasks=rows + self.take_resolved(),
        )

    def collect(self, code: Scheme, pending: list[Pending], rows: list[dict]) -> dict:
        """Waitsome until ``code`` can decode; returns outputs in arrival order."""
        outputs: dict[int, torch.Tensor] = {}
        while not code.decodable(outputs):
            waiting = [p for p in pending if p.row.get("arrival_t") is None]
            if not waiting:
                raise RoundFailed(
                    f"only {len(outputs)} of {code.n} subtasks can reply; {code.describe()} "
                    "cannot decode"
                )
            for p in self.wait_some(waiting):
                rows.append(p.row)
                if p.row["status"] != "skipped":
                    outputs[p.index] = torch.from_numpy(p.buffer[: -len(TRAILER)]).view(p.shape)
        return outputs

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
        for p in open_:
            rank = self.workers[p.index]
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


def reply_shape(spec: ConvSpec, prep: Prepared, code: Scheme) -> tuple[int, ...]:
    """Shape of one subtask's output: (m, C_out, H_out, piece width)."""
    height = spec.height_geom.out_size(prep.padded.shape[2])
    return (code.pieces_per_task, spec.weight.shape[0], height, prep.split.piece_width)


def mark_late(row: dict) -> dict:
    """A reply that came after its round decoded: 'late', or 'skipped' if the worker
    skipped it on hearing the round was done."""
    if row["status"] != "skipped":
        row["status"] = "late"
    return row


def finish_row(p: Pending, status: MPI.Status, t: float) -> None:
    """Fill a subtask row from its reply: arrival, worker durations, skipped or not."""
    count = status.Get_elements(from_numpy_dtype(p.buffer.dtype))
    trailer = p.buffer[count - len(TRAILER) : count] if count >= len(TRAILER) else None
    p.row["arrival_t"] = t
    if count == len(TRAILER):
        p.row["status"] = "skipped"
        return
    p.row["status"] = "replied"
    if trailer is not None:
        recv_s, queue_s, compute_s, _delay = (float(v) for v in trailer)
        p.row.update(worker_recv_s=recv_s, worker_queue_s=queue_s, worker_compute_s=compute_s)
