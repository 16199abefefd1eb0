"""The before/after table of docs/testbed.md (issue 15), from jobs/lean_master_compare.sh.

Per side (before, after) and k: the median over the measured requests (the first of
each run warms up and is left out) of the latency, of the master's coding work
(split + encode + decode + merge) as a share of it, of the largest share in any one
round, and of each master phase summed over the request's rounds.

    python benchmarks/lean_master_summary.py [GLOB]   # default /tmp/tb_*_k*_r*.h5
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

from cocoi_mpi.traces.reader import read_trace

PHASES = ("split_s", "encode_s", "send_s", "decode_s", "merge_s", "remainder_s")
CODING = ("split_s", "encode_s", "decode_s", "merge_s")


def request_rows(path: str) -> list[dict]:
    """One dict per measured request of a trace: latency, coding share, phase sums."""
    trace = read_trace(path)
    req, rounds = trace.table("requests"), trace.table("rounds")
    out = []
    for request, latency in zip(req["request"][1:], req["latency"][1:], strict=True):
        mine = np.where(rounds["request"] == request)[0]
        coding = [sum(float(rounds[c][i]) for c in CODING) for i in mine]
        worst = max(c / float(rounds["total_s"][i]) for c, i in zip(coding, mine, strict=True))
        phases = {c: float(rounds[c][mine].sum()) for c in PHASES}
        out.append(dict(lat=float(latency), share=sum(coding) / latency, worst=worst, **phases))
    return out


def table(pattern: str) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(glob.glob(pattern)):
        side, k = Path(path).stem.split("_")[1:3]
        groups.setdefault((side, k[1:]), []).extend(request_rows(path))
    lines = [
        "| side | k | requests | median latency s | coding % of latency | worst round coding % "
        "| split ms | encode ms | send ms | decode ms | merge ms | remainder ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (side, k), rows in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0] != "before")):

        def med(key: str, rows: list[dict] = rows) -> float:
            return float(np.median([r[key] for r in rows]))

        ms = " | ".join(f"{1e3 * med(c):.0f}" for c in PHASES)
        lines.append(
            f"| {side} | {k} | {len(rows)} | {med('lat'):.3f} | {100 * med('share'):.1f} "
            f"| {100 * med('worst'):.1f} | {ms} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tb_*_k*_r*.h5"))
