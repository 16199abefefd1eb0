"""Plain-text summary and CSV export of an HDF5 trace (``cocoi report FILE.h5``).

Works on traces of killed jobs too: the header says the run is incomplete and the tables
show whatever was flushed before the end. Fits and plots belong elsewhere; this module only
reads a :class:`~cocoi_mpi.traces.reader.Trace` and formats numbers. Lines stay within 100 columns.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..traces.reader import Trace, TraceError, read_trace
from ..traces.schema import SUBTASK_STATUSES, TABLES
from .experiments import layer_split, scheme_stats

__all__ = ["TraceError", "report_main", "summarize", "write_csv"]

WIDTH = 100
CONFIG_KEYS = ("model", "scheme", "code", "n", "k")


MAX_REQUEST_ROWS = 40


def _mean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN marks 'unknown'); NaN if there are none, no warning."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else math.nan


def _fmt(value: float, spec: str = ".3f", scale: float = 1.0) -> str:
    """A number, or "-" when it is unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    return format(value * scale, spec)


def _clip(text: str, width: int) -> str:
    """Keep the tail of long names (the module path's end is the informative part)."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _short(value: Any, width: int = 40) -> str:
    """A config value on one line."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Align columns: the first ``left`` columns left-aligned, numbers right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _status_line(trace: Trace) -> str:
    """Say plainly whether the run finished, and why not if it did not."""
    if trace.complete:
        return "complete"
    if trace.status == "running":
        return "INCOMPLETE (status 'running': the writer never closed; the job was killed?)"
    return f"INCOMPLETE ({_short(trace.status, 80)})"


def _hosts(value: Any) -> str:
    """Hostnames (list per rank or dict rank->host) as 'N distinct: a, b, ...'."""
    hosts = list(value.values()) if isinstance(value, dict) else list(value or [])
    distinct = sorted({str(h) for h in hosts})
    return f"{len(distinct)} distinct: " + _short(", ".join(distinct), 70) if distinct else "-"


def _header(trace: Trace) -> list[str]:
    """Which run this was: file, outcome, configuration and provenance."""
    attrs, config = trace.attrs, trace.config
    shown = "  ".join(f"{key} {_short(config[key], 30)}" for key in CONFIG_KEYS if key in config)
    lines = [
        f"Trace       {trace.path}",
        f"Status      {_status_line(trace)}",
        f"Config      {shown or '-'}",
        f"World size  {attrs.get('world_size', '-')}",
        f"Started     {attrs.get('start_time') or '-'}   ended {attrs.get('end_time') or '-'}",
    ]
    if "hostnames" in attrs:
        lines.append(f"Hosts       {_hosts(attrs['hostnames'])}")
    if attrs.get("slurm"):
        lines.append(f"Slurm       {_slurm(attrs['slurm'])}")
    testbed = attrs.get("testbed")
    if isinstance(testbed, dict) and testbed.get("summary"):
        lines.append(f"Testbed     {_short(testbed['summary'], WIDTH - 12)}")
    if attrs.get("merged_from"):
        lines.append(f"Merged      {_short(_merged(attrs['merged_from']), WIDTH - 12)}")
    if attrs.get("git_commit"):
        lines.append(f"Git commit  {attrs['git_commit']}")
    versions = attrs.get("versions")
    if isinstance(versions, dict) and versions:
        text = ", ".join(f"{k} {v}" for k, v in versions.items())
        lines.append(f"Versions    {_short(text, WIDTH - 12)}")
    reliability = attrs.get("reliability")
    if isinstance(reliability, dict):
        lines.append(f"Failures    {_failures(reliability)}")
        lines += _worker_error_lines(reliability)
    return lines


def _slurm(env: dict) -> str:
    """The batch job a run was, so its log and accounting can be found."""
    job = env.get("SLURM_JOB_ID", "?")
    if "SLURM_ARRAY_JOB_ID" in env:
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '?')}"
    text = f"job {job}"
    if env.get("SLURM_JOB_NAME"):
        text += f" ({env['SLURM_JOB_NAME']})"
    if env.get("SLURM_NTASKS"):
        text += f", {env['SLURM_NTASKS']} tasks"
    if env.get("SLURM_JOB_NODELIST"):
        text += f" on {env['SLURM_JOB_NODELIST']}"
    return text


def _merged(parts: list) -> str:
    """cocoi merge's parts: how many, and the Slurm jobs they were."""
    jobs = sorted({_slurm(p["slurm"]).split(",")[0] for p in parts if p.get("slurm")})
    text = f"{len(parts)} parts ({sum(p.get('requests', 0) for p in parts)} requests)"
    return text + (f" from {', '.join(jobs)}" if jobs else "")


def _failures(rel: dict) -> str:
    """Real failures the run survived (dead or stuck workers) and the FT mode it ran in."""
    dead = rel.get("dead_workers") or []
    parts = [f"fault tolerance {rel.get('fault_tolerance', '?')}"]
    parts += [f"rank {d['rank']} dead (seen at request {d['request']})" for d in dead]
    if rel.get("unresponsive_workers"):
        parts.append(f"unresponsive ranks {rel['unresponsive_workers']}")
    if not dead and not rel.get("unresponsive_workers"):
        parts.append("no worker died")
    return _short(", ".join(parts), WIDTH - 12)


def _worker_error_lines(rel: dict) -> list[str]:
    """The worker error that ended the run, and where its stack is: rank 0 printed it
    once at the time, the trace keeps it for later (too long for this header)."""
    error = rel.get("worker_error")
    if not isinstance(error, dict):
        return []
    stack = str(error.get("traceback") or "").splitlines()
    where = stack[0].split(" (most recent")[0] if stack else "worker"
    where = _short(where, 30)  # a long host name must not hide where the stack is
    return [
        f"Error       {_short(error.get('message', '?'), WIDTH - 12)}",
        f"            stack of {where} ({len(stack)} lines): reliability.worker_error.traceback",
    ]


def _share(req: dict[str, np.ndarray]) -> np.ndarray:
    """Encode+decode time as a percentage of each request's latency."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (req["encode_s"] + req["decode_s"]) / req["latency"]


def _check_cells(ref: int, predicted: int, rel_err: float) -> tuple[str, str, str]:
    """Reference columns: reference class, relative error, top-1 agreement."""
    if ref < 0:
        return "-", _fmt(rel_err, ".1e"), "-"
    return str(ref), _fmt(rel_err, ".1e"), "ok" if ref == predicted else "MISMATCH"


def _request_lines(trace: Trace) -> list[str]:
    """One line per request."""
    req = trace.requests
    n = trace.n_rows("requests")
    if n == 0:
        return ["Requests: none recorded"]
    share = _share(req)
    rows = []
    shown = n if n <= MAX_REQUEST_ROWS else MAX_REQUEST_ROWS
    for i in range(shown):
        ref, rel, top1 = _check_cells(
            int(req["reference_predicted"][i]), int(req["predicted"][i]), float(req["rel_err"][i])
        )
        rows.append(
            [
                str(req["request"][i]),
                _clip(str(req["scheme"][i]), 16),
                str(req["scenario"][i]),
                _fmt(req["latency"][i], ".4f"),
                str(req["predicted"][i]),
                ref,
                rel,
                top1,
                _fmt(share[i], ".1f"),
                str(req["n_rounds"][i]),
            ]
        )
    headers = [
        "request",
        "scheme",
        "scen",
        "latency s",
        "predicted",
        "reference",
        "rel err",
        "top-1",
        "enc+dec %",
        "rounds",
    ]
    more = [f"... {n - shown} more requests (cocoi report --csv DIR writes them all)"]
    return [f"Requests ({n})"] + _table(headers, rows, left=0) + (more if shown < n else [])


def _split_lines(trace: Trace) -> list[str]:
    """Fig. 5: per layer, CoCoI's and uncoded's time and the encode+decode part of it."""
    rows = [r for r in layer_split(trace) if r["scheme"] in ("cocoi", "uncoded")]
    if len({r["scheme"] for r in rows}) < 2:
        return []
    table = [
        [
            r["layer"],
            r["scheme"],
            _fmt(r["total"], ".1f", 1e3),
            _fmt(r["execution"], ".1f", 1e3),
            _fmt(r["coding"], ".1f", 1e3),
            _fmt(100 * r["coding"] / r["total"], ".1f"),
        ]
        for r in sorted(rows, key=lambda r: (r["layer_index"], r["scheme"]))
    ]
    headers = ["layer", "scheme", "total ms", "exec ms", "enc+dec ms", "enc+dec %"]
    return ["Per-layer split (Fig. 5; enc+dec includes split and merge)"] + _table(
        headers, table, left=2
    )


def _scheme_lines(trace: Trace) -> list[str]:
    """Per scenario, level and scheme: latency statistics and reduction vs uncoded."""
    req = trace.requests
    if trace.n_rows("requests") == 0:
        return []
    if len(set(req["scheme"].tolist())) < 2 and len(set(req["level"].tolist())) < 2:
        return []
    rows = [
        [
            str(r["scenario"]),
            f"{r['level']:g}",
            r["scheme"],
            str(r["count"]),
            _fmt(r["mean"], ".3f"),
            _fmt(r["std"], ".3f"),
            _fmt(r["p95"], ".3f"),
            "-" if math.isnan(r["reduction"]) else f"{100 * r['reduction']:+.1f}%",
        ]
        for r in scheme_stats(trace)
    ]
    headers = ["scen", "level", "scheme", "n", "mean s", "std s", "p95 s", "vs uncoded"]
    note = "vs uncoded: latency reduction against uncoded at the same scenario and level"
    return ["Schemes"] + _table(headers, rows, left=3) + [note]


def _aggregate_lines(trace: Trace) -> list[str]:
    """Latency statistics and the reference check over all requests."""
    req = trace.requests
    lat = np.asarray(req["latency"], dtype=float)
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        return []
    std = float(lat.std(ddof=1)) if lat.size > 1 else 0.0
    lines = [
        f"Latency     mean {lat.mean():.4f} s  std {std:.4f} s  "
        f"p95 {np.percentile(lat, 95):.4f} s  min {lat.min():.4f} s  max {lat.max():.4f} s"
        f"  (n={lat.size})",
        f"Enc+dec     mean share {_fmt(_mean(_share(req)), '.1f')} % of latency",
    ]
    checked = req["reference_predicted"] >= 0
    if checked.any():
        match = int((req["reference_predicted"][checked] == req["predicted"][checked]).sum())
        rel = np.asarray(req["rel_err"][checked], dtype=float)
        worst = float(np.nanmax(rel)) if np.isfinite(rel).any() else math.nan
        lines.append(
            f"Reference   {int(checked.sum())} checked, {match} top-1 match, "
            f"max rel err {_fmt(worst, '.2e')}"
        )
    else:
        lines.append("Reference   not checked")
    return lines


def _span(values: np.ndarray) -> str:
    """One value if constant over requests (the usual case), else 'min-max'."""
    values = values[values >= 0]
    if values.size == 0:
        return "-"
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _layer_groups(rounds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Rounds grouped by layer, in the model's order (layer_index, then name)."""
    keys = sorted(
        {
            (int(i), str(name))
            for i, name in zip(rounds["layer_index"], rounds["layer"], strict=True)
        }
    )
    return [(name, (rounds["layer_index"] == i) & (rounds["layer"] == name)) for i, name in keys]


def _layer_lines(trace: Trace) -> list[str]:
    """Per-layer means over requests: where the time goes and how many replies were used."""
    rounds = trace.rounds
    if trace.n_rows("rounds") == 0:
        return ["Layers: no rounds recorded"]
    rows = []
    for name, sel in _layer_groups(rounds):

        def col(field: str, sel: np.ndarray = sel) -> np.ndarray:
            return rounds[field][sel]

        rows.append(
            [_clip(name, 20), _span(col("k")), _span(col("n")), _span(col("pieces_per_worker"))]
            + [
                _fmt(_mean(col(f)), ".2f", 1e3)
                for f in ("total_s", "encode_s", "decode_s", "wait_s", "remainder_s")
            ]
            + [_fmt(_mean(col(f)), ".1f") for f in ("n_used", "n_outstanding", "n_failed")]
        )
    headers = [
        "layer",
        "k",
        "n",
        "pcs",
        "total ms",
        "enc ms",
        "dec ms",
        "wait ms",
        "rem ms",
        "used",
        "outst",
        "fail",
    ]
    title = f"Layers (means over {trace.n_rows('rounds')} rounds; times in ms)"
    return [title] + _table(headers, rows)


ALWAYS_SHOWN = ("used", "late", "skipped", "failed")  # dead/timeout only when they happened


def _status_counts(statuses: np.ndarray) -> str:
    """'used 10 (83.3%)  late 2 (16.7%) ...', known statuses first, then any others."""
    total = statuses.size
    names = list(SUBTASK_STATUSES) + sorted(set(statuses.tolist()) - set(SUBTASK_STATUSES))
    parts = []
    for name in names:
        count = int((statuses == name).sum())
        if count or name in ALWAYS_SHOWN:
            parts.append(f"{name or '(none)'} {count} ({100.0 * count / total:.1f}%)")
    return "  ".join(parts)


def _worker_lines(sub: dict[str, np.ndarray]) -> list[str]:
    """Per-worker view: who straggles, who fails, how long each phase took on the worker."""
    rows = []
    for worker in sorted(set(sub["worker"].tolist())):
        sel = sub["worker"] == worker
        status = sub["status"][sel]
        rows.append(
            [str(worker), str(int(sel.sum()))]
            + [str(int((status == s).sum())) for s in SUBTASK_STATUSES]
            + [
                _fmt(_mean(sub[f][sel]), ".2f", 1e3)
                for f in ("injected_delay_s", "worker_recv_s", "worker_compute_s", "worker_send_s")
            ]
        )
    headers = [
        "worker",
        "tasks",
        *SUBTASK_STATUSES,
        "delay ms",
        "recv ms",
        "comp ms",
        "send ms",
    ]
    return _table(headers, rows, left=0)


def _subtask_lines(trace: Trace) -> list[str]:
    """Subtask outcomes and worker-side durations."""
    sub = trace.subtasks
    total = trace.n_rows("subtasks")
    if total == 0:
        return ["Subtasks: none recorded"]
    means = "  ".join(
        f"{label} {_fmt(_mean(sub[f]), '.2f', 1e3)} ms"
        for label, f in (
            ("recv", "worker_recv_s"),
            ("compute", "worker_compute_s"),
            ("send", "worker_send_s"),
            ("injected delay", "injected_delay_s"),
        )
    )
    return [
        f"Subtasks ({total})",
        f"Status      {_status_counts(sub['status'])}",
        f"Worker mean {means}",
        "",
    ] + _worker_lines(sub)


def memory_growth(rss: np.ndarray) -> tuple[float, float, float] | None:
    """(median RSS of the first tenth, of the last tenth, their difference) in MB.

    Medians of tenths, not first and last samples: allocator noise is a few MB, a
    leak grows steadily. None when fewer than 20 samples are known."""
    rss = rss[np.isfinite(rss)]
    if rss.size < 20:
        return None
    tenth = rss.size // 10
    first, last = float(np.median(rss[:tenth])), float(np.median(rss[-tenth:]))
    return first, last, last - first


def _memory_lines(trace: Trace) -> list[str]:
    """Resident memory per rank over the run (the soak's leak check)."""
    series = {}
    if "master_rss_mb" in trace.requests:
        series[0] = trace.requests["master_rss_mb"]
    sub = trace.subtasks
    if "worker_rss_mb" in sub:
        for rank in sorted(set(sub["worker"].tolist())):
            series[rank] = sub["worker_rss_mb"][sub["worker"] == rank]
    rows = []
    for rank, rss in series.items():
        growth = memory_growth(rss)
        if growth is not None:
            peak = float(np.nanmax(rss))
            rows.append([str(rank), *(f"{v:.1f}" for v in growth), f"{peak:.1f}"])
    if not rows:
        return []
    headers = ["rank", "first 10% MB", "last 10% MB", "growth MB", "max MB"]
    title = "Memory (resident, median of the first and last tenth of samples)"
    return [title, ""] + _table(headers, rows, left=0)


def summarize(trace: Trace) -> str:
    """The whole plain-text report, sections separated by blank lines."""
    sections: list[Callable[[Trace], list[str]]] = [
        _header,
        _request_lines,
        _aggregate_lines,
        _scheme_lines,
        _split_lines,
        _layer_lines,
        _subtask_lines,
        _memory_lines,
    ]
    blocks = ["\n".join(lines) for lines in (s(trace) for s in sections) if lines]
    if trace.logits.shape[0] != trace.n_rows("requests"):
        blocks.append(
            f"Note: {trace.logits.shape[0]} logits rows for "
            f"{trace.n_rows('requests')} requests (the run ended mid-request?)"
        )
    return "\n\n".join(blocks) + "\n"


def _csv_value(value: Any) -> Any:
    """NaN as an empty cell, which spreadsheets and pandas read as missing."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_csv(trace: Trace, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write requests.csv, rounds.csv and subtasks.csv (header row first); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        path = out / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(trace.table(name)))
            for row in trace.rows(name):
                writer.writerow([_csv_value(v) for v in row.values()])
        written.append(path)
    return written


def report_main(
    path: str | os.PathLike[str],
    csv_dir: str | os.PathLike[str] | None = None,
    plots_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Print the report; optionally export CSV and PNG figures. Bad files raise TraceError."""
    trace = read_trace(path)
    print(summarize(trace), end="")
    if csv_dir is not None:
        for written in write_csv(trace, csv_dir):
            print(f"wrote {written}")
    if plots_dir is not None:
        from .plots import write_plots

        for written in write_plots(trace, plots_dir):
            print(f"wrote {written}")
