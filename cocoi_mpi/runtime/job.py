"""The batch job: one dispatch on rank, the master's request loop, provenance.

``run_job(cfg, comm)`` is what ``python -m cocoi_mpi.run`` calls on every rank. Ranks
past n + 1 leave at once; rank 0 is the master; ranks 1..n are workers.
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
from ..traces.core import TraceWriter
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
from .prepare import MasterJob, prepare
from .provenance import provenance
from .serving import echo_summary, serve
from .signals import SignalFlag
from .trace_meta import SendTimes, master_meta, reliability_meta
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
            result = 0, run_worker(sub)
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
    with SignalFlag() as signalled:
        return master_life(comm, cfg, echo, signalled, meta or {})


def master_life(
    comm: MPI.Comm, cfg: RunConfig, echo: Callable, signalled: SignalFlag, meta: dict
) -> int:
    try:
        job = prepare(cfg)
        engine = MasterEngine(
            comm,
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
            interrupted=signalled.name,
            layer_timeouts=layer_timeouts(cfg, job),
            codecs=learned_codecs(job.blocks),
            on_shortfall=cfg.on_shortfall,
        )
        job.specs = install_for(job, engine, cfg)
    except BaseException:
        comm.bcast(None, root=0)  # workers leave before setup: nothing to undo
        raise
    hosts = engine.setup(job.specs, job.block_specs)
    job.gc.freeze()  # model, weights, codes: never scanned again
    job.usage = Usage()
    try:
        return serve_and_report(comm, cfg, echo, signalled, meta, job, engine, hosts)
    finally:  # last: a worker leaves as soon as it has heard it
        engine.say_farewell()


def serve_and_report(
    comm: MPI.Comm,
    cfg: RunConfig,
    echo: Callable,
    signalled: SignalFlag,
    meta: dict,
    job: MasterJob,
    engine: MasterEngine,
    hosts: list[str],
) -> int:
    """Serve the requests into the trace, stop the workers, print the summary."""
    writer, status, summary, failure = None, "failed", RunSummary(), None
    try:
        writer = open_trace(  # with --resume: the cut-off trace, past its complete cells
            cfg,
            job.path,
            meta={**provenance(comm, hosts), **meta},
            num_classes=job.num_classes,
            requests=job.requests,
            plan=run_cells(cfg),
        )
        if job.plans:
            first = next(iter(job.plans.values()))
            writer.set_meta("plan", [p.to_dict() for p in first])
            writer.set_meta(
                "plans",
                {
                    f"{method}:m={m}": [p.to_dict() for p in plans]
                    for (method, m), plans in job.plans.items()
                },
            )
            for key, plans in job.plans.items():
                for line in plan_lines(cfg, key, plans):
                    echo(line)
        summary = serve(cfg, job, engine, writer, echo, signalled)
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
        finish(engine, writer, status, grace, job, failure)
    return echo_summary(cfg, job, summary, echo)


def first_line(exc: BaseException) -> str:
    """The status keeps one line: a WorkerError's stack goes to reliability.worker_error."""
    return str(exc).partition("\n")[0]


def finish(
    engine: MasterEngine,
    writer: TraceWriter | None,
    status: str,
    grace: float,
    job: MasterJob | None = None,
    failure: BaseException | None = None,
) -> None:
    """Stop the workers, store what they report (and the error that ended the run), and
    close the file with its status.

    Workers that never answer make ShutdownTimeout, raised after the file is closed
    (the caller aborts the job)."""
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
            final = [(r, log["rank"], send_s) for log in logs for r, _row, send_s in log["sends"]]
            sends = job.sends if job is not None else SendTimes()
            sends.write(writer, engine.take_sends() + final, last=True)
            writer.set_meta(
                "workers", [{k: v for k, v in log.items() if k != "sends"} for log in logs]
            )
            writer.set_meta("reliability", reliability_meta(engine, failure))
            if job is not None:
                for key, value in master_meta(job).items():
                    writer.set_meta(key, value)
    finally:
        if writer is not None:
            writer.close(status)
    if stuck is not None:
        raise stuck
