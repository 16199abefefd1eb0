"""``cocoi report`` and ``cocoi merge``: summarising a run's trace (tables, CSV, figures, the
request timeline) and joining a sweep's parts."""

from __future__ import annotations

import click

from ..errors import RunError
from .common import reported_as


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False),
    help="Also write requests.csv, rounds.csv, subtasks.csv into this folder.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Also write PNG figures (latency per scheme and level, per-layer split) here.",
)
@click.option(
    "--timeline",
    "timeline_out",
    type=click.Path(dir_okay=False),
    help="Also write OUT.json (Chrome/Perfetto trace events) and OUT.png (Gantt chart): "
    "one track per rank for the chosen requests (docs/timeline.md).",
)
@click.option(
    "--timeline-requests",
    help="Requests for --timeline, e.g. 0,3. [default: the first; in a sweep the first "
    "of each scheme]",
)
def report(
    path: str,
    csv_dir: str | None,
    plots_dir: str | None,
    timeline_out: str | None,
    timeline_requests: str | None,
) -> None:
    """Summarise an HDF5 trace (also one from a killed job)."""
    from ..analysis.report import report_main

    wanted = _timeline_requests(timeline_out, timeline_requests)
    with reported_as(RunError, RuntimeError):  # RuntimeError: no matplotlib
        plan = _timeline_plan(path, timeline_out, wanted)
        report_main(path, csv_dir, plots_dir)
        if plan is not None:
            from ..analysis.timeline import write_timeline

            for written in write_timeline(*plan):
                click.echo(f"wrote {written}")


def _timeline_requests(out: str | None, text: str | None) -> tuple[int, ...] | None:
    """--timeline-requests as ints; it means nothing without --timeline."""
    if text is None:
        return None
    if out is None:
        raise click.BadParameter("needs --timeline OUT", param_hint="--timeline-requests")
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        msg = f"expected request numbers like 0,3, got {text!r}"
        raise click.BadParameter(msg, param_hint="--timeline-requests") from None


def _timeline_plan(path: str, out: str | None, wanted: tuple[int, ...] | None):
    """(trace, out, requests) for write_timeline, or None without --timeline. The
    requests are checked before the summary prints, so a bad one fails at once."""
    if out is None:
        return None
    from ..analysis.timeline import pick_requests
    from ..traces.reader import read_trace

    trace = read_trace(path)
    return trace, out, pick_requests(trace, wanted)


@click.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge(out: str, parts: tuple[str, ...]) -> None:
    """Join a sweep's parts (run with --part I/N, e.g. a Slurm array) into OUT."""
    from ..traces.merge import merge_traces

    done = merge_traces(out, list(parts))
    click.echo(f"merged {done['parts']} parts, {done['requests']} requests -> {done['out']}")
