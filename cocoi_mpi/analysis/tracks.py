"""Trace rows placed as spans and marks on the ranks' tracks (``cocoi report --timeline``).

The master's track: its rounds and their phases, and the local layers between them; the
workers' tracks: each subtask's phases, placed by the master's send and arrival times and the
worker's own durations; the pipelined master: per-subtask preparation and sends. The rules
are in :mod:`.timeline`'s docstring. Pure numpy: no MPI here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..traces.reader import Trace
from .spans import MASTER_RANK, PREPARE_LANE, Mark, Span

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


# --------------------------------------------------------------------------- trace rows


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
    """Every subtask row of the requests, placed on its worker's track (timeline.py says how)."""
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
