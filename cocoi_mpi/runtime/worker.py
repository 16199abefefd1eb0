"""A worker rank: receive the convs it executes, then serve subtasks until Stop.

The worker holds only the weights of the type-1 convs (VGG16's classifier never
leaves the master). It drains control messages before computing and again before
sending, so a task whose round is already decoded is skipped, not computed or sent.
SIGTERM and SIGINT do not stop a worker: the master decides when the run ends and
tells every worker with Stop (under mpirun or srun every rank gets the signal).

A worker never waits in a blocking MPI call (Open MPI's spin a core): it probes for
the next control message, tests its payload's receive and its reply's send, and
sleeps between tries with a growing back-off (runtime.idle). Its heap is frozen after
set-up and the cyclic collector runs only when the worker has been idle for a while
or every GC_EVERY tasks, never in the middle of one. Its log reports the CPU seconds
it used while serving (``cpu_s``), its compute seconds (``compute_s``, wall time;
``compute_cpu_s``, CPU time) and the serve loop's wall time (``wall_s``).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from ..errors import InternalError
from ..geometry.blocks import BlockSpec
from ..geometry.conv import ConvSpec
from ..geometry.units import compute
from .idle import Backoff, GcWatch, Usage, poll
from .liveness import Address, Exit, WorkerLink, connect
from .protocol import (
    CTRL,
    ERROR,
    FAILED,
    FAREWELL,
    LOG,
    SEND_BATCH,
    SENDS,
    SKIPPED,
    TRAILER,
    Done,
    LayerMeta,
    Stop,
    Task,
    data_tag,
    encode_error,
    error_report,
    resident_mb,
)
from .ulfm import is_proc_failure

IDLE_COLLECT_S = 0.5  # a worker idle this long (seconds slept) runs the collector
GC_EVERY = 200  # ... and so does one busy for this many tasks without a pause


def receive_layers(comm: MPI.Comm) -> tuple[dict[int, ConvSpec | BlockSpec], WorkerLink | None]:
    """Setup: layer metadata and the master's liveness address by bcast (then this
    worker connects to it), each weight (and bias) as a raw Bcast, then the conv blocks of the
    learned scheme. Raises SetupAborted when the master gave up before set-up."""
    got: tuple[list[LayerMeta], Address | None] | None = comm.bcast(None, root=0)
    if got is None:
        raise SetupAborted
    metas, address = got
    link = connect(address, comm.Get_rank()) if address is not None else None
    if link is not None:
        link.watch(master_gone)
    specs = {}
    for meta in metas:
        weight = np.empty(meta.weight_shape, dtype=meta.dtype)
        comm.Bcast(weight, root=0)
        bias = None
        if meta.bias:
            bias = np.empty(meta.weight_shape[0], dtype=meta.dtype)
            comm.Bcast(bias, root=0)
        specs[meta.layer_id] = ConvSpec(
            meta.layer_id,
            meta.name,
            torch.from_numpy(weight),
            meta.stride,
            meta.dilation,
            meta.groups,
            meta.pad_h,
            meta.pad_w,
            None if bias is None else torch.from_numpy(bias),
        )
    blocks: list[BlockSpec] = comm.bcast(None, root=0)
    specs.update({b.block_id: b for b in blocks})
    return specs, link


class SetupAborted(InternalError):
    """The master failed before set-up (bad input): the worker just leaves."""


def master_gone(event: Exit) -> None:
    """The liveness channel says the master ended without a word (any exit, signal or
    not): nobody is left to serve, and under ULFM no MPI call might ever say so."""
    sys.stderr.write(
        f"cocoi: worker rank {os.environ.get('OMPI_COMM_WORLD_RANK', '?')}: the master "
        f"(rank 0) ended without finishing the run ({event.how}); leaving\n"
    )
    sys.stderr.flush()
    os._exit(1)


@dataclass
class Queued:
    task: Task
    payload: np.ndarray
    t_header: float
    t_data: float


@dataclass
class WorkerLoop:
    """Serve tasks in arrival order; every task that expects a reply gets exactly one."""

    comm: MPI.Comm
    specs: dict[int, ConvSpec | BlockSpec]
    queue: deque = field(default_factory=deque)
    done: set = field(default_factory=set)
    confined: bool = False  # an emulated device (cgroup CPU share): see stretch
    stopping: bool = False
    sends: list = field(default_factory=list)  # (round, row, send_s) for the master's trace
    computed: int = 0
    skipped: int = 0
    compute_s: float = 0.0  # seconds in compute(): the useful work (wall time) ...
    compute_cpu_s: float = 0.0  # ... and the CPU seconds it took (less when cores are shared)
    usage: Usage = field(default_factory=Usage)  # CPU and wall seconds since serving began
    idle: Backoff = field(default_factory=Backoff)  # the wait for the next control message
    gc: GcWatch = field(default_factory=GcWatch)
    since_collect: int = 0  # tasks handled since the last collection

    def serve(self) -> None:
        self.usage = Usage()
        with self.gc.serving():
            while True:
                self.drain(block=not self.queue and not self.stopping)
                if not self.queue:
                    if self.stopping:
                        return
                    continue
                self.gc.begin()
                try:
                    self.handle(self.queue.popleft())
                finally:
                    self.gc.end(collect=False)
                    self.since_collect += 1
                    if self.since_collect >= GC_EVERY:
                        self.collect()

    def drain(self, block: bool) -> None:
        """Take every pending control message (and its payload); wait for one if asked,
        probing with a back-off sleep (a blocking receive would spin a core)."""
        while True:
            if not probe(self.comm, CTRL):
                if not block:
                    return
                self.wait_idle()
                continue
            block = False
            self.idle.reset()
            msg = self.comm.recv(source=0, tag=CTRL)
            t_header = MPI.Wtime()
            if isinstance(msg, Task):
                payload = np.empty(msg.shape, dtype=msg.dtype)
                complete(self.comm.Irecv(payload, source=0, tag=data_tag(msg.round)))
                self.queue.append(Queued(msg, payload, t_header, MPI.Wtime()))
            elif isinstance(msg, Done):
                self.done.update(msg.rounds)
            elif isinstance(msg, Stop):
                self.stopping = True

    def wait_idle(self) -> None:
        """One sleep of the idle wait; the collector runs once per long idle spell."""
        before = self.idle.slept
        self.idle.sleep()
        if before < IDLE_COLLECT_S <= self.idle.slept and self.since_collect:
            self.collect()

    def collect(self) -> None:
        """A full collection between two tasks, timed into the log."""
        self.gc.collect()
        self.since_collect = 0

    def finished(self, task: Task) -> bool:
        return self.stopping or task.round in self.done

    def handle(self, item: Queued) -> None:
        task = item.task
        if task.crash:
            crash(task)
            self.drain(block=False)
        if task.fail == "silent":
            return
        if task.fail == "notice":
            return self.reply_code(task, FAILED)
        if self.finished(task):
            return self.reply_code(task, SKIPPED)
        slept = self.pause(task.recv_delay)
        t0, c0 = MPI.Wtime(), time.process_time()
        try:
            if task.crash == "raise":
                raise RuntimeError("fault drill: --crash raise")
            with torch.no_grad():
                x = torch.from_numpy(item.payload)
                out = compute(self.specs[task.layer_id], x, task.masks, task.bias_scales)
        except Exception as exc:  # reported to the master as data, then the task is closed
            self.report_error(task, exc)
            return self.reply_code(task, SKIPPED)
        t1, c1 = MPI.Wtime(), time.process_time()
        self.compute_s += t1 - t0
        self.compute_cpu_s += c1 - c0
        slept += self.stretch(task.slowdown, t1 - t0, c1 - c0)
        if self.finished(task):
            return self.reply_code(task, SKIPPED)
        slept += self.pause(task.send_delay)
        trailer = (item.t_data - item.t_header, t0 - item.t_data - task.recv_delay, t1 - t0, slept)
        self.send_reply(task, out.numpy().ravel(), trailer)
        self.computed += 1
        self.done = {r for r in self.done if r > task.round}

    def stretch(self, slowdown: float, wall_s: float, cpu_s: float) -> float:
        """Make the compute take ``slowdown`` times as long; the seconds it added.

        A confined worker (the testbed) does the work: it spins for (slowdown - 1)
        times the CPU time the compute used, within its quota, so the device is busy
        as a slower one would be. Sleeping instead would let the quota refill, and the
        next compute would run faster than the device (measured: the jittered
        calibration's compute came out 27 % faster per FLOP with sleeps). Unconfined,
        it sleeps: spinning would take CPU from the ranks beside it."""
        extra = slowdown - 1.0
        if extra <= 0:
            return 0.0
        if not self.confined:
            return self.pause(extra * wall_s)
        t0 = MPI.Wtime()
        until = time.process_time() + extra * cpu_s
        while time.process_time() < until:
            pass
        self.drain(block=False)
        return MPI.Wtime() - t0

    def pause(self, seconds: float) -> float:
        """Sleep an injected delay, then take the control messages that came meanwhile."""
        if seconds <= 0:
            return 0.0
        time.sleep(seconds)
        self.drain(block=False)
        return seconds

    def send_reply(self, task: Task, flat: np.ndarray, trailer: tuple) -> None:
        buf = np.empty(flat.size + len(TRAILER), dtype=task.dtype)
        buf[: flat.size] = flat
        buf[flat.size :] = (*trailer, resident_mb())
        t0 = MPI.Wtime()
        complete(self.comm.Isend(buf, dest=0, tag=data_tag(task.round)))
        self.sends.append((task.round, task.row, MPI.Wtime() - t0))
        if len(self.sends) >= SEND_BATCH:
            self.ship_sends()

    def ship_sends(self) -> None:
        """Send durations go to the master in batches as the run goes, not all in the
        final log: neither side then holds one entry per task of a long run."""
        complete(self.comm.isend(self.sends, dest=0, tag=SENDS))
        self.sends = []

    def reply_code(self, task: Task, code: float) -> None:
        """A trailer-only reply (SKIPPED or FAILED): closes the master's receive."""
        trailer = np.zeros(len(TRAILER), dtype=task.dtype)
        trailer[0] = code
        complete(self.comm.Isend(trailer, dest=0, tag=data_tag(task.round)))
        self.skipped += code == SKIPPED

    def report_error(self, task: Task, exc: BaseException) -> None:
        where = f"worker rank {self.comm.Get_rank()}, layer {task.layer_id}, round {task.round}"
        self.send_error(f"{where}: {type(exc).__name__}: {exc}", exc)

    def send_error(self, summary: str, exc: BaseException) -> None:
        """Tell the master, with this rank's stack: rank 0 prints it and keeps it in the
        trace, so a user need not hunt for the worker's stderr on another node. The
        frames are cleared after, lest they keep a task's tensors alive."""
        text = error_report(summary, exc, self.comm.Get_rank(), socket.gethostname())
        complete(self.comm.Isend(encode_error(text), dest=0, tag=ERROR))
        traceback.clear_frames(exc.__traceback__)

    def log(self) -> dict:
        """What the master records about this worker at the end: counts, memory, and
        the CPU, compute and wall seconds of serving (from serve's start to now)."""
        return dict(
            rank=self.comm.Get_rank(),
            host=MPI.Get_processor_name(),
            sends=self.sends,
            computed=self.computed,
            skipped=self.skipped,
            max_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            cpu_s=self.usage.cpu_s(),
            compute_s=self.compute_s,
            compute_cpu_s=self.compute_cpu_s,
            wall_s=self.usage.wall_s(),
            **self.gc.meta(),
        )


def probe(comm: MPI.Comm, tag: int) -> bool:
    """Is a message from the master waiting on ``tag``? Open MPI's Iprobe looks for a
    match before it progresses the transports, so a message that arrived while we
    slept is matched by the second call only: without it, every wait would last one
    more back-off sleep (measured: 3.4 ms instead of 1.3 ms after a 100 ms gap)."""
    return comm.Iprobe(source=0, tag=tag) or comm.Iprobe(source=0, tag=tag)


def complete(request: MPI.Request) -> None:
    """Wait for a request by testing it with a back-off sleep (Wait spins a core).

    Under ULFM a dead peer makes Test raise, as Wait or a blocking call would."""
    poll(request.Test, Backoff())


def crash(task: Task) -> None:
    """The --crash fault drill: die for real (SIGKILL, or exit without a signal), or
    stop answering for a while without dying."""
    if task.crash == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif task.crash == "exit":
        os._exit(1)
    elif task.crash == "hang":
        time.sleep(task.hang_s)


def keep_serving_on_signals() -> None:
    """The master answers SIGTERM/SIGINT for the whole run; a worker dying on them
    would only turn a clean stop into a failure."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def run_worker(comm: MPI.Comm, confined: bool = False) -> bool:
    """A worker's whole life: setup, serve, hand the log to the master. ``confined``:
    this rank is an emulated device (its CPU share), see ``WorkerLoop.stretch``.

    Returns whether the master reported a dead rank (then nobody may Finalize)."""
    keep_serving_on_signals()
    try:
        specs, link = receive_layers(comm)
    except SetupAborted:
        return False
    comm.gather(socket.gethostname(), root=0)
    loop = WorkerLoop(comm, specs, confined=confined)
    loop.gc.freeze()  # the weights and the rest of set-up's heap: never scanned again
    try:
        loop.serve()
    except Exception as exc:  # an error outside a task: tell the master, wait for Stop
        loop.send_error(f"worker rank {comm.Get_rank()}: {exc!r}", exc)
        while not loop.stopping:
            loop.drain(block=True)
        for item in loop.queue:
            if item.task.fail != "silent":
                loop.reply_code(item.task, SKIPPED)
    complete(comm.isend(loop.log(), dest=0, tag=LOG))
    try:
        return await_farewell(comm)
    finally:  # the master said GOODBYE before its farewell: both ends are normal now
        if link is not None:
            link.close()


def await_farewell(comm: MPI.Comm) -> bool:
    """The master's last word: did any rank die? A master that died counts as yes."""
    try:
        poll(lambda: probe(comm, FAREWELL), Backoff())
        return bool(comm.recv(source=0, tag=FAREWELL))
    except MPI.Exception as exc:
        if is_proc_failure(exc):
            return True
        raise
