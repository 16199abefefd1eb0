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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResultError
from ..traces.reader import Trace

__all__ = [
    "CLOCK_NOTE",
    "Timeline",
    "TimelineError",
    "build_timeline",
    "chrome_trace",
    "pick_requests",
    "plot_gantt",
    "write_timeline",
]

CLOCK_NOTE = (
    "Times are seconds since the master's run start (MPI.Wtime on rank 0). Worker clocks "
    "differ, so worker spans are placed by the master's send and arrival times and the "
    "workers' own durations: receive starts at the master's sent_t, then the worker's "
    "receive, queue, compute and injected-sleep durations follow one after the other, and "
    "'send + network' lasts until the master's arrival_t (clamped at 0 and flagged if the "
    "durations add up to more). Injected sleeps really happen before compute, after "
    "compute and before the send; they are drawn as one block after compute."
)
SLEEP_NOTE = (
    "injected delays (receive delay before compute, slowdown after compute, send delay "
    "before the send) are interleaved with the other phases in reality; drawn as one block"
)
MASTER_PHASES = ("split", "encode", "send", "wait", "decode", "merge")
WORKER_PHASES = (
    ("receive", "worker_recv_s"),
    ("queue", "worker_queue_s"),
    ("compute", "worker_compute_s"),
    ("injected sleep", "worker_slept_s"),
)
BAD_STATUSES = ("late", "skipped", "failed", "dead", "timeout")
PHASE_COLOURS = {
    "local layers": "#c6dbef",
    "split": "#8c564b",
    "encode": "#ff7f0e",
    "send": "#1f77b4",
    "wait": "#e0e0e0",
    "remainder": "#393b79",
    "decode": "#2ca02c",
    "merge": "#98df8a",
    "fallback (local)": "#bcbd22",
    "prepare subtask": "#ffbb78",
    "receive": "#aec7e8",
    "queue": "#dbdb8d",
    "compute": "#9467bd",
    "injected sleep": "#c5b0d5",
    "send + network": "#17becf",
    "round trip": "#cccccc",
}
LEGEND_LABELS = {
    "remainder": "remainder (in wait)",
    "round trip": "no worker times",
    "prepare subtask": "prepare subtask",
}
# The stripe under a worker's bars; "used" (the normal case) has none. Colours the
# phases do not use, so a late or failed subtask stands out.
STATUS_COLOURS = {
    "late": "#f0027f",
    "skipped": "#666666",
    "failed": "#e31a1c",
    "dead": "#000000",
    "timeout": "#ffd700",
}
# Chrome's reserved colour names, so bad subtasks stand out in chrome://tracing too.
STATUS_CNAME = {"late": "bad", "failed": "terrible", "dead": "terrible", "timeout": "terrible"}
MASTER_RANK = 0
PREPARE_LANE = 1  # the master's second thread: per-subtask preparation (pipelined master)


class TimelineError(ResultError, ValueError):
    """A timeline that cannot be drawn (e.g. a request not in the trace); one line."""


@dataclass
class Span:
    """One bar: ``phase`` picks its colour ("" for the parent spans the PNG leaves out)."""

    rank: int
    lane: int
    name: str
    phase: str
    start: float  # seconds since run start, master clock
    dur: float
    request: int
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    inner: bool = False  # drawn thinner, on top of its parent phase (the remainder)


@dataclass
class Mark:
    """One instant: a send at ``sent_t``, or a reply that never came."""

    rank: int
    lane: int
    name: str
    kind: str  # "send" or "no reply"
    t: float
    request: int
    cat: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    """Spans and marks of the chosen requests, with what the titles need."""

    requests: list[int]
    spans: list[Span]
    marks: list[Mark]
    titles: dict[int, str]
    lane_names: dict[tuple[int, int], str]
    source: str = ""
    model: str = ""


# --------------------------------------------------------------------------- choosing rows


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; NaN/inf -> None, because strict JSON has no NaN."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _select(columns: dict[str, np.ndarray], mask: np.ndarray) -> list[dict[str, Any]]:
    """Rows where ``mask`` holds, as dicts of plain values plus ``_index`` (row number)."""
    idx = np.flatnonzero(mask)
    picked = {name: col[idx].tolist() for name, col in columns.items()}
    rows = []
    for i, index in enumerate(idx.tolist()):
        row = {name: values[i] for name, values in picked.items()}
        row["_index"] = index
        rows.append(row)
    return rows


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


# --------------------------------------------------------------------------- master track


def _num(value: Any) -> float:
    """A time or duration as a float; None (not there, e.g. a round not in the trace) is NaN."""
    return math.nan if value is None else float(value)


def _dur(value: Any) -> float:
    """A duration that can be drawn: unknown or negative counts as 0."""
    v = _num(value)
    return v if math.isfinite(v) and v > 0 else 0.0


def _round_phases(row: dict[str, Any], req: int) -> tuple[list[Span], float]:
    """The round's phases laid end to end from its start; returns them and their end.

    Zero-length phases are skipped (a round without split work, say); the remainder the
    master computes while waiting is an inner span at the start of the wait.
    """
    t = float(row["start"])
    spans: list[Span] = []
    base = {"round": row["round"], "layer": row["layer"]}
    if row["fallback"]:
        dur = _dur(row["total_s"])
        span = Span(MASTER_RANK, 0, "fallback (local)", "fallback (local)", t, dur, req, "master")
        span.args = {**base, "why": "too few live workers: the master computed the layer"}
        return [span], t + dur
    for phase in MASTER_PHASES:
        dur = _dur(row[f"{phase}_s"])
        if dur == 0.0:
            continue
        spans.append(Span(MASTER_RANK, 0, phase, phase, t, dur, req, "master", dict(base)))
        if phase == "wait":
            spans.extend(_remainder(row, t, dur, req, base))
        t += dur
    return spans, t


def _remainder(
    row: dict[str, Any], t: float, wait: float, req: int, base: dict[str, Any]
) -> list[Span]:
    """The columns the master computes itself overlap its wait: an inner span there."""
    rem = _dur(row["remainder_s"])
    if rem == 0.0 or row["remainder_width"] == 0:
        return []
    args = {**base, "remainder_width": row["remainder_width"], "remainder_s": rem}
    name = "remainder (master computes)"
    return [Span(MASTER_RANK, 0, name, "remainder", t, min(rem, wait), req, "master", args, True)]


def _round_span(row: dict[str, Any], req: int) -> list[Span]:
    """A parent span per round (all its columns in args) with its phases inside."""
    phases, end = _round_phases(row, req)
    start = float(row["start"])
    end = max(end, start + _dur(row["total_s"]))
    tag = " (fallback)" if row["fallback"] else ""
    name = f"round {row['round']} {row['layer']}{tag}"
    args = {k: _plain(v) for k, v in row.items() if k != "_index"}
    return [Span(MASTER_RANK, 0, name, "", start, end - start, req, "round", args), *phases]


def _gaps(bounds: list[tuple[float, float]], req: int) -> list[Span]:
    """'local layers' between consecutive coded rounds (and before/after them)."""
    args = {"what": "layers the master runs itself (not coded)"}
    return [
        Span(MASTER_RANK, 0, "local layers", "local layers", a, b - a, req, "master", dict(args))
        for (_, a), (b, _) in zip(bounds, bounds[1:], strict=False)
        if b - a > 0
    ]


def master_spans(trace: Trace, req: int) -> list[Span]:
    """The master's track for one request: request span, rounds, phases, local layers."""
    rounds = [
        r
        for r in _select(trace.rounds, trace.rounds["request"] == req)
        if math.isfinite(_num(r["start"]))
    ]
    spans: list[Span] = []
    for row in sorted(rounds, key=lambda r: float(r["start"])):
        spans.extend(_round_span(row, req))
    bounds = [(s.start, s.start + s.dur) for s in spans if s.cat == "round"]
    row = _request_row(trace, req)
    ends = (_num(row["start"]), _num(row["end"])) if row else (math.nan, math.nan)
    if all(math.isfinite(t) for t in ends):
        lo, hi = min([ends[0]] + [b[0] for b in bounds]), max([ends[1]] + [b[1] for b in bounds])
        bounds = [(lo, lo), *bounds, (hi, hi)]
    spans.extend(_gaps(bounds, req))
    if bounds:
        lo, hi = bounds[0][0], max(b[1] for b in bounds)
        args = {k: _plain(v) for k, v in (row or {}).items() if k != "_index"}
        name = _request_name(row, req)
        spans.insert(0, Span(MASTER_RANK, 0, name, "", lo, hi - lo, req, "request", args))
    return spans


def _request_row(trace: Trace, req: int) -> dict[str, Any] | None:
    """The request's row, or None for a request the run was killed in."""
    rows = _select(trace.requests, trace.requests["request"] == req)
    return rows[0] if rows else None


def _request_name(row: dict[str, Any] | None, req: int) -> str:
    """'request 3 (cocoi)': the scheme is what tells sweep requests apart."""
    return f"request {req} ({row['scheme']})" if row else f"request {req} (unfinished)"


# --------------------------------------------------------------------------- worker tracks


def _subtask_args(row: dict[str, Any]) -> dict[str, Any]:
    """Every field of the subtask row, plus its id (its index in the subtasks table)."""
    args = {k: _plain(v) for k, v in row.items() if k != "_index"}
    args["subtask_id"] = row["_index"]
    return args


def _short_args(row: dict[str, Any]) -> dict[str, Any]:
    """The keys that tie a phase span to its subtask."""
    return {
        "subtask_id": row["_index"],
        "round": row["round"],
        "code_row": row["code_row"],
        "status": row["status"],
    }


def _suffix(status: str) -> str:
    """Bad statuses go into span names, so they show without opening args."""
    return f" [{status}]" if status in BAD_STATUSES else ""


def _phase_spans(row: dict[str, Any], start: float, lane: int) -> tuple[list[Span], float]:
    """Receive, queue, compute, sleep from the worker's durations, end to end from start."""
    spans, t = [], start
    status = str(row["status"])
    for phase, col in WORKER_PHASES:
        dur = _dur(row[col])
        if dur == 0.0:
            continue
        args = _short_args(row) | {col: dur}
        if phase == "injected sleep":
            args["note"] = SLEEP_NOTE
        name = phase + _suffix(status)
        spans.append(Span(row["worker"], lane, name, phase, t, dur, row["request"], "worker", args))
        t += dur
    return spans, t


def _worker_times_known(row: dict[str, Any]) -> bool:
    """A failed notice or skipped reply has no worker durations: one round-trip span."""
    return any(math.isfinite(_num(row[col])) for _, col in WORKER_PHASES)


def _subtask_spans(row: dict[str, Any], lane: int) -> list[Span]:
    """A subtask that came back: parent span (the whole row in args) and its phases."""
    sent, arrived = float(row["sent_t"]), float(row["arrival_t"])
    status, rank, req = str(row["status"]), int(row["worker"]), int(row["request"])
    args = _subtask_args(row)
    if not _worker_times_known(row):
        name = f"round trip (worker times unknown){_suffix(status)}"
        args["placement"] = "sent_t to arrival_t; the reply carried no worker durations"
        child = Span(
            rank,
            lane,
            name,
            "round trip",
            sent,
            max(arrived - sent, 0.0),
            req,
            "worker",
            _short_args(row),
        )
        return [_parent(row, lane, sent, child.dur, args), child]
    phases, t = _phase_spans(row, sent, lane)
    left = arrived - t
    tail = _short_args(row) | {"worker_send_s": _plain(row["worker_send_s"])}
    if left < 0:
        tail |= {"clamped": True, "overrun_s": -left}
        args |= {"clamped": True, "overrun_s": -left}
    args["placement"] = "receive starts at the master's sent_t; send + network ends at arrival_t"
    name = "send + network" + _suffix(status)
    phases.append(Span(rank, lane, name, "send + network", t, max(left, 0.0), req, "worker", tail))
    end = max(arrived, t)
    return [_parent(row, lane, sent, end - sent, args), *phases]


def _parent(row: dict[str, Any], lane: int, start: float, dur: float, args: dict) -> Span:
    """The span that stands for the subtask row itself (category "subtask")."""
    status = str(row["status"])
    name = f"subtask {row['code_row']} (round {row['round']}){_suffix(status)}"
    return Span(
        int(row["worker"]), lane, name, "", start, dur, int(row["request"]), "subtask", args
    )


def _no_reply(row: dict[str, Any], t: float, where: str) -> Mark:
    """A reply that never arrived: an instant at the send (or the round start)."""
    args = _subtask_args(row) | {"placed_at": where}
    name = f"no reply ({row['status']})"
    return Mark(int(row["worker"]), 0, name, "no reply", t, int(row["request"]), "subtask", args)


def _assign_lane(ends: dict[int, list[float]], rank: int, start: float, end: float) -> int:
    """First lane of the rank free at ``start``: a track's spans never overlap."""
    lanes = ends.setdefault(rank, [])
    for lane, busy_until in enumerate(lanes):
        if busy_until <= start:
            lanes[lane] = end
            return lane
    lanes.append(end)
    return len(lanes) - 1


def worker_events(trace: Trace, requests: Sequence[int]) -> tuple[list[Span], list[Mark]]:
    """Every subtask row of the requests, placed on its worker's track (see module doc)."""
    mask = np.isin(trace.subtasks["request"], list(requests))
    rows = sorted(_select(trace.subtasks, mask), key=lambda r: (_sort_time(r), r["_index"]))
    rounds = trace.rounds
    round_start = dict(zip(rounds["round"].tolist(), rounds["start"].tolist(), strict=True))
    spans: list[Span] = []
    marks: list[Mark] = []
    ends: dict[int, list[float]] = {}
    for row in rows:
        sent, arrived = _num(row["sent_t"]), _num(row["arrival_t"])
        if not (math.isfinite(sent) and math.isfinite(arrived)):
            t, where = _no_reply_time(row, round_start)
            marks.append(_no_reply(row, t, where))
            continue
        group = _subtask_spans(row, 0)
        lane = _assign_lane(ends, int(row["worker"]), group[0].start, group[0].start + group[0].dur)
        for span in group:
            span.lane = lane
        spans.extend(group)
    return spans, marks


def _sort_time(row: dict[str, Any]) -> float:
    """Sends in time order; rows never sent go last."""
    t = _num(row["sent_t"])
    return t if math.isfinite(t) else math.inf


def _no_reply_time(row: dict[str, Any], round_start: dict[int, float]) -> tuple[float, str]:
    """Where a missing reply is marked: its send, else its round's start."""
    sent = _num(row["sent_t"])
    if math.isfinite(sent):
        return sent, "sent_t (the reply never arrived)"
    start = _num(round_start.get(int(row["round"])))
    return (start if math.isfinite(start) else 0.0), "round start (sent_t unknown)"


# --------------------------------------------------------------------------- pipelined master


def master_subtask_events(trace: Trace, requests: Sequence[int]) -> tuple[list[Span], list[Mark]]:
    """Send instants, and 'prepare subtask i' spans where rows carry ``encode_s``.

    ``encode_s`` per subtask only exists once the master pipelines cutting, encoding and
    sending per subtask; traces without the column get the send instants alone.
    """
    mask = np.isin(trace.subtasks["request"], list(requests))
    rows = _select(trace.subtasks, mask)
    spans, marks = [], []
    for row in rows:
        sent = _num(row["sent_t"])
        if not math.isfinite(sent):
            continue
        keys = _short_args(row) | {"worker": row["worker"]}
        name = f"send subtask {row['code_row']} -> rank {row['worker']}"
        marks.append(Mark(MASTER_RANK, 0, name, "send", sent, row["request"], "send", keys))
        enc = _dur(row.get("encode_s"))
        if enc > 0:
            name = f"prepare subtask {row['code_row']}"
            spans.append(
                Span(
                    MASTER_RANK,
                    PREPARE_LANE,
                    name,
                    "prepare subtask",
                    sent - enc,
                    enc,
                    row["request"],
                    "master",
                    keys | {"encode_s": enc},
                )
            )
    return spans, marks


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


# --------------------------------------------------------------------------- Chrome JSON


def _us(seconds: float) -> float:
    """Seconds -> microseconds, to the nanosecond (enough, and keeps the file short)."""
    return round(seconds * 1e6, 3)


def _pid(rank: int) -> int:
    """Process id of a rank's track: rank + 1, as Perfetto treats pid 0 (the Linux idle
    task) specially."""
    return rank + 1


def _tid(rank: int, lane: int) -> int:
    """Thread id, unique over the whole trace: the main lane's equals the pid (as a
    process's main thread does), extra lanes are pid * 1000 + lane."""
    return _pid(rank) if lane == 0 else _pid(rank) * 1000 + lane


def _span_event(span: Span) -> dict[str, Any]:
    """A complete event; the end is rounded the same way as the start so nesting holds."""
    ts, end = _us(span.start), _us(span.start + span.dur)
    event = {
        "name": span.name,
        "cat": span.cat,
        "ph": "X",
        "ts": ts,
        "dur": round(max(end - ts, 0.0), 3),
        "pid": _pid(span.rank),
        "tid": _tid(span.rank, span.lane),
        "args": {"rank": span.rank, "request": span.request, "phase": span.phase or span.cat}
        | span.args,
    }
    status = span.args.get("status")
    if status in STATUS_CNAME:
        event["cname"] = STATUS_CNAME[status]
    return event


def _mark_event(mark: Mark) -> dict[str, Any]:
    """An instant event on its thread."""
    return {
        "name": mark.name,
        "cat": mark.cat,
        "ph": "i",
        "s": "t",
        "ts": _us(mark.t),
        "pid": _pid(mark.rank),
        "tid": _tid(mark.rank, mark.lane),
        "args": {"rank": mark.rank, "request": mark.request} | mark.args,
    }


def _metadata_events(timeline: Timeline) -> list[dict[str, Any]]:
    """Name and order the tracks: one process per rank, master first."""
    events = []
    for rank in sorted({rank for rank, _ in timeline.lane_names}):
        role = "master" if rank == MASTER_RANK else "worker"
        for name, args in (
            ("process_name", {"name": f"rank {rank} ({role})"}),
            ("process_sort_index", {"sort_index": rank}),
        ):
            events.append({"name": name, "ph": "M", "pid": _pid(rank), "args": args})
    for (rank, lane), label in sorted(timeline.lane_names.items()):
        pid, tid = _pid(rank), _tid(rank, lane)
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}}
        )
    return events


def chrome_trace(timeline: Timeline) -> dict[str, Any]:
    """The trace-event JSON object Perfetto and chrome://tracing open."""
    events = _metadata_events(timeline)
    events += [_span_event(s) for s in sorted(timeline.spans, key=lambda s: (s.start, -s.dur))]
    events += [_mark_event(m) for m in sorted(timeline.marks, key=lambda m: m.t)]
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": timeline.source,
            "model": timeline.model,
            "requests": timeline.requests,
            "titles": [timeline.titles[r] for r in timeline.requests],
            "clock": CLOCK_NOTE,
            "time_origin": "ts is microseconds since the master's run start",
            "tracks": "pid = rank + 1 (pid 0 is special in Perfetto); args.rank is the rank",
            "made_by": "cocoi report --timeline",
        },
    }


# --------------------------------------------------------------------------- Gantt PNG


def _pyplot():
    """matplotlib with the Agg backend (no display needed); a clear error without it."""
    try:
        import matplotlib
    except ImportError:
        msg = "the timeline PNG needs matplotlib: pip install 'cocoi_mpi[plots]'"
        raise RuntimeError(msg) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(spans: Sequence[Span], marks: Sequence[Mark]) -> list[tuple[int, list[int]]]:
    """(rank, its lanes) from top to bottom: master first, each rank's lanes in order."""
    lanes: dict[int, set[int]] = {MASTER_RANK: {0}}
    for item in [*spans, *marks]:
        lanes.setdefault(item.rank, set()).add(item.lane)
    return [(rank, sorted(lanes[rank])) for rank in sorted(lanes)]


def _lane_boxes(rows: list[tuple[int, list[int]]]) -> dict[tuple[int, int], tuple[float, float]]:
    """(y bottom, height) per (rank, lane); each rank gets one unit of height, row 0 on top."""
    boxes = {}
    for i, (rank, lanes) in enumerate(rows):
        top = len(rows) - 1 - i
        h = 0.8 / len(lanes)
        for j, lane in enumerate(lanes):
            boxes[(rank, lane)] = (top - 0.4 + (len(lanes) - 1 - j) * h, h)
    return boxes


def _extent(spans: Sequence[Span], marks: Sequence[Mark]) -> tuple[float, float]:
    """First and last time of a request's events (its panel's x range, master clock)."""
    t0 = min([s.start for s in spans] + [m.t for m in marks], default=0.0)
    t1 = max([s.start + s.dur for s in spans] + [m.t for m in marks], default=t0)
    return t0, t1


def _unit(timeline: Timeline) -> tuple[float, str]:
    """ms unless a panel spans 2 s or more; one unit for all panels, so they compare."""
    widths = [b - a for a, b in (_extent(*_request_items(timeline, r)) for r in timeline.requests)]
    return (1e3, "ms") if max(widths, default=0.0) < 2 else (1.0, "s")


def _draw_span(ax, span: Span, box: tuple[float, float], t0: float, k: float) -> None:
    """A phase bar; worker bars leave room for the status stripe underneath."""
    y, h = box
    if span.inner:
        y, h = y + 0.6 * h, 0.4 * h
    elif span.rank != MASTER_RANK:
        y, h = y + 0.25 * h, 0.75 * h
    colour = PHASE_COLOURS.get(span.phase, "#999999")
    ax.broken_barh(
        [((span.start - t0) * k, span.dur * k)], (y, h), facecolors=colour, edgecolor="none"
    )


def _draw_status(ax, span: Span, box: tuple[float, float], t0: float, k: float) -> None:
    """The stripe under a subtask: its status at a glance (late, failed, ...)."""
    y, h = box
    colour = STATUS_COLOURS.get(str(span.args.get("status")))
    if colour is None:
        return
    ax.broken_barh(
        [((span.start - t0) * k, span.dur * k)],
        (y + 0.02 * h, 0.2 * h),
        facecolors=colour,
        edgecolor="none",
    )


def _draw_mark(ax, mark: Mark, box: tuple[float, float], t0: float, k: float) -> None:
    """Sends as ticks on top of the master row; missing replies as red crosses."""
    y, h = box
    x = (mark.t - t0) * k
    if mark.kind == "send":
        ax.plot([x, x], [y + 0.8 * h, y + h], color="black", linewidth=0.6)
    else:
        colour = STATUS_COLOURS.get(str(mark.args.get("status")), "#e31a1c")
        ax.plot([x], [y + 0.5 * h], marker="x", color=colour, markersize=6, mew=1.5)


def _draw_panel(ax, timeline: Timeline, req: int, unit: tuple[float, str]) -> set[str]:
    """One request's Gantt chart; returns the phases/statuses/marks drawn (for the legend)."""
    spans, marks = _request_items(timeline, req)
    rows = _rows(spans, marks)
    boxes = _lane_boxes(rows)
    t0, _ = _extent(spans, marks)
    k, unit_name = unit
    used: set[str] = set()
    for span in sorted(spans, key=lambda s: s.inner):
        if span.cat == "subtask":
            _draw_status(ax, span, boxes[(span.rank, span.lane)], t0, k)
            used.add("status:" + str(span.args.get("status")))
        elif span.phase:
            _draw_span(ax, span, boxes[(span.rank, span.lane)], t0, k)
            used.add(span.phase)
    for mark in marks:
        _draw_mark(ax, mark, boxes[(mark.rank, mark.lane)], t0, k)
        used.add("mark:" + mark.kind)
        if mark.kind == "no reply":
            used.add("status:" + str(mark.args.get("status")))
    ax.set_yticks([len(rows) - 1 - i for i in range(len(rows))])
    ax.set_yticklabels([_rank_label(rank) for rank, _ in rows], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"{unit_name} since the request's first event (master clock)", fontsize=8)
    ax.set_title(timeline.titles[req], fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    return used


def _rank_label(rank: int) -> str:
    """Row label: rank number and role."""
    return "rank 0 (master)" if rank == MASTER_RANK else f"rank {rank}"


def _legend_handles(used: set[str]) -> list:
    """Legend entries for what was drawn only, phases first, then statuses and marks."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=c, label=LEGEND_LABELS.get(p, p)) for p, c in PHASE_COLOURS.items() if p in used
    ]
    handles += [
        Patch(color=c, label=f"subtask {s}")
        for s, c in STATUS_COLOURS.items()
        if f"status:{s}" in used
    ]
    if "mark:send" in used:
        handles.append(Line2D([], [], color="black", linewidth=0.8, label="master sends"))
    if "mark:no reply" in used:
        handles.append(
            Line2D(
                [],
                [],
                color="#e31a1c",
                marker="x",
                linestyle="",
                label="x: no reply (status colour)",
            )
        )
    return handles


def plot_gantt(timeline: Timeline, path: str | os.PathLike[str]) -> Path:
    """One panel per request, one row per rank, colours per phase, legend on the right."""
    plt = _pyplot()
    heights = [0.28 * len(_rows(*_request_items(timeline, r))) + 1.0 for r in timeline.requests]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(11, sum(heights) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    used: set[str] = set()
    unit = _unit(timeline)
    for ax, req in zip(axes[:, 0], timeline.requests, strict=True):
        used |= _draw_panel(ax, timeline, req, unit)
    fig.suptitle(_suptitle(timeline), fontsize=10)
    handles = _legend_handles(used)
    # A short chart (one request, few ranks) grows until the legend fits beside it.
    fig.set_size_inches(11, max(sum(heights) + 0.6, 0.19 * len(handles) + 0.9))
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.82, 0.93),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 0.82, 0.97))
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _request_items(timeline: Timeline, req: int) -> tuple[list[Span], list[Mark]]:
    """The spans and marks of one request."""
    spans = [s for s in timeline.spans if s.request == req]
    return spans, [m for m in timeline.marks if m.request == req]


def _suptitle(timeline: Timeline) -> str:
    """Figure title: model and file; the caveat that worker bars are placed, not clocked."""
    model = f"{timeline.model}: " if timeline.model else ""
    return (
        f"{model}timeline of {os.path.basename(timeline.source)} "
        "(worker bars placed by the master's send/arrival times and the workers' durations)"
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
