"""The timeline as Chrome trace-event JSON (OUT.json of ``cocoi report --timeline``).

``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`` opens in
https://ui.perfetto.dev and chrome://tracing; see :mod:`.timeline`'s docstring for the
tracks and times. Pure Python: no MPI here.
"""

from __future__ import annotations

from typing import Any

from .spans import MASTER_RANK, Mark, Span, Timeline

CLOCK_NOTE = (
    "Times are seconds since the master's run start (MPI.Wtime on rank 0). Worker clocks "
    "differ, so worker spans are placed by the master's send and arrival times and the "
    "workers' own durations: receive starts at the master's sent_t, then the worker's "
    "receive, queue, compute and injected-sleep durations follow one after the other, and "
    "'send + network' lasts until the master's arrival_t (clamped at 0 and flagged if the "
    "durations add up to more). Injected sleeps really happen before compute, after "
    "compute and before the send; they are drawn as one block after compute."
)


# Chrome's reserved colour names, so bad subtasks stand out in chrome://tracing too.
STATUS_CNAME = {"late": "bad", "failed": "terrible", "dead": "terrible", "timeout": "terrible"}


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
