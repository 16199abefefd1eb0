"""The batch job: one dispatch on rank, the master's request loop, provenance.

``run_job(cfg, comm)`` is what ``python -m cocoi_mpi.run`` calls on every rank. Ranks
past n + 1 leave at once; rank 0 is the master; ranks 1..n are workers.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import torch
from mpi4py import MPI
from tqdm import tqdm

from .. import __version__
from ..codes import CONV, scheme_info
from ..engine.core import install, install_blocks, type1_convs
from ..experiment.config import RunConfig, scenario_of
from ..experiment.progress import echo_line, progress
from ..experiment.resume import open_trace, resume_at
from ..experiment.summary import RunSummary
from ..experiment.sweep import Cell, cells, parse_sweep, select_part
from ..learned.scheme import LearnedScheme
from ..models import MODELS, build_model, input_shape, load_weights
from ..models.data import load_dataset
from ..models.inputs import check_shape, load_input, seeded_inputs
from ..traces.core import TraceWriter
from .devices import emulate_devices
from .idle import GcWatch, Usage
from .master import Interrupted, MasterEngine, ShutdownTimeout, WorkerError
from .protocol import resident_mb, split_report
from .signals import SignalFlag
from .ulfm import failed_ranks, ulfm_enabled
from .worker import run_worker

AUTO_TIMEOUT_MIN_S = 60.0  # --round-timeout auto: never less than this
AUTO_TIMEOUT_FACTOR = 20.0  # ... and this many times the plan's predicted round time
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


def base_k(cfg: RunConfig) -> int:
    """The k of layers without a plan (and of every layer when k is an integer)."""
    return cfg.k if isinstance(cfg.k, int) else max(1, cfg.n - 2)


def pieces_per_task(cfg: RunConfig, scheme: str) -> int:
    """m of a scheme: the --code generator's for MDS codes (2 for rotation), else 1."""
    return scheme_info(scheme).pieces_per_task(cfg.code)


def planned_methods(cfg: RunConfig) -> set[tuple[str, int]]:
    """(method, m) pairs some cell plans with: --k auto/star, or sweep entries cocoi:auto."""
    needed = set()
    for cell in run_cells(cfg):
        k = cell.k if cell.k is not None else cfg.k
        if isinstance(k, str):
            needed.add((k, pieces_per_task(cfg, cell.scheme)))
    return needed


def make_plans(cfg: RunConfig, model: torch.nn.Module, input_shape) -> dict[tuple, list]:
    """k per conv from the latency model, and which convs are type-1, per (method, m)."""
    needed = planned_methods(cfg)
    if not needed:
        return {}
    from ..latency.model import Profile, pi4_profile
    from ..latency.planning import plan_model

    profile = Profile.load(cfg.profile) if cfg.profile else pi4_profile()
    failures = cfg.failures if cfg.scenario in (2, 3) else 0
    plans = {}
    for method, m in sorted(needed):
        entries = plan_model(
            model, input_shape, cfg.n, profile, method=method, m=m, seed=cfg.seed, failures=failures
        )
        plans[(method, m)] = [plan for _, plan in entries]
    return plans


def plan_lines(cfg: RunConfig, key: tuple, plans: list) -> list[str]:
    chosen = [p for p in plans if p.distribute]
    head = (
        f"plan (k={key[0]}, m={key[1]}, profile {cfg.profile or 'built-in Pi 4B + WiFi'}): "
        f"{len(chosen)} of {len(plans)} convs distributed"
    )
    body = [
        f"  {p.name}: k={p.k} (k°={p.k_circ}, k*={p.k_star}), predicted "
        f"{p.predicted_s:.3g} s vs local {p.local_s:.3g} s"
        for p in chosen
    ]
    return [head, *body]


def install_for(job: MasterJob, engine: MasterEngine, cfg: RunConfig) -> list:
    """Proxies for every conv some cell distributes, and for the learned scheme's blocks
    (whose codecs the engine was given: :func:`learned_codecs`)."""
    locs = [cb.loc for cb in job.blocks]
    specs = install_convs(job, engine, cfg) if codes_convs(cfg) else []
    job.block_specs = install_blocks(job.model, engine, locs)
    return specs


def learned_codecs(blocks: list) -> dict[str, LearnedScheme]:
    """Block name -> the learned scheme of its codec, for the engine."""
    return {cb.name: LearnedScheme(cb.codec) for cb in blocks}


def codes_convs(cfg: RunConfig) -> bool:
    """Does some cell serve a scheme that distributes single convs (not conv blocks)?"""
    return any(scheme_info(cell.scheme).unit == CONV for cell in run_cells(cfg))


def install_convs(job: MasterJob, engine: MasterEngine, cfg: RunConfig) -> list:
    """Proxies for every conv some cell distributes; without plans, all convs but the first."""
    if not job.plans:
        return install(job.model, engine)
    only = {p.name for plans in job.plans.values() for p in plans if p.distribute}
    if any(not isinstance(c.k if c.k is not None else cfg.k, str) for c in run_cells(cfg)):
        job.default_layers = {name for name, _ in type1_convs(job.model, skip_first=True)}
        only |= job.default_layers
    return install(job.model, engine, only=only)


def configure_cell(cfg: RunConfig, job: MasterJob, engine: MasterEngine, cell: Cell) -> None:
    """Scheme, k (or the plan's per-layer k) and faults of one sweep cell."""
    k = cell.k if cell.k is not None else cfg.k
    if isinstance(k, str):
        plans = job.plans[(k, pieces_per_task(cfg, cell.scheme))]
        planned = {p.name: p.k for p in plans if p.distribute}
        active = set(planned)
    else:
        planned, active = {}, job.default_layers if job.plans else None
    scheme_k = k if isinstance(k, int) else base_k(cfg)
    engine.configure(cell.scheme, scheme_k, cell.scenario, cell.fault_seed, planned, active)


def base_timeout(cfg: RunConfig) -> float | None:
    """A round's deadline in seconds (None: wait as long as it takes)."""
    if cfg.round_timeout == "off":
        return None
    return AUTO_TIMEOUT_MIN_S if cfg.round_timeout == "auto" else float(cfg.round_timeout)


def layer_timeouts(cfg: RunConfig, job: MasterJob) -> dict[str, float]:
    """--round-timeout auto: 20x the plan's predicted latency of each layer, >= 60 s."""
    if cfg.round_timeout != "auto":
        return {}
    return {
        p.name: max(AUTO_TIMEOUT_MIN_S, AUTO_TIMEOUT_FACTOR * p.predicted_s)
        for plans in job.plans.values()
        for p in plans
    }


@dataclass
class MasterJob:
    """What the master prepares before any worker is involved."""

    model: torch.nn.Module
    inputs: torch.Tensor  # (N, C, H, W); request i uses inputs[i % N]
    num_classes: int
    specs: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)  # (method, m) -> [LayerPlan]
    default_layers: set | None = None  # convs distributed by cells with an integer k
    path: Path = Path()
    labels: torch.Tensor | None = None  # true classes when the inputs are a dataset
    requests: int = 1
    blocks: list = field(default_factory=list)  # learning.CodedBlock per codec in use
    block_specs: list = field(default_factory=list)
    sends: SendTimes = field(default_factory=lambda: SendTimes())  # shipped, not yet written
    usage: Usage = field(default_factory=Usage)  # the master's CPU and wall s, from set-up's end
    gc: GcWatch = field(default_factory=GcWatch)  # no collection inside a request

    def input_for(self, request: int) -> torch.Tensor:
        return self.inputs[request % len(self.inputs)].unsqueeze(0)


def prepare(cfg: RunConfig) -> MasterJob:
    """Model, weights, inputs and output path; every user error surfaces here."""
    model = build_model(cfg.model, seed=cfg.seed)
    if cfg.weights:
        load_weights(model, cfg.weights)
    model.eval()
    expected = MODELS[cfg.model].input_shape if cfg.model in MODELS else None
    labels = None
    if cfg.input:
        inputs = load_input(cfg.input)
        check_shape(inputs, expected, cfg.model)
    elif cfg.data:
        dataset = load_dataset(cfg.data, "test")
        inputs, labels = dataset.images, dataset.labels
        check_shape(inputs, expected, cfg.model)
    else:
        inputs = seeded_inputs(input_shape(cfg.model, model), cfg.seed, cfg.requests or 1)
    try:
        with torch.no_grad():
            logits = model(inputs[:1])  # a model that rejects this input fails here
    except Exception as exc:
        shape = tuple(inputs.shape[1:])
        raise ValueError(f"model {cfg.model} fails on input of shape {shape}: {exc}") from None
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise ValueError(f"{cfg.model} returned shape {tuple(logits.shape)}; expected (1, classes)")
    plans = make_plans(cfg, model, tuple(inputs.shape[1:]))
    blocks = load_codecs(cfg, model, tuple(inputs.shape[1:]))
    return MasterJob(
        model,
        inputs,
        int(logits.shape[1]),
        plans=plans,
        path=output_path(cfg),
        labels=labels,
        requests=cfg.requests if cfg.requests is not None else len(inputs),
        blocks=blocks,
    )


def load_codecs(cfg: RunConfig, model: torch.nn.Module, shape: tuple) -> list:
    """The learned codecs, checked against this model, its blocks and the input size.

    With --hybrid the model's last conv block stays on the master (Non-linear*)."""
    from ..geometry.blocks import find_blocks
    from ..learned.training import CodecError, load_codec

    blocks = [load_codec(path, model, cfg.model, shape)[0] for path in cfg.codec]
    names = [cb.name for cb in blocks]
    if len(set(names)) != len(names):
        raise CodecError(f"two codecs for the same block: {', '.join(names)}")
    if cfg.hybrid:
        last = find_blocks(model)[-1].name
        blocks = [cb for cb in blocks if cb.name != last]
    if cfg.codec and not blocks:
        raise CodecError("--hybrid leaves no block to code: give a codec for another block")
    return blocks


def output_path(cfg: RunConfig) -> Path:
    if cfg.out:
        path = Path(cfg.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"{safe(cfg.model)}_{cfg.code}_n{cfg.n}_k{cfg.k}_{stamp}"
        path = Path("results") / f"{name}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


# Where a Slurm job ran, when it did: enough to find its log and accounting record.
SLURM_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_CLUSTER_NAME",
)


def provenance(comm: MPI.Comm, hosts: list[str]) -> dict:
    """Versions and where the run happened, stored as root attributes."""
    return dict(
        versions=versions(),
        hostnames=hosts,
        world_size=MPI.COMM_WORLD.Get_size(),
        git_commit=git_commit(),
        command=" ".join(sys.argv),
        slurm={key: os.environ[key] for key in SLURM_KEYS if key in os.environ},
    )


def versions() -> dict:
    return dict(
        cocoi_mpi=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        mpi4py=__import__("mpi4py").__version__,
        mpi_library=MPI.Get_library_version().splitlines()[0].strip(),
        h5py=h5py.__version__,
        hdf5=h5py.version.hdf5_version,
        ulfm=ulfm_support(),
    )


def ulfm_support() -> str:
    """Can this MPI survive a worker's death? Open MPI says so in ompi_info."""
    if ulfm_enabled():
        return "enabled (mpirun --with-ft ulfm)"
    if not MPI.Get_library_version().startswith("Open MPI"):
        return "unknown (not Open MPI; see docs/reliability.md)"
    tool = shutil.which("ompi_info") or str(Path(sys.executable).with_name("ompi_info"))
    try:
        out = subprocess.run([tool], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (ompi_info did not run)"
    line = next((ln for ln in out.splitlines() if "FT MPI support" in ln), "")
    if line.strip().endswith("yes"):
        return "available, off (start with mpirun --with-ft ulfm)"
    return "not available (Open MPI built without --with-ft)"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


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


@dataclass
class SendTimes:
    """Workers' send durations (protocol.SENDS) on their way into the trace. One whose
    subtask row is not written yet (a late reply's row comes with a later request) is
    tried again after the next append, at most MAX_TRIES times, so none piles up."""

    MAX_TRIES = 100
    waiting: list[tuple[tuple[int, int, float], int]] = field(default_factory=list)

    def write(self, writer: TraceWriter, entries: list, last: bool = False) -> None:
        todo = [(e, 0) for e in entries] + self.waiting
        unmatched = iter(writer.set_worker_send(e for e, _ in todo))
        nxt = next(unmatched, None)
        self.waiting = []
        for entry, tries in todo:
            if entry == nxt:
                if not last and tries < self.MAX_TRIES:
                    self.waiting.append((entry, tries + 1))
                nxt = next(unmatched, None)


def master_meta(job: MasterJob) -> dict:
    """The master's CPU and wall seconds since set-up, and its collector's figures:
    the collections run between requests (count, total, longest) and those that
    started inside a request anyway (gc_in_request, 0 unless something forced one)."""
    usage = dict(rank=0, cpu_s=job.usage.cpu_s(), wall_s=job.usage.wall_s())
    return {"master": usage, **job.gc.meta()}


def reliability_meta(engine: MasterEngine, failure: BaseException | None = None) -> dict:
    """What the run survived: dead workers and when they were seen, stuck ones, leaks;
    and the worker error that ended it, if one did (see worker_error)."""
    return dict(
        fault_tolerance="ulfm" if ulfm_enabled() else "none",
        liveness_channel=engine.liveness_meta(),
        dead_workers=sorted(engine.dead.values(), key=lambda d: d["t"]),
        unresponsive_workers=engine.unresponsive,
        worker_error=worker_error(failure),
        worker_errors_at_shutdown=engine.later_errors,
        open_receives_at_end=len(engine.late),
        open_sends_at_end=len(engine.sends),
    )


def worker_error(failure: BaseException | None) -> dict | None:
    """A WorkerError as the trace keeps it: its one line, and the worker's stack (with
    its rank and host) that rank 0 printed once under it. None for any other end."""
    if not isinstance(failure, WorkerError):
        return None
    message, stack = split_report(str(failure))
    return dict(message=message, traceback=stack)


def run_cells(cfg: RunConfig) -> list[Cell]:
    """The batches to serve: a sweep's interleaved cells, or the one the options name."""
    if cfg.sweep is None:
        return [Cell(cfg.scheme, scenario_of(cfg), 0, cfg.seed)]
    schemes, scenarios, reps = parse_sweep(dict(cfg.sweep), scenario_of(cfg))
    return select_part(cells(schemes, scenarios, reps, cfg.seed), cfg.part)


def serve(
    cfg: RunConfig,
    job: MasterJob,
    engine: MasterEngine,
    writer: TraceWriter,
    echo: Callable,
    signalled: SignalFlag,
) -> RunSummary:
    """The request loop over every cell: coded forward, check, one flush per request.

    On a terminal one bar covers every request of every cell (postfix: the cell and the
    last latency); elsewhere one line per request (see cocoi_mpi.experiment.progress)."""
    plan = run_cells(cfg)
    skip = resume_at(writer, engine, echo)  # cells a cut-off trace holds (--resume)
    with (
        progress((len(plan) - skip) * job.requests, cfg.model, cfg.quiet, unit="req") as bar,
        job.gc.serving(),
    ):
        return serve_cells(cfg, job, engine, writer, echo, signalled, plan, bar, skip)


def serve_cells(
    cfg: RunConfig,
    job: MasterJob,
    engine: MasterEngine,
    writer: TraceWriter,
    echo: Callable,
    signalled: SignalFlag,
    plan: list[Cell],
    bar: tqdm,
    skip: int = 0,
) -> RunSummary:
    """serve's loop; the bar (live or disabled) advances once per request. The first
    ``skip`` cells are in the trace already: request ids go on after theirs."""
    summary, sends = RunSummary(), job.sends
    total = len(plan) * job.requests
    first = skip * job.requests
    # Sweeps repeat their inputs in every cell: keep each local forward. One cell
    # never repeats one: keep none (a long run's master stays flat).
    references: dict[int, torch.Tensor] | None = {} if len(plan) - skip > 1 else None
    for cell in plan[skip:]:
        configure_cell(cfg, job, engine, cell)
        for i in range(job.requests):
            if (signame := signalled.name()) is not None:
                raise Interrupted(f"stopped by {signame}")
            job.gc.begin()  # no automatic collection until the request is written
            x = job.input_for(i)
            ref = reference(cfg, job, engine, i, references)
            req = first + summary.requests
            engine.begin_request(req, fault_request=i)
            engine.poll_late()
            t0 = engine.now()
            with torch.no_grad():
                logits = job.model(x)
            t1 = engine.now()
            rounds, subtasks = engine.take_rows()
            row = request_row(cfg, cell, req, t0, t1, logits, ref, rounds)
            if job.labels is not None:
                row["label"] = int(job.labels[i % len(job.labels)])
            row["master_rss_mb"] = resident_mb()
            writer.append("rounds", rounds)
            writer.append("subtasks", subtasks)
            sends.write(writer, engine.take_sends())
            writer.append("requests", [row])
            writer.append_logits(logits[0].numpy())
            writer.flush()
            job.gc.end()  # the collection that is due runs here, between requests, timed
            summary.add(row)
            bar.set_postfix_str(cell_postfix(row), refresh=False)
            bar.update(1)
            if not cfg.quiet:
                echo_line(bar, echo, progress_line(total, row))
    return summary


def cell_postfix(row: dict) -> str:
    """The bar's postfix: which cell is being served and the last request's latency."""
    return (
        f"{row['scheme']}, scenario {row['scenario']}, level {row['level']:g}, "
        f"rep {row['repetition']}: {row['latency']:.3f} s"
    )


def reference(
    cfg: RunConfig,
    job: MasterJob,
    engine: MasterEngine,
    i: int,
    cache: dict[int, torch.Tensor] | None,
) -> torch.Tensor | None:
    """The local forward of input i; kept in ``cache`` (if given) for the next cell."""
    if not cfg.check:
        return None
    key = i % len(job.inputs)
    if cache is not None and key in cache:
        return cache[key]
    with torch.no_grad(), engine.local_only():
        ref = job.model(job.input_for(i))
    if cache is not None:
        cache[key] = ref
    return ref


def request_row(
    cfg: RunConfig,
    cell: Cell,
    req: int,
    t0: float,
    t1: float,
    logits: torch.Tensor,
    ref: torch.Tensor | None,
    rounds: list[dict],
) -> dict:
    """One row of the requests table, with the check against the local forward."""
    row = dict(
        request=req,
        scheme=cell.name,
        scenario=cell.scenario.kind,
        level=cell.scenario.level,
        repetition=cell.repetition,
        k=cell_k if isinstance(cell_k := (cell.k if cell.k is not None else cfg.k), int) else -1,
        start=t0,
        end=t1,
        latency=t1 - t0,
        predicted=int(logits.argmax()),
        n_rounds=len(rounds),
        encode_s=sum(r["split_s"] + r["encode_s"] for r in rounds),
        decode_s=sum(r["decode_s"] + r["merge_s"] for r in rounds),
        distributed_s=sum(r["total_s"] for r in rounds),
    )
    if ref is not None:
        err = float((logits - ref).abs().max())
        row.update(
            reference_predicted=int(ref.argmax()),
            max_abs_err=err,
            rel_err=err / max(float(ref.abs().max()), 1e-30),
        )
    return row


def progress_line(total: int, row: dict) -> str:
    share = 100.0 * (row["encode_s"] + row["decode_s"]) / row["latency"]
    line = (
        f"request {row['request'] + 1}/{total} [{row['scheme']}, scenario {row['scenario']}"
        f", level {row['level']:g}, rep {row['repetition']}]: {row['latency']:.3f} s, "
        f"{row['n_rounds']} coded rounds, encode+decode {share:.1f}%, top-1 {row['predicted']}"
    )
    if "rel_err" in row:
        line += f", rel err {row['rel_err']:.1e}"
    return line


def echo_summary(cfg: RunConfig, job: MasterJob, summary: RunSummary, echo: Callable) -> int:
    """The closing lines; exit code 3 when an exact scheme's result does not match the
    local one (learned codes are approximate by design: their agreement is reported)."""
    coded = f", {len(job.specs)} type-1 convs" if job.specs else ""
    if job.blocks:
        coded += f", learned codes on {', '.join(cb.name for cb in job.blocks)}"
    echo(
        f"{cfg.model}: {summary.requests} requests on n={cfg.n} workers, k={cfg.k}, "
        f"code={cfg.code}{'-sys' if cfg.systematic else ''}{coded}"
    )
    echo(
        f"latency mean {summary.latency_mean:.3f} s (min {summary.latency_min:.3f}, max "
        f"{summary.latency_max:.3f}); encode+decode {summary.coding_share:.1f}% of it"
    )
    for line in summary.accuracy_lines():
        echo(line)
    code = 0
    learned, exact = summary.learned, summary.exact
    if cfg.check and learned.count:
        echo(
            f"learned codes (approximate): top-1 equal to the local forward "
            f"{learned.same_top1}/{learned.count}, max |err|/max|logit| = "
            f"{learned.worst_rel_err:.2e}"
        )
    if cfg.check and exact.count:
        ok = exact.worst_rel_err <= cfg.tolerance and exact.same_top1 == exact.count
        echo(
            f"check against local forward: max |err|/max|logit| = {exact.worst_rel_err:.2e} "
            f"(tolerance {cfg.tolerance:.0e}), top-1 identical {exact.same_top1}/"
            f"{exact.count}: {'OK' if ok else 'FAILED'}"
        )
        code = 0 if ok else 3
    echo(f"wrote {job.path}")
    return code
