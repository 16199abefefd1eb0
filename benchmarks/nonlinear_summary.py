"""The paper's Figs. 8, 9 and 11 from the pi-testbed sweeps (docs/fig8.md, fig9.md, fig11.md).

    python benchmarks/nonlinear_summary.py results/fig8_vgg16_pi.h5 results/fig9_vgg16_pi.h5 \
        [--figures docs/figures] [--markdown]

For each trace: per (scenario, level, scheme) the mean and std latency, the reduction
against uncoded and against CoCoI-k* measured in the same interleaved run, the top-1
accuracy on the digits and its agreement with the exact model; then, per scheme, what
the master spends splitting, encoding and decoding per request, and what one worker
spends computing per subtask. With --figures: one latency figure per scenario (Figs. 8
and 9) and the Non-linear* / Non-linear bars (Fig. 11).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from cocoi_mpi.analysis.experiments import scheme_stats
from cocoi_mpi.traces.reader import Trace, read_trace

NONLINEAR, HYBRID, STAR, UNCODED = "learned", "learned:hybrid", "cocoi:star", "uncoded"
LABELS = {
    NONLINEAR: "Non-linear",
    HYBRID: "Non-linear*",
    STAR: "CoCoI-k*",
    UNCODED: "Uncoded",
    "replication": "Replication",
}
AXIS = {1: "λ_tr", 2: "n_f (scenario 2)", 3: "n_f (scenario 3)"}


def outcomes(trace: Trace) -> dict[tuple, dict]:
    """(scenario, level, scheme) -> whether each request's top-1 was right and whether
    it equalled the exact model's (the learned codes are approximate)."""
    req = trace.requests
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for i in range(len(req["request"])):
        key = (int(req["scenario"][i]), float(req["level"][i]), str(req["scheme"][i]))
        groups[key]["correct"].append(int(req["predicted"][i]) == int(req["label"][i]))
        same = int(req["predicted"][i]) == int(req["reference_predicted"][i])
        groups[key]["agree"].append(same)
    return groups


def stats_rows(trace: Trace) -> list[dict]:
    """analysis.experiments.scheme_stats (mean, std, reduction vs uncoded) plus the
    reduction vs CoCoI-k*, the accuracy and the agreement with the exact model."""
    rows = scheme_stats(trace)
    seen = outcomes(trace)
    means = {(r["scenario"], r["level"], r["scheme"]): r["mean"] for r in rows}
    for r in rows:
        key = (r["scenario"], r["level"], r["scheme"])
        r["n"], r["vs_uncoded"] = r["count"], r["reduction"]
        base = means.get((r["scenario"], r["level"], STAR))
        r["vs_star"] = 1.0 - r["mean"] / base if base else float("nan")
        r["accuracy"] = 100.0 * float(np.mean(seen[key]["correct"]))
        r["agreement"] = 100.0 * float(np.mean(seen[key]["agree"]))
    return rows


def cost_rows(trace: Trace) -> list[dict]:
    """Per scheme: the master's split+encode and decode+merge per request, and a worker's
    mean compute per subtask (what coding adds on each side)."""
    req, sub = trace.requests, trace.subtasks
    scheme_of = dict(zip(req["request"].tolist(), req["scheme"].tolist(), strict=True))
    per: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for i in range(len(req["request"])):
        s = str(req["scheme"][i])
        per[s]["encode"].append(float(req["encode_s"][i]))
        per[s]["decode"].append(float(req["decode_s"][i]))
        per[s]["latency"].append(float(req["latency"][i]))
    for i in range(len(sub["request"])):
        compute = float(sub["worker_compute_s"][i])
        if compute > 0:
            per[str(scheme_of.get(int(sub["request"][i]), "?"))]["compute"].append(compute)
    rows = []
    for scheme, g in sorted(per.items()):
        rows.append(
            dict(
                scheme=scheme,
                encode=float(np.mean(g["encode"])),
                decode=float(np.mean(g["decode"])),
                share=float(np.sum(g["encode"]) + np.sum(g["decode"]))
                / float(np.sum(g["latency"])),
                compute=float(np.mean(g["compute"])) if g["compute"] else float("nan"),
            )
        )
    return rows


def pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:+.1f}%"


def print_stats(rows: list[dict], markdown: bool) -> None:
    head = ["scen", "level", "scheme", "n", "mean s", "std s", "vs uncoded", "vs CoCoI-k*",
            "top-1 %", "= exact %"]  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            [str(r["scenario"]), f"{r['level']:g}", LABELS.get(r["scheme"], r["scheme"]),
             str(r["n"]), f"{r['mean']:.3f}", f"{r['std']:.3f}", pct(r["vs_uncoded"]),
             pct(r["vs_star"]), f"{r['accuracy']:.0f}", f"{r['agreement']:.0f}"]
        )  # fmt: skip
    emit(lines, markdown)


def print_costs(rows: list[dict], markdown: bool) -> None:
    lines = [["scheme", "master split+encode s/request", "master decode+merge s/request",
              "share of latency", "worker compute s/subtask"]]  # fmt: skip
    for r in rows:
        lines.append(
            [LABELS.get(r["scheme"], r["scheme"]), f"{r['encode']:.3f}", f"{r['decode']:.3f}",
             f"{100 * r['share']:.1f}%", f"{r['compute']:.3f}"]
        )  # fmt: skip
    emit(lines, markdown)


def emit(lines: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(lines[0]) + " |")
        print("|" + "---|" * len(lines[0]))
        for line in lines[1:]:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for line in lines:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    print()


def latency_figures(rows: list[dict], model: str, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for scenario in sorted({r["scenario"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for scheme in LABELS:
            pts = sorted(
                (r["level"], r["mean"], r["std"])
                for r in rows
                if r["scenario"] == scenario and r["scheme"] == scheme
            )
            if pts:
                xs, ys, es = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=LABELS[scheme])
        ax.set_xticks(sorted({r["level"] for r in rows if r["scenario"] == scenario}))
        ax.set_xlabel(AXIS.get(scenario, "level"))
        ax.set_ylabel("inference latency (s)")
        ax.set_title(f"{model}, pi testbed: scenario {scenario}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"{stem}_scenario{scenario}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def hybrid_figure(all_rows: list[dict], out: Path) -> Path:
    """Fig. 11: Non-linear and Non-linear* side by side at every measured level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["scenario"], r["level"]) for r in all_rows if r["scheme"] == HYBRID})
    mean = {(r["scenario"], r["level"], r["scheme"]): r for r in all_rows}
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(keys))
    for offset, scheme in ((-0.2, NONLINEAR), (0.2, HYBRID)):
        ys = [mean[(*key, scheme)]["mean"] for key in keys]
        es = [mean[(*key, scheme)]["std"] for key in keys]
        ax.bar(x + offset, ys, 0.4, yerr=es, capsize=3, label=LABELS[scheme])
    ax.set_xticks(x, [f"s{s} {'λ' if s == 1 else 'n_f'}={lv:g}" for s, lv in keys], fontsize=8)
    ax.set_ylabel("inference latency (s)")
    ax.set_title("vgg16, pi testbed: Non-linear* (block 5 on the master) vs Non-linear")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    path = out / "fig11_vgg16_pi.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--figures", type=Path, help="write the figures into this folder")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    every = []
    for path in args.traces:
        trace = read_trace(path)
        rows = stats_rows(trace)
        every += rows
        print(f"## {path}\n")
        print_stats(rows, args.markdown)
        print_costs(cost_rows(trace), args.markdown)
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            stem = Path(path).stem
            for fig in latency_figures(rows, trace.config.get("model", ""), args.figures, stem):
                print(f"wrote {fig}")
    pairs = [
        (r, next(q for q in every if (q["scenario"], q["level"], q["scheme"])
                 == (r["scenario"], r["level"], NONLINEAR)))
        for r in every if r["scheme"] == HYBRID
    ]  # fmt: skip
    if pairs:
        print("## Non-linear* vs Non-linear (Fig. 11)\n")
        lines = [["scen", "level", "Non-linear s", "Non-linear* s", "reduction"]]
        for hyb, lin in pairs:
            lines.append(
                [str(hyb["scenario"]), f"{hyb['level']:g}", f"{lin['mean']:.3f}",
                 f"{hyb['mean']:.3f}", pct(1 - hyb["mean"] / lin["mean"])]
            )  # fmt: skip
        total = 1 - sum(h["mean"] for h, _ in pairs) / sum(n["mean"] for _, n in pairs)
        lines.append(["all", "", "", "", pct(total)])
        emit(lines, args.markdown)
        if args.figures:
            print(f"wrote {hybrid_figure(every, args.figures)}")


if __name__ == "__main__":
    main()
