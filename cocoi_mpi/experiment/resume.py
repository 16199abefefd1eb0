"""``--resume``: go on with a sweep whose trace was cut off (Slurm time limit, lost node,
a SIGKILLed mpirun), so that the finished file holds what one uninterrupted run would.

What makes that possible:

- **A cell is complete when each of its requests has its ``requests`` row and its
  logits row.** The master writes a request's rounds, subtasks, requests row and logits
  in that order, flushing after each append, and serves cells in plan order; so the
  complete cells of a cut-off file are a prefix of the plan, and rows past them (the
  interrupted cell, or a torn tail: rounds without their request, a request without
  its logits) are dropped and served again. Nothing else in the file decides it.
- **Same cells, same faults.** The plan (cell order) is recomputed from the seed; a
  cell's faults come from its fault seed (seed, repetition, level) and the request's
  index within the cell, never from a random stream consumed in order
  (sweep.cells, scenarios.FaultModel). Request ids go on from the kept ones, round
  ids from the last kept round, so a resumed file numbers everything as an
  uninterrupted run does; times go on from the last kept request's end.
- **The same config, or nothing.** Every trace stores ``config_fingerprint`` (a hash
  of the settings that decide what is served: not ``out``, ``name``, ``quiet``,
  ``threads``, ``resume``) and ``requests_per_cell``; a trace from another config is
  refused in one line, and so is one whose requests do not follow this plan.
- **One writer at a time.** The master holds an advisory lock (flock) on its trace
  while it writes; the kernel drops it when the process dies, even by SIGKILL. A
  --resume that finds it held (an orphaned master of the cut-off run, still writing
  after mpirun was killed) is refused instead of writing beside it.
- **A SIGKILL between flushes cannot unflush.** Every append is flushed, so a killed
  process loses at most the request being written (a lost node may lose what its OS
  had not yet put on disk). A file HDF5 cannot open at all (none in 210 SIGKILLs of
  a writer doing nothing but appends and flushes, but HDF5 does not promise it) is
  moved aside as ``FILE.unreadable-<time>`` and the sweep starts afresh; a file that
  is not HDF5 at all is refused, not moved.

The ``resumed`` root attribute lists each resumption: when, where, how many cells were
kept and how many request rows of the interrupted cell were dropped. No MPI here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..traces.reader import Trace, TraceError, read_trace
from ..traces.writer import TraceWriter
from .sweep import Cell

# Settings that change where a run writes or how it prints, never what it serves.
NOT_IDENTITY = ("resume", "out", "name", "quiet", "threads")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ResumeError(UserError, ValueError):
    """A trace --resume must not continue; the message is one line naming the file."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a cut-off run goes on: the complete cells it keeps, and the ids to go on from."""

    cells: int  # complete cells kept (a prefix of the plan)
    requests: int  # their requests: cells x requests per cell
    last_round: int  # the highest round id among them (0: none)
    last_end: float  # the last kept request's end, seconds since the run's start
    dropped: int  # request rows past the kept cells (the interrupted cell's), served again
    previous_status: str  # how the cut-off run ended ("running": killed outright)


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide what a run serves, as JSON would give them back."""
    plain = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    return {key: value for key, value in plain.items() if key not in NOT_IDENTITY}


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short hash of :func:`identity`: equal for runs that serve the same cells."""
    text = json.dumps(identity(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_config(cfg: Any) -> dict[str, Any]:
    """The config a trace records: ``resume`` says how a run started, not what it is."""
    config = cfg.to_dict()
    config.pop("resume", None)
    return config


def check_same_config(trace: Trace, cfg: Any) -> None:
    """Refuse a trace another config wrote, naming the settings that differ."""
    mine = stored_config(cfg)
    theirs = trace.attrs.get("config_fingerprint") or config_fingerprint(trace.config)
    if theirs == config_fingerprint(mine):
        return
    old, new = identity(trace.config), identity(mine)
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    what = f"{', '.join(differ)} differ" if differ else "its config fingerprint differs"
    raise ResumeError(
        f"{trace.path} was written by another config ({what}); --resume goes on only "
        "with the same sweep: remove the file or choose another --out"
    )


def same_cell(requests: Mapping[str, np.ndarray], i: int, cell: Cell) -> bool:
    """Does request row i belong to this cell of the plan?"""
    return (
        requests["scheme"][i] == cell.name
        and int(requests["scenario"][i]) == cell.scenario.kind
        and float(requests["level"][i]) == cell.scenario.level
        and int(requests["repetition"][i]) == cell.repetition
    )


def resume_point(trace: Trace, plan: Sequence[Cell], per_cell: int) -> ResumePoint:
    """The complete cells at the head of a trace, checked request by request against
    the plan; a request row without its logits is a torn tail, not a result."""
    req = trace.requests
    written = min(trace.n_rows("requests"), len(trace.logits))
    for i in range(written):
        cell = i // per_cell
        if cell >= len(plan) or req["request"][i] != i or not same_cell(req, i, plan[cell]):
            raise ResumeError(
                f"{trace.path}: request row {i} does not follow this sweep's cell order "
                "(a merged or edited trace?); --resume cannot go on with it"
            )
    cells = written // per_cell
    keep = cells * per_cell
    rounds = trace.rounds["round"][trace.rounds["request"] < keep]
    return ResumePoint(
        cells=cells,
        requests=keep,
        last_round=int(rounds.max()) if len(rounds) else 0,
        last_end=float(req["end"][:keep].max()) if keep else 0.0,
        dropped=trace.n_rows("requests") - keep,
        previous_status=trace.status,
    )


def requests_per_cell(trace: Trace, requests: int | None) -> int | None:
    """Requests per cell: as stored (set at the start), else as this run would serve."""
    return trace.attrs.get("requests_per_cell", requests)


def check_resume(cfg: Any, path: Path, plan: Sequence[Cell]) -> tuple[int | None, list[str]]:
    """What --resume does with ``path``, decided on rank 0 before any worker is busy.

    Returns an exit code (None: run, fresh or resumed by the master; 0: the trace
    holds every cell, nothing to do) and lines to print. Raises ResumeError to refuse.
    """
    if not path.exists():
        return None, []
    check_unlocked(path)
    trace = readable_trace(path)
    if trace is None:
        aside = move_aside(path)
        return None, [f"cocoi: {path} cannot be read (cut off mid-write?); moved to {aside}"]
    check_same_config(trace, cfg)
    if trace.complete:
        return 0, [f"cocoi: {path} is complete already: nothing to resume"]
    per_cell = requests_per_cell(trace, cfg.requests)
    if per_cell is None:  # --data without a stored count: the master knows, after loading
        return None, []
    point = resume_point(trace, plan, per_cell)
    if point.cells < len(plan):
        return None, []
    TraceWriter.reopen(path, point.requests).close("complete")
    return 0, [f"cocoi: {path} holds every cell already (cut off while closing); marked complete"]


def lock(path: Path) -> Any:
    """The file, open, with this process's exclusive flock on it; ResumeError if another
    process holds it (the lock goes when the file is closed or the process dies). On a
    file system without flock (Lustre mounted noflock) there is no such guard."""
    fh = open(path, "rb")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ResumeError(
            f"{path} is being written by a running job (an orphaned rank of the cut-off "
            "run?); --resume once it has ended"
        ) from None
    except OSError:  # flock not supported here: go on unguarded
        pass
    return fh


def check_unlocked(path: Path) -> None:
    """Refuse a trace whose writer still lives; take and drop the lock to see."""
    lock(path).close()


def hold_lock(writer: TraceWriter) -> TraceWriter:
    """Keep the trace locked while this writer writes it (see :func:`lock`)."""
    writer.lock = lock(writer.path)
    return writer


def readable_trace(path: Path) -> Trace | None:
    """The trace, or None when HDF5 cannot read the file; a file that is not HDF5, or
    an HDF5 file that is no cocoi trace, is refused (it is nobody's cut-off run)."""
    with open(path, "rb") as fh:
        if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise ResumeError(f"{path} is not an HDF5 file; --resume leaves it alone")
    try:
        return read_trace(path)
    except TraceError as exc:
        if "not a cocoi trace" in str(exc) or "format_version" in str(exc):
            raise ResumeError(f"{exc}; --resume leaves it alone") from None
        return None


def move_aside(path: Path) -> Path:
    """Keep an unreadable trace for inspection under a name no run writes."""
    aside = path.with_name(f"{path.name}.unreadable-{datetime.now():%Y%m%d-%H%M%S}")
    os.replace(path, aside)
    return aside


def open_trace(
    cfg: Any,
    path: Path,
    *,
    meta: Mapping[str, Any],
    num_classes: int,
    requests: int,
    plan: Sequence[Cell],
) -> TraceWriter:
    """The master's trace writer: a fresh file, or with --resume the cut-off one
    reopened past its complete cells (``writer.resumed_from`` says where)."""
    if cfg.resume and path.exists():
        return reopen_trace(cfg, path, meta, requests, plan)
    config = stored_config(cfg)
    stamp = dict(config_fingerprint=config_fingerprint(config), requests_per_cell=requests)
    writer = TraceWriter(
        path, config=config, meta={**meta, **stamp}, num_classes=num_classes, overwrite=True
    )
    return hold_lock(writer)


def reopen_trace(
    cfg: Any, path: Path, meta: Mapping[str, Any], requests: int, plan: Sequence[Cell]
) -> TraceWriter:
    """The cut-off trace reopened under this process's lock, past its complete cells."""
    held = lock(path)
    try:
        writer = reopen_checked(cfg, path, meta, requests, plan)
    except BaseException:
        held.close()
        raise
    writer.lock = held
    return writer


def reopen_checked(
    cfg: Any, path: Path, meta: Mapping[str, Any], requests: int, plan: Sequence[Cell]
) -> TraceWriter:
    """Check the trace again (rank 0 looked before), drop its torn tail, reopen it."""
    trace = read_trace(path)
    check_same_config(trace, cfg)
    stored = requests_per_cell(trace, requests)
    if stored != requests:
        raise ResumeError(
            f"{path} has {stored} requests per cell, this run {requests}; --resume "
            "goes on only with the same inputs"
        )
    point = resume_point(trace, plan, requests)
    if point.cells == len(plan):
        raise ResumeError(f"{path} holds every cell already: nothing to resume")
    writer = TraceWriter.reopen(path, point.requests)
    history = [*trace.attrs.get("resumed", []), resumption(point, meta)]
    writer.set_meta("resumed", history)
    writer.flush()
    writer.resumed_from = point
    return writer


def resumption(point: ResumePoint, meta: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of the ``resumed`` attribute: when, where, and what was kept."""
    provenance = {k: meta[k] for k in ("hostnames", "command", "slurm", "git_commit") if k in meta}
    return dict(
        time=datetime.now().astimezone().isoformat(timespec="milliseconds"),
        kept_cells=point.cells,
        kept_requests=point.requests,
        dropped_requests=point.dropped,
        previous_status=point.previous_status,
        **provenance,
    )


def resume_at(writer: TraceWriter, engine: Any, echo: Callable[[str], Any]) -> int:
    """Set the engine to go on where the kept cells end; returns how many cells to skip.

    Round ids continue after the last kept round (as in an uninterrupted run) and the
    engine's clock is moved so that times go on from the last kept request's end."""
    point = writer.resumed_from
    if point is None:
        return 0
    engine.round = max(engine.round, point.last_round)
    engine.t0 = engine.clock() - point.last_end
    echo(
        f"resuming {writer.path}: {point.cells} complete cells kept ({point.requests} "
        f"requests), {point.dropped} request rows of the interrupted cell served again"
    )
    return point.cells
