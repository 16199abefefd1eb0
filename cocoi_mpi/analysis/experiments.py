"""Scheme comparisons from a trace: the numbers behind the paper's Figs. 5-7. Pure numpy.

Requests are grouped by (scenario, level, scheme); the reduction of a scheme is
against 'uncoded' at the same scenario and level, measured in the same run.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..statuses import BASELINE_SCHEME
from ..traces.reader import Trace


def group_keys(req: dict[str, np.ndarray]) -> list[tuple[int, float, str]]:
    keys = zip(req["scenario"].tolist(), req["level"].tolist(), req["scheme"].tolist(), strict=True)
    return [(int(s), float(lv), str(sc)) for s, lv, sc in keys]


def scheme_stats(trace: Trace) -> list[dict]:
    """Mean, std, p95 latency per (scenario, level, scheme), and reduction vs uncoded."""
    req = trace.requests
    groups: dict[tuple, list[float]] = defaultdict(list)
    for key, latency in zip(group_keys(req), req["latency"].tolist(), strict=True):
        groups[key].append(latency)
    rows = []
    for (scenario, level, scheme), values in sorted(groups.items()):
        lat = np.asarray(values)
        rows.append(
            dict(
                scenario=scenario,
                level=level,
                scheme=scheme,
                count=len(lat),
                mean=float(lat.mean()),
                std=float(lat.std(ddof=1)) if len(lat) > 1 else 0.0,
                p95=float(np.percentile(lat, 95)),
            )
        )
    base = {(r["scenario"], r["level"]): r["mean"] for r in rows if r["scheme"] == BASELINE_SCHEME}
    for r in rows:
        ref = base.get((r["scenario"], r["level"]))
        r["reduction"] = (1.0 - r["mean"] / ref) if ref else float("nan")
    return rows


def layer_split(trace: Trace) -> list[dict]:
    """Per scheme and layer: mean round time, and how much of it is encode + decode (Fig. 5)."""
    req, rnd = trace.requests, trace.rounds
    scheme_of = dict(zip(req["request"].tolist(), req["scheme"].tolist(), strict=True))
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for i in range(len(rnd["round"])):
        scheme = scheme_of.get(int(rnd["request"][i]), "?")
        coding = rnd["split_s"][i] + rnd["encode_s"][i] + rnd["decode_s"][i] + rnd["merge_s"][i]
        groups[(str(scheme), int(rnd["layer_index"][i]), str(rnd["layer"][i]))].append(
            (float(rnd["total_s"][i]), float(coding))
        )
    rows = []
    for (scheme, index, layer), values in sorted(groups.items()):
        arr = np.asarray(values)
        total, coding = arr.mean(axis=0)
        rows.append(
            dict(
                scheme=scheme,
                layer_index=index,
                layer=layer,
                total=total,
                coding=coding,
                execution=total - coding,
                count=len(arr),
            )
        )
    return rows
