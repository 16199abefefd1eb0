"""Timeline of a request: a Chrome trace-event JSON and a Gantt PNG (``cocoi report --timeline``).

One track per rank. The master's track (rank 0) shows, per coded round, its phases one
after the other from the round's ``start``: split, encode, send, wait, decode, merge (a
fallback round is one "fallback (local)" span; the remainder the master computes during
the wait is drawn inside the wait), and between rounds the "local layers" it runs itself.
If subtask rows carry an ``encode_s`` (a master that cuts, encodes and sends per subtask),
each subtask also gets a "prepare subtask i" span ending at its ``sent_t`` on a second
master thread, and every send is an instant event at ``sent_t``.

Worker tracks show, per subtask, receive, queue, compute, injected sleep and
"send + network". Workers' clocks are not the master's, so worker spans are *placed by the
master's send and arrival times and the workers' own durations*: the receive starts at the
master's ``sent_t``, the worker's measured durations follow one after the other, and
"send + network" is what is left until the master's ``arrival_t`` (clamped at 0 and flagged
when the durations add up to more). The injected sleeps really happen in three places
(before compute, after compute, before the send); they are drawn as one block after
compute. A subtask whose reply never arrived is an instant "no reply (status)" at its
``sent_t``. Overlapping subtasks of one worker go to extra lanes (threads) of its track.

The JSON (``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``) opens in
https://ui.perfetto.dev and chrome://tracing; ``ts``/``dur`` are microseconds since the
master's run start, and a rank's track is process ``rank + 1`` (Perfetto treats pid 0
specially; ``args.rank`` and the process name give the rank). Every subtask row of a
drawn request is exactly one event of category "subtask" whose args carry the whole row
and its ``subtask_id`` (its index in the ``subtasks`` table). Pure numpy/matplotlib: no
MPI here.

This module picks the requests, builds the timeline and writes both files; the parts:
:mod:`.spans` (what a timeline holds), :mod:`.tracks` (rows placed on tracks),
:mod:`.chrome_json` (OUT.json) and :mod:`.gantt` (OUT.png).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ResultError
from ..traces.reader import Trace
from .chrome_json import chrome_trace
from .gantt import plot_gantt
from .spans import MASTER_RANK, Mark, Span, Timeline
from .tracks import _num, _request_row, master_spans, master_subtask_events, worker_events

__all__ = [
    "TimelineError",
    "build_timeline",
    "pick_requests",
    "write_timeline",
]


class TimelineError(ResultError, ValueError):
    """A timeline that cannot be drawn (e.g. a request not in the trace); one line."""


# --------------------------------------------------------------------------- choosing rows


def _known_requests(trace: Trace) -> list[int]:
    """Request ids with a request row or at least one round (a killed run's last one)."""
    ids = np.concatenate([trace.requests["request"], trace.rounds["request"]])
    return sorted({int(i) for i in ids.tolist()})


def _default_requests(trace: Trace) -> list[int]:
    """The first request, or in a sweep (several schemes) the first of each scheme."""
    req = trace.requests
    if len(req["request"]):
        order = np.argsort(req["request"], kind="stable")
        first: dict[str, int] = {}
        schemes, ids = req["scheme"][order].tolist(), req["request"][order].tolist()
        for scheme, rid in zip(schemes, ids, strict=True):
            first.setdefault(str(scheme), int(rid))
        return sorted(first.values())
    known = _known_requests(trace)
    return known[:1]


def _describe(ids: list[int]) -> str:
    """'0-4' for a contiguous run of ids, else the first few."""
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
    head = ", ".join(str(i) for i in ids[:8])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")


def pick_requests(trace: Trace, wanted: Sequence[int] | None = None) -> list[int]:
    """The requests to draw: ``wanted`` checked against the trace, or the default ones.

    Raises TimelineError naming the file and the requests it has, so the CLI can print
    one clear line instead of drawing an empty chart.
    """
    known = _known_requests(trace)
    if not known:
        raise TimelineError(f"{trace.path}: the trace has no requests yet (nothing to draw)")
    if not wanted:
        return _default_requests(trace)
    missing = [r for r in wanted if r not in set(known)]
    if missing:
        raise TimelineError(
            f"{trace.path}: no request {', '.join(map(str, missing))} in the trace "
            f"(it has requests {_describe(known)})"
        )
    return list(dict.fromkeys(int(r) for r in wanted))


# --------------------------------------------------------------------------- whole timeline


def _title(trace: Trace, req: int) -> str:
    """'request 3: cocoi, scenario 1, level 0.5, latency 1.529 s' for panels and args."""
    row = _request_row(trace, req)
    if row is None:
        return f"request {req}: unfinished (no request row; the run was killed?)"
    lat = _num(row["latency"])
    lat_text = "unknown" if not math.isfinite(lat) else f"{lat * 1e3:.1f} ms"
    lat_text = f"{lat:.3f} s" if lat >= 1 else lat_text
    return (
        f"request {req}: {row['scheme']}, scenario {row['scenario']}, level {row['level']:g}, "
        f"latency {lat_text}, {row['n_rounds']} coded round{'' if row['n_rounds'] == 1 else 's'}"
    )


def _lane_names(spans: Sequence[Span], marks: Sequence[Mark]) -> dict[tuple[int, int], str]:
    """Thread names: the master's two threads, a worker's lanes."""
    names = {}
    for item in [*spans, *marks]:
        key = (item.rank, item.lane)
        if item.rank == MASTER_RANK:
            names[key] = "master" if item.lane == 0 else "master: prepare subtasks"
        else:
            names[key] = "worker" if item.lane == 0 else f"worker (overlap lane {item.lane})"
    names.setdefault((MASTER_RANK, 0), "master")
    return names


def build_timeline(trace: Trace, requests: Sequence[int] | None = None) -> Timeline:
    """Spans and marks of the requests (default: see :func:`pick_requests`)."""
    chosen = pick_requests(trace, requests)
    spans: list[Span] = []
    for req in chosen:
        spans.extend(master_spans(trace, req))
    prep, sends = master_subtask_events(trace, chosen)
    work, missing = worker_events(trace, chosen)
    spans += prep + work
    marks = sends + missing
    return Timeline(
        requests=chosen,
        spans=spans,
        marks=marks,
        titles={req: _title(trace, req) for req in chosen},
        lane_names=_lane_names(spans, marks),
        source=trace.path,
        model=str(trace.config.get("model", "")),
    )


# --------------------------------------------------------------------------- both files


def _stem(out: str | os.PathLike[str]) -> Path:
    """OUT, OUT.json or OUT.png all mean the pair OUT.json + OUT.png."""
    path = Path(out)
    return path.with_suffix("") if path.suffix in (".json", ".png") else path


def write_timeline(
    trace: Trace, out: str | os.PathLike[str], requests: Sequence[int] | None = None
) -> list[Path]:
    """Write OUT.json (trace events) and OUT.png (Gantt); returns both paths.

    The JSON goes first so a missing matplotlib still leaves the trace-event file.
    """
    timeline = build_timeline(trace, requests)
    stem = _stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_name(stem.name + ".json")
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(chrome_trace(timeline), fh, allow_nan=False, separators=(",", ":"))
    png_path = plot_gantt(timeline, stem.with_name(stem.name + ".png"))
    return [json_path, png_path]
