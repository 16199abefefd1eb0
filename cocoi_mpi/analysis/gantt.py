"""The timeline as a Gantt chart (OUT.png of ``cocoi report --timeline``): one panel per
request, one row per rank, colours per phase, a legend on the right. Needs matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .spans import MASTER_RANK, Mark, Span, Timeline

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
