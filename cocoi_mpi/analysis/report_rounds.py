"""Report sections on what happened inside the requests (``cocoi report``): per layer where
the time went, per worker what became of its subtasks, per rank the resident memory.
"""

from __future__ import annotations

import numpy as np

from ..traces.reader import Trace
from ..traces.schema import SUBTASK_STATUSES
from .report_format import _clip, _fmt, _mean, _table


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
