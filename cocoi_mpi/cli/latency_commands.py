"""``cocoi plan``, ``cocoi simulate`` and ``cocoi fit``: the latency model (eq. 8-12) put to
use, planning k per conv, simulating one layer under each scheme, fitting a profile to a trace."""

from __future__ import annotations

import click

from ..errors import RunError
from .common import _ints, reported_as


def _load_profile(path: str | None):
    """A fitted profile from JSON, or the built-in Raspberry Pi 4B + WiFi one."""
    from ..latency.profile import Profile, pi4_profile

    if path is None:
        return pi4_profile()
    try:
        return Profile.load(path)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--profile") from None


def _model_shapes(model: str, input_shape: str | None):
    """(entries, input shape) of every Conv2d of a registry or import-path model."""
    from ..latency.planning import build_for_shapes, model_layer_shapes
    from ..models import UnknownModelError
    from ..models import input_shape as model_input_shape

    try:
        net = build_for_shapes(model)
        shape = (
            _ints(input_shape, "--input-shape") if input_shape else model_input_shape(model, net)
        )
    except (UnknownModelError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    return model_layer_shapes(net, shape), shape


_profile_opt = click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    help="Profile JSON from `cocoi fit`. [default: built-in Raspberry Pi 4B + WiFi profile]",
)
_m_opt = click.option(
    "--m",
    "m",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Width pieces per subtask (1 for the default stable code and vandermonde, 2 for "
    "rotation).",
)


@click.command()
@click.option("--model", default="vgg16", show_default=True, help="Registry name or pkg.mod:fn.")
@click.option("--n", type=click.IntRange(min=1), default=10, show_default=True, help="Workers.")
@_profile_opt
@click.option("--input-shape", help="C,H,W. [default: the model's]")
@click.option(
    "--k-method",
    type=click.Choice(["auto", "star"]),
    default="auto",
    show_default=True,
    help="auto: k° (closed form, eq. 17); star: k* (Monte Carlo, eq. 13).",
)
@_m_opt
@click.option("--samples", type=click.IntRange(min=0), default=20000, show_default=True)
@click.option("--failures", type=click.IntRange(min=0), default=0, help="Workers that never reply.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the plan.")
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
def plan(
    model: str,
    n: int,
    profile_path: str | None,
    input_shape: str | None,
    k_method: str,
    m: int,
    samples: int,
    failures: int,
    seed: int,
    json_out: str | None,
    markdown: bool,
) -> None:
    """Per conv: k°, k*, L(k°), E[T^c(k*)], local time and the type-1 decision."""
    import json

    from ..latency.planning import LayerPlan, format_plan, plan_layer

    if k_method == "star" and samples == 0:
        raise click.BadParameter("k* needs --samples > 0", param_hint="--k-method")
    if failures >= n:
        raise click.BadParameter(f"must be below n={n}", param_hint="--failures")
    profile = _load_profile(profile_path)
    entries, shape = _model_shapes(model, input_shape)
    plans = []
    for e in entries:
        if e.shape is None:
            import numpy as np

            p = LayerPlan(0, float("inf"), float("nan"), False, np.empty(0), None, reason=e.reason)
        else:
            p = plan_layer(e.shape, n, profile, k_method, m, samples, seed, failures)
        plans.append((e, p))
    click.echo(f"model {model}, input {shape}, n={n}, m={m}, failures={failures}, k: {k_method}")
    click.echo(format_plan(plans, markdown=markdown))
    local = sum(p.local_s for _, p in plans if p.local_s == p.local_s)
    best = sum(min(p.predicted_s, p.local_s) for _, p in plans if p.local_s == p.local_s)
    click.echo(f"convs on the master alone: {local:.4g} s; with this plan: {best:.4g} s (model)")
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump([p.to_dict() | {"name": e.name} for e, p in plans], fh, indent=2)


@click.command()
@click.option("--n", type=click.IntRange(min=2), default=1000, show_default=True, help="Workers.")
@_profile_opt
@click.option("--model", default="vgg16", show_default=True, help="Model the --layer is in.")
@click.option(
    "--layer",
    help="A conv of --model by name, or a shape C_IN,H,W,C_OUT,KERNEL[,STRIDE[,PAD]]. "
    "[default: the model's costliest conv]",
)
@click.option(
    "--scheme",
    "schemes",
    multiple=True,
    type=click.Choice(["cocoi", "uncoded", "replication", "lt"]),
    help="Repeat for several. [default: all]",
)
@click.option("--k", type=click.IntRange(min=1), help="CoCoI's k. [default: k°]")
@_m_opt
@click.option("--lt-k", type=click.IntRange(min=1), help="LT source pieces. [default: k° at m=1]")
@click.option("--failures", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--lambda-tr", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--slow-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--jitter",
    default="none",
    show_default=True,
    help="Injected device jitter, as the run option: none, builtin, fig14b, paper or CMP/TR.",
)
@click.option(
    "--detection",
    default="immediate",
    show_default=True,
    help="When failures are noticed, as the run option: immediate, after=S, timeout=F.",
)
@click.option(
    "--master-cost/--no-master-cost",
    default=True,
    show_default=True,
    help="Count encoding/decoding on the master (Prop. 2-3 leave it out).",
)
@click.option("--exact-widths", is_flag=True, help="Floor W_O/(k*m) as the runtime does.")
@click.option("--samples", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--markdown", is_flag=True, help="Print a markdown table.")
def simulate(
    n: int,
    profile_path: str | None,
    model: str,
    layer: str | None,
    schemes: tuple[str, ...],
    k: int | None,
    m: int,
    lt_k: int | None,
    failures: int,
    lambda_tr: float,
    slow_workers: int,
    jitter: str,
    detection: str,
    master_cost: bool,
    exact_widths: bool,
    samples: int,
    seed: int,
    markdown: bool,
) -> None:
    """Mean and p95 latency of one layer under CoCoI, uncoded, replication and LT."""
    import time

    from ..latency.counts import LayerShape
    from ..latency.sim_schemes import Scenario
    from ..latency.simulate import SCHEMES, format_results
    from ..latency.simulate import simulate as run_simulation

    if layer and layer[0].isdigit():
        dims = _ints(layer, "--layer")
        if len(dims) not in (5, 6, 7):
            raise click.BadParameter(
                "expected C_IN,H,W,C_OUT,KERNEL[,STRIDE[,PAD]]", param_hint="--layer"
            )
        shape = LayerShape.conv(*dims[:5], *dims[5:], name="custom")
    else:
        entries, _ = _model_shapes(model, None)
        usable = [e for e in entries if e.shape is not None]
        if layer:
            usable = [e for e in usable if e.name == layer]
            if not usable:
                names = ", ".join(e.name for e in entries)
                raise click.BadParameter(
                    f"{model} has no conv {layer!r}; convs: {names}", param_hint="--layer"
                )
        shape = max(usable, key=lambda e: e.shape.local_flops).shape
    from ..experiment.scenarios import parse_detection, parse_jitter

    try:
        injected = dict(jitter=parse_jitter(jitter), detection=parse_detection(detection))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if injected["detection"].kind == "never":
        raise click.BadParameter("never needs a deadline; simulate it as after=SECONDS")
    scenario = Scenario(
        failures=failures, lambda_tr=lambda_tr, slow_workers=slow_workers, **injected
    )
    t0 = time.perf_counter()
    try:
        results = run_simulation(
            shape, n, _load_profile(profile_path), schemes or SCHEMES, k, m, scenario,
            samples, seed, relaxed=not exact_widths, lt_k=lt_k, master_cost=master_cost,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    elapsed = time.perf_counter() - t0
    click.echo(
        f"layer {shape.name}: {shape.c_in}x{shape.h_in}x{shape.w_in - sum(shape.pad_w)} -> "
        f"{shape.c_out}x{shape.h_out}x{shape.w_out}; n={n}, failures={failures}, "
        f"lambda_tr={lambda_tr}, slow workers={slow_workers}, jitter {jitter}, "
        f"detection {detection}, "
        f"master cost {'on' if master_cost else 'off'}, {samples} draws"
    )
    click.echo(format_results(results, markdown=markdown))
    click.echo(f"simulated in {elapsed:.2f} s")


@click.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Profile JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Fitted vs empirical CDFs (PNG).")
@click.option(
    "--method",
    type=click.Choice(["mle", "unbiased", "quantile"]),
    default="mle",
    show_default=True,
)
@click.option(
    "--empirical",
    is_flag=True,
    help="Keep the workers' measured per-unit times for the simulator to resample, where "
    "eq. 7 fits badly (a quota-confined testbed device); mu and theta are still given.",
)
@click.option(
    "--within-rounds",
    is_flag=True,
    help="Fit the compute excess over each round's own minimum: per-layer speed "
    "differences then do not count as straggling (docs/map.md).",
)
def fit(
    trace: str, out: str, plot: str | None, method: str, empirical: bool, within_rounds: bool
) -> None:
    """Fit (mu, theta) of master, receive, compute and send from a trace (appendix B)."""
    from ..latency.fit import fit_samples, plot_cdfs, trace_samples
    from ..traces.reader import read_trace

    samples = trace_samples(read_trace(trace))
    try:
        profile = fit_samples(samples, method, trace, empirical, within_rounds)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    profile.save(out)
    click.echo(f"{'phase':6s} {'theta':>12s} {'1/mu':>12s} {'KS':>7s} {'samples':>8s}")
    for phase in ("m", "rec", "cmp", "sen", "code")[: 4 + (profile.code is not None)]:
        se = profile.phase(phase)
        count = profile.meta["samples"][phase]
        click.echo(
            f"{phase:6s} {se.theta:12.4g} {1 / se.mu:12.4g} {profile.ks[phase]:7.3f} {count:8d}"
        )
    click.echo(f"wrote {out}")
    if plot:
        with reported_as(RunError, ImportError):  # no matplotlib
            plot_cdfs(samples, profile, plot)
        click.echo(f"wrote {plot}")


@click.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="Profile JSON from `cocoi fit` of a calibration run on the same testbed.",
)
@click.option("--samples", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--markdown", is_flag=True, help="Print markdown tables.")
def predict(trace: str, profile_path: str, samples: int, seed: int, markdown: bool) -> None:
    """Each cell of TRACE measured beside the simulator's prediction, and the CoCoI /
    uncoded ratio of each scenario level, measured and predicted."""
    from ..latency.prediction import format_prediction, predict_trace
    from ..traces.reader import read_trace

    profile = _load_profile(profile_path)
    cells = predict_trace(read_trace(trace), profile, samples, seed)
    click.echo(format_prediction(cells, markdown=markdown))
