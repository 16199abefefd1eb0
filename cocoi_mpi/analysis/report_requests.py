"""Report sections on the requests (``cocoi report``): one line each, latency statistics and
the reference check, per scheme and level against uncoded, and the per-layer split of Fig. 5.
"""

from __future__ import annotations

import math

import numpy as np

from ..statuses import BASELINE_SCHEME, PAPER_SCHEME
from ..traces.reader import Trace
from .experiments import layer_split, scheme_stats
from .report_format import _clip, _fmt, _mean, _table

MAX_REQUEST_ROWS = 40


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
    rows = [r for r in layer_split(trace) if r["scheme"] in (PAPER_SCHEME, BASELINE_SCHEME)]
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
