"""PNG figures like the paper's Figs. 5-7 (needs matplotlib: pip install cocoi_mpi[plots])."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..traces.reader import Trace
from .experiments import layer_split, scheme_stats

SCENARIO_AXIS = {
    0: "no injected faults",
    1: "lambda_tr (straggling)",
    2: "n_f (failures)",
    3: "n_f (failures + one straggler)",
}


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'cocoi_mpi[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_figures(trace: Trace, out: Path) -> list[Path]:
    """One figure per scenario: mean latency vs level per scheme, std as error bars."""
    plt = pyplot()
    by_scenario: dict[int, list[dict]] = defaultdict(list)
    for row in scheme_stats(trace):
        by_scenario[row["scenario"]].append(row)
    written = []
    model = trace.config.get("model", "")
    for scenario, rows in sorted(by_scenario.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        schemes = sorted({r["scheme"] for r in rows})
        for scheme in schemes:
            pts = sorted((r["level"], r["mean"], r["std"]) for r in rows if r["scheme"] == scheme)
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=scheme)
        ax.set_xlabel(SCENARIO_AXIS.get(scenario, "level"))
        ax.set_ylabel("inference latency (s)")
        ax.set_title(f"{model}: scenario {scenario}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"latency_scenario{scenario}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def layer_figure(trace: Trace, out: Path) -> Path | None:
    """Fig. 5: per conv layer, encode+decode vs execution, one bar group per scheme."""
    plt = pyplot()
    rows = layer_split(trace)
    if not rows:
        return None
    schemes = sorted({r["scheme"] for r in rows})
    layers = sorted({(r["layer_index"], r["layer"]) for r in rows})
    width = 0.8 / len(schemes)
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.6), 4))
    for j, scheme in enumerate(schemes):
        got = {(r["layer_index"], r["layer"]): r for r in rows if r["scheme"] == scheme}
        xs = [i + j * width for i in range(len(layers))]
        execs = [got[lay]["execution"] if lay in got else 0 for lay in layers]
        codes = [got[lay]["coding"] if lay in got else 0 for lay in layers]
        color = f"C{j}"
        ax.bar(xs, execs, width, color=color, label=f"{scheme}: execution + transfer")
        ax.bar(
            xs,
            codes,
            width,
            bottom=execs,
            color=color,
            alpha=0.5,
            hatch="//",
            label=f"{scheme}: encode + decode",
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
    ax.set_xticklabels([name for _, name in layers], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean latency per layer (s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "layers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(trace: Trace, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = latency_figures(trace, out)
    layer = layer_figure(trace, out)
    return paths + ([layer] if layer else [])
