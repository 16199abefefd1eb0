"""Issue 18's map in one table and one figure: every cell of results/map/*.h5 (jobs/map.sh),
the CoCoI/uncoded latency ratio measured beside the simulator's prediction.

    python benchmarks/map_summary.py [--profile results/testbed_pi_profile.json]
        [--out docs/figures/map_pi.png] [TRACES...]

Prints a markdown table: jitter, detection, scenario level, requests per scheme, the
measured and predicted mean latency of each scheme, their ratio, and the gap between
the predicted and the measured ratio.
"""

from __future__ import annotations

import argparse
import glob

from cocoi_mpi.latency.prediction import predict_trace, ratio_rows
from cocoi_mpi.latency.profile import Profile
from cocoi_mpi.traces.reader import read_trace


def rows_of(path: str, profile: Profile, samples: int) -> list[dict]:
    trace = read_trace(path)
    cells = predict_trace(trace, profile, samples)
    index = {(c.scheme, c.scenario, c.level): c for c in cells}
    out = []
    for r in ratio_rows(cells):
        key = (r["scenario"], r["level"])
        c, u = index[(r["scheme"], *key)], index[("uncoded", *key)]
        out.append(
            dict(
                scheme=r["scheme"],
                jitter=trace.config.get("jitter", "none"),
                detection=trace.config.get("detection", "immediate"),
                scenario=r["scenario"],
                level=r["level"],
                requests=min(c.requests, u.requests),
                cocoi=(c.measured_s, c.predicted_s),
                uncoded=(u.measured_s, u.predicted_s),
                measured=r["measured"],
                predicted=r["predicted"],
                gap=r["gap"],
            )
        )
    return out


def markdown(rows: list[dict]) -> str:
    head = (
        "| jitter | detection | scen | level | scheme | reps | CoCoI s meas / pred "
        "| uncoded s meas / pred | CoCoI/uncoded measured | predicted | gap |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['jitter']} | {r['detection']} | {r['scenario']} | {r['level']:g} | "
            f"{r['scheme']} | {r['requests']} | {r['cocoi'][0]:.3f} / {r['cocoi'][1]:.3f} | "
            f"{r['uncoded'][0]:.3f} / {r['uncoded'][1]:.3f} | {r['measured']:.3f} | "
            f"{r['predicted']:.3f} | {100 * r['gap']:+.1f}% |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.6))
    short = {"immediate": "imm", "timeout=1.5": "t1.5"}
    labels = [
        f"{r['jitter']} {short.get(r['detection'], r['detection'])} n_f={r['level']:g}"
        if r["scenario"] != 1
        else f"{r['jitter']} λ={r['level']:g}"
        for r in rows
    ]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["measured"] for r in rows], 0.4, label="measured")
    ax.bar([i + 0.2 for i in x], [r["predicted"] for r in rows], 0.4, label="simulated")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=7, rotation=55, ha="right")
    ax.set_ylim(0.5, max(1.4, max(r["measured"] for r in rows) + 0.05))
    ax.set_ylabel("CoCoI-k° / uncoded mean latency")
    ax.set_title("pi preset, VGG16, n = 10: below 1, coding pays (imm: immediate detection)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="*")
    parser.add_argument("--profile", default="results/testbed_pi_profile.json")
    parser.add_argument("--out", help="PNG of the ratios")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    paths = args.traces or sorted(glob.glob("results/map/*.h5"))
    profile = Profile.load(args.profile)
    rows = [row for path in paths for row in rows_of(path, profile, args.samples)]
    print(markdown(rows))
    if args.out:
        plot(rows, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
