"""The batch job: one dispatch on rank, and the master's run from set-up to farewell.

``run_job(cfg, comm)`` is what ``python -m cocoi_mpi.run`` calls on every rank. Ranks
past n + 1 leave at once; rank 0 is the master; ranks 1..n are workers. The master's
run is :class:`MasterRun`, a context manager over its parts: :mod:`.prepare` (model,
inputs, plans), :mod:`.plans` (the proxies, each cell's settings, the deadlines),
:mod:`.serving` (the request loop), :mod:`.trace_meta` and :mod:`.provenance` (what the
trace keeps besides its rows).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from mpi4py import MPI

from ..experiment.config import RunConfig, scenario_of
from ..experiment.resume import open_trace
from ..experiment.summary import RunSummary
from ..traces.writer import TraceWriter
from .devices import emulate_devices
from .idle import Usage
from .master import Interrupted, MasterEngine, ShutdownTimeout
from .plans import (
    base_k,
    base_timeout,
    install_for,
    layer_timeouts,
    learned_codecs,
    plan_lines,
    run_cells,
)
from .prepare import prepare
from .provenance import provenance
from .serving import Serving, echo_summary
from .signals import SignalFlag
from .trace_meta import master_meta, reliability_meta
from .ulfm import failed_ranks, ulfm_enabled
from .worker import run_worker

INTERRUPTED_SHUTDOWN_S = 5.0  # after SIGTERM: how long workers get to close their replies


def run_job(
    cfg: RunConfig, comm: MPI.Comm | None = None, echo: Callable = print
) -> tuple[int, bool]:
    """Run on every rank; returns this rank's exit code and whether the master reported
    a dead rank (for :func:`guard_finalize`). ``comm`` stays the caller's (default: a
    Dup of COMM_WORLD, freed here); the job's own Split is freed when the role ends."""
    owned = comm is None
    comm = comm if comm is not None else MPI.COMM_WORLD.Dup()
    devices = emulate_devices(cfg, comm, echo)
    try:
        set_threads(cfg.threads or (1 if devices.confinement else 0))
        rank = comm.Get_rank()
        sub = comm.Split(0 if rank <= cfg.n else MPI.UNDEFINED, rank)
        if sub == MPI.COMM_NULL:
            result = 0, False
        elif rank == 0:
            meta = {"testbed": devices.meta} if devices.meta else {}
            result = run_master(sub, cfg, echo, meta), False
        else:
            result = 0, run_worker(sub, confined=devices.confinement is not None)
        release(sub, deaths=result[1])
    finally:
        devices.release()
    if owned:
        release(comm, deaths=result[1])
    return result


def release(comm: MPI.Comm, deaths: bool = False) -> None:
    """Free a communicator the job made (Dup, Split) once its role is over, as every
    MPI library asks. Not after a death (ULFM's failed group, or one the master's
    liveness channel reported): the process then leaves without Finalize
    (:func:`guard_finalize`), and a communicator with a dead member is not worth the
    risk of a free that waits on it."""
    if comm == MPI.COMM_NULL or deaths or failed_ranks(comm):
        return
    comm.Free()


def guard_finalize(exit_code: int, deaths_reported: bool = False) -> None:
    """After a worker died under ULFM, MPI_Finalize sometimes never returns (Open MPI
    5.0.11: about 1 run in 3 with two dead ranks, every survivor spinning in
    ompi_mpi_finalize; a watchdog thread cannot help, the GIL is held there). So when
    a rank died every rank leaves without Finalize, once its output is flushed: the
    trace is already closed and mpirun still sees the exit code (8 of 8 runs ended
    with 0, against 2 hangs in 8 with Finalize). A rank's own failed group is not
    enough: ULFM never hears of a worker that exits with a non-zero status (the
    master's liveness channel does); hence ``deaths_reported``, the master's farewell
    (protocol.FAREWELL). And a death can come after the farewell too (a heartbeat
    detector, if a user turns one on, declared live ranks dead under load while the
    others sat in Finalize, which then never returned). So under ULFM no rank calls
    Finalize at all (mpirun's exit code stays 0 without it)."""
    if deaths_reported or failed_ranks(MPI.COMM_WORLD) or ulfm_enabled():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def set_threads(threads: int) -> None:
    """One torch thread per core per rank: oversubscribed ranks fight otherwise."""
    if threads == 0:
        local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
        threads = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(threads)


def run_master(
    comm: MPI.Comm, cfg: RunConfig, echo: Callable = print, meta: dict | None = None
) -> int:
    """Prepare, hand workers their layers, serve the requests, write the trace.

    SIGTERM/SIGINT stop the run at the next safe point (between two polls of a round,
    or between requests); the trace is then closed as interrupted."""
    with SignalFlag() as signalled, MasterRun(comm, cfg, echo, signalled, meta or {}) as run:
        return run.serve_and_report()


class MasterRun:
    """The master's run, from set-up to the farewell, as a context manager.

    Entering prepares the run (model, inputs, plans, the engine and its proxies) and
    hands the workers their layers; if preparing fails, the workers are told to leave
    before any set-up. Leaving says the master's farewell, its last word to the
    workers. In between, :meth:`serve_and_report` serves the requests into the trace,
    stops the workers and prints the summary. ``meta`` holds more root attributes for
    the trace (the emulated devices')."""

    def __init__(
        self, comm: MPI.Comm, cfg: RunConfig, echo: Callable, signalled: SignalFlag, meta: dict
    ):
        self.comm, self.cfg, self.meta = comm, cfg, meta
        self.echo, self.signalled = echo, signalled
        self.hosts: list[str] = []  # every rank's hostname, master first (after set-up)

    def __enter__(self) -> MasterRun:
        cfg = self.cfg
        try:
            self.job = job = prepare(cfg)
            self.engine = engine = MasterEngine(
                self.comm,
                range(1, cfg.n + 1),
                base_k(cfg),
                cfg.code,
                cfg.systematic,
                cfg.silent,
                scheme=cfg.scheme,
                scenario=scenario_of(cfg),
                seed=cfg.seed,
                round_timeout=base_timeout(cfg),
                crashes=cfg.crash,
                interrupted=self.signalled.name,
                layer_timeouts=layer_timeouts(cfg, job),
                codecs=learned_codecs(job.blocks),
                on_shortfall=cfg.on_shortfall,
            )
            job.specs = install_for(job, engine, cfg)
        except BaseException:
            self.comm.bcast(None, root=0)  # workers leave before setup: nothing to undo
            raise
        self.hosts = engine.setup(job.specs, job.block_specs)
        job.gc.freeze()  # model, weights, codes: never scanned again
        job.usage = Usage()
        return self

    def __exit__(self, *exc) -> None:
        self.engine.say_farewell()  # last: a worker leaves as soon as it has heard it

    def serve_and_report(self) -> int:
        """Serve the requests into the trace, stop the workers, print the summary."""
        writer, status, summary, failure = None, "failed", RunSummary(), None
        try:
            writer = self.open_trace()
            self.record_plans(writer)
            serving = Serving(self.cfg, self.job, self.engine, writer, self.echo, self.signalled)
            summary = serving.serve()
            status = "complete"
        except Interrupted as exc:
            status = f"interrupted: {exc}"
            if writer is not None:  # mpirun kills ranks ~0.2 s after forwarding SIGTERM
                writer.mark(status)
            raise
        except BaseException as exc:
            status = f"failed: {type(exc).__name__}: {first_line(exc)}"
            failure = exc
            raise
        finally:
            grace = INTERRUPTED_SHUTDOWN_S if status.startswith("interrupted") else 60.0
            self.finish(writer, status, grace, failure)
        return echo_summary(self.cfg, self.job, summary, self.echo)

    def open_trace(self) -> TraceWriter:
        """The trace, with --resume the cut-off one past its complete cells."""
        return open_trace(
            self.cfg,
            self.job.path,
            meta={**provenance(self.comm, self.hosts), **self.meta},
            num_classes=self.job.num_classes,
            requests=self.job.requests,
            plan=run_cells(self.cfg),
        )

    def record_plans(self, writer: TraceWriter) -> None:
        """The plans (--k auto/star), into the trace's meta and as lines on the console."""
        plans = self.job.plans
        if not plans:
            return
        writer.set_meta("plan", [p.to_dict() for p in next(iter(plans.values()))])
        writer.set_meta(
            "plans",
            {
                f"{method}:m={m}": [p.to_dict() for p in layers]
                for (method, m), layers in plans.items()
            },
        )
        for key, layers in plans.items():
            for line in plan_lines(self.cfg, key, layers):
                self.echo(line)

    def finish(
        self,
        writer: TraceWriter | None,
        status: str,
        grace: float,
        failure: BaseException | None = None,
    ) -> None:
        """Stop the workers, store what they report (and the error that ended the run),
        and close the file with its status.

        Workers that never answer make ShutdownTimeout, raised after the file is closed
        (the caller aborts the job)."""
        engine = self.engine
        logs, stuck = [], None
        try:
            logs = engine.shutdown(grace)
        except ShutdownTimeout as exc:
            stuck = exc
        try:
            if writer is not None:
                engine.poll_late()
                _, late_rows = engine.take_rows()
                writer.append("subtasks", late_rows)
                final = [
                    (r, log["rank"], send_s) for log in logs for r, _row, send_s in log["sends"]
                ]
                self.job.sends.write(writer, engine.take_sends() + final, last=True)
                writer.set_meta(
                    "workers", [{k: v for k, v in log.items() if k != "sends"} for log in logs]
                )
                writer.set_meta("reliability", reliability_meta(engine, failure))
                for key, value in master_meta(self.job).items():
                    writer.set_meta(key, value)
        finally:
            if writer is not None:
                writer.close(status)
        if stuck is not None:
            raise stuck


def first_line(exc: BaseException) -> str:
    """The status keeps one line: a WorkerError's stack goes to reliability.worker_error."""
    return str(exc).partition("\n")[0]
