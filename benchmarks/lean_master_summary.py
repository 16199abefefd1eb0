"""The before/after table of docs/testbed.md (issue 15), from jobs/lean_master_compare.sh.

Per side (before, after) and k: the median over the measured requests (the first of
each run warms up and is left out) of the latency, of the master's coding work
(split + encode + decode + merge) as a share of it, of the largest share in any one
round, and of each master phase summed over the request's rounds.

    python benchmarks/lean_master_summary.py [GLOB]   # default /tmp/tb_*_k*_r*.h5
    python benchmarks/lean_master_summary.py --per-layer "/tmp/tblong_k*_r*.h5"

Files are named ``<prefix>_<side>_k<K>_r<rep>.h5`` (jobs/lean_master_compare.sh) or
``<side>_k<K>_r<rep>.h5``. ``--per-layer`` prints, per side, k and layer, the coding
share of the layer's rounds (median, 90th percentile, largest) and how many rounds
of all passed 9 % (issue 15's bound per round).
"""

from __future__ import annotations

import argparse
import glob
import re
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
        groups.setdefault(side_and_k(path), []).extend(request_rows(path))
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


def side_and_k(path: str) -> tuple[str, str]:
    """('after', '8') from .../tb_after_k8_r1.h5 or .../after_k8_r1.h5."""
    match = re.fullmatch(r"(?:tb_)?(?P<side>.+?)_k(?P<k>\d+)_r\d+", Path(path).stem)
    if match is None:
        raise SystemExit(f"{path}: expected a name like tb_<side>_k<K>_r<rep>.h5")
    return match["side"], match["k"]


def round_shares(path: str) -> list[tuple[str, float]]:
    """(layer, coding share of the round) for every round of the measured requests."""
    trace = read_trace(path)
    req, rounds = trace.table("requests"), trace.table("rounds")
    measured = set(req["request"][1:].tolist())
    out = []
    for i, request in enumerate(rounds["request"]):
        if int(request) in measured:
            coding = sum(float(rounds[c][i]) for c in CODING)
            out.append((str(rounds["layer"][i]), coding / float(rounds["total_s"][i])))
    return out


def per_layer(pattern: str, bound: float = 0.09) -> str:
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for path in sorted(glob.glob(pattern)):
        groups.setdefault(side_and_k(path), []).extend(round_shares(path))
    lines = [
        "| side | k | layer | rounds | median % | 90th pct % | largest % |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = []
    for (side, k), rows in sorted(groups.items()):
        layers = sorted({name for name, _ in rows}, key=layer_order)
        for name in layers:
            shares = 100 * np.array([share for n, share in rows if n == name])
            lines.append(
                f"| {side} | {k} | {name} | {len(shares)} | {np.median(shares):.1f} "
                f"| {np.percentile(shares, 90):.1f} | {shares.max():.1f} |"
            )
        over = sum(share > bound for _, share in rows)
        totals.append(f"{side}, k = {k}: {over} of {len(rows)} rounds above {100 * bound:.0f} %")
    return "\n".join(lines + [""] + totals)


def layer_order(name: str) -> tuple:
    """features.10 after features.2: numbers compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pattern", nargs="?", default="/tmp/tb_*_k*_r*.h5")
    parser.add_argument("--per-layer", action="store_true", help="coding share per round")
    args = parser.parse_args()
    print(per_layer(args.pattern) if args.per_layer else table(args.pattern))


if __name__ == "__main__":
    main()
