"""Resident memory per rank over a soak: at the start, middle and end (issue 16).

The master samples its RSS once per request (``requests.master_rss_mb``), each worker
with every reply (``subtasks.worker_rss_mb``). Per rank this prints the median RSS over
a window of requests around request ``--from`` (default 1,000), around the middle and
over the last window, and the growth from the first to the last. Also the requests
served, how many were checked exact, and the open requests at the end.

    REQUESTS=10000 MODEL=lenet5 OUT=results/soak_lenet5_10k.h5 ./jobs/soak.sh
    python benchmarks/soak_memory.py results/soak_lenet5_10k.h5 [--from 1000] [--window 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from cocoi_mpi.traces.reader import read_trace


def window_median(values: np.ndarray, at: np.ndarray, lo: int, hi: int) -> float:
    """Median of the samples taken in requests [lo, hi)."""
    mine = values[(at >= lo) & (at < hi) & np.isfinite(values)]
    return float(np.median(mine)) if mine.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--from", dest="start", type=int, default=1000)
    parser.add_argument("--window", type=int, default=200)
    args = parser.parse_args()
    trace = read_trace(args.trace)
    req, sub = trace.requests, trace.subtasks
    last = int(req["request"].max()) + 1
    w = args.window
    spots = [
        (f"requests {args.start}-{args.start + w}", args.start, args.start + w),
        (f"requests {last // 2}-{last // 2 + w}", last // 2, last // 2 + w),
        (f"requests {last - w}-{last}", last - w, last),
    ]
    series = {0: (req["master_rss_mb"], req["request"])}
    for rank in sorted(set(int(r) for r in sub["worker"])):
        mine = sub["worker"] == rank
        series[rank] = (sub["worker_rss_mb"][mine], sub["request"][mine])
    rel = trace.attrs.get("reliability", {})
    exact = np.sum(req["rel_err"] <= 1e-4) if "rel_err" in req else "-"
    print(f"{args.trace}: {len(req['request'])} requests, {exact} within 1e-4 of the local "
          f"forward; open receives/sends at end {rel.get('open_receives_at_end')}/"
          f"{rel.get('open_sends_at_end')}; status {trace.status}")  # fmt: skip
    print("| rank | " + " | ".join(f"RSS MB, {name}" for name, _, _ in spots) + " | growth MB |")
    print("|---|" + "---|" * (len(spots) + 1))
    for rank, (values, at) in series.items():
        figures = [window_median(values, at, lo, hi) for _, lo, hi in spots]
        cells = " | ".join(f"{f:.1f}" for f in figures)
        name = f"{rank} (master)" if rank == 0 else str(rank)
        print(f"| {name} | {cells} | {figures[-1] - figures[0]:+.1f} |")


if __name__ == "__main__":
    main()
