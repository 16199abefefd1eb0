"""`cocoi`: the commands around a run (report now; plan, simulate, train later)."""

from __future__ import annotations

import contextlib
import sys

import click

from ..errors import CocoiError, RunError, UserError, error_line


class CocoiGroup(click.Group):
    """The one place where an error ends a command. A CocoiError with an exit code that
    a command (or a sub-group's command) lets out prints one ``cocoi: error: MESSAGE``
    line on stderr, and the command exits with the error's code (cocoi_mpi.errors: 2 for
    a UserError, 1 for a ResultError or RunError). Internal errors and any other
    exception go on as a traceback: a bug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CocoiError as exc:
            if exc.exit_code is None:
                raise
            click.echo(error_line(exc), err=True)
            sys.exit(exc.exit_code)


@contextlib.contextmanager
def reported_as(error: type[CocoiError], *types: type[BaseException]):
    """Exceptions of ``types`` from outside the package (torch's ValueError, a missing
    matplotlib) end the command as an ``error``: the same message, that class's exit
    code. A CocoiError among them that has a code of its own keeps it."""
    try:
        yield
    except types as exc:
        if isinstance(exc, CocoiError) and exc.exit_code is not None:
            raise
        raise error(str(exc)) from exc


@click.group(cls=CocoiGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CoCoI coded inference tools. The MPI job itself: mpirun ... python -m cocoi_mpi.run"""


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False),
    help="Also write requests.csv, rounds.csv, subtasks.csv into this folder.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Also write PNG figures (latency per scheme and level, per-layer split) here.",
)
@click.option(
    "--timeline",
    "timeline_out",
    type=click.Path(dir_okay=False),
    help="Also write OUT.json (Chrome/Perfetto trace events) and OUT.png (Gantt chart): "
    "one track per rank for the chosen requests (docs/timeline.md).",
)
@click.option(
    "--timeline-requests",
    help="Requests for --timeline, e.g. 0,3. [default: the first; in a sweep the first "
    "of each scheme]",
)
def report(
    path: str,
    csv_dir: str | None,
    plots_dir: str | None,
    timeline_out: str | None,
    timeline_requests: str | None,
) -> None:
    """Summarise an HDF5 trace (also one from a killed job)."""
    from ..analysis.report import report_main

    wanted = _timeline_requests(timeline_out, timeline_requests)
    with reported_as(RunError, RuntimeError):  # RuntimeError: no matplotlib
        plan = _timeline_plan(path, timeline_out, wanted)
        report_main(path, csv_dir, plots_dir)
        if plan is not None:
            from ..analysis.timeline import write_timeline

            for written in write_timeline(*plan):
                click.echo(f"wrote {written}")


def _timeline_requests(out: str | None, text: str | None) -> tuple[int, ...] | None:
    """--timeline-requests as ints; it means nothing without --timeline."""
    if text is None:
        return None
    if out is None:
        raise click.BadParameter("needs --timeline OUT", param_hint="--timeline-requests")
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        msg = f"expected request numbers like 0,3, got {text!r}"
        raise click.BadParameter(msg, param_hint="--timeline-requests") from None


def _timeline_plan(path: str, out: str | None, wanted: tuple[int, ...] | None):
    """(trace, out, requests) for write_timeline, or None without --timeline. The
    requests are checked before the summary prints, so a bad one fails at once."""
    if out is None:
        return None
    from ..analysis.timeline import pick_requests
    from ..traces.core import read_trace

    trace = read_trace(path)
    return trace, out, pick_requests(trace, wanted)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge(out: str, parts: tuple[str, ...]) -> None:
    """Join a sweep's parts (run with --part I/N, e.g. a Slurm array) into OUT."""
    from ..traces.merge import merge_traces

    done = merge_traces(out, list(parts))
    click.echo(f"merged {done['parts']} parts, {done['requests']} requests -> {done['out']}")


@main.group()
def testbed() -> None:
    """The emulated testbed: ranks confined to CPU shares (mpirun ... --cpu-share)."""


@testbed.command()
@click.option("--share", type=click.FloatRange(min=0.001), default=0.15, show_default=True)
@click.option("--devices", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--repeats", type=click.IntRange(min=5), default=200, show_default=True)
def check(share: float, devices: int, repeats: int) -> None:
    """Time a fixed conv on one device with the others idle, then busy; with and
    without the CPU emulation. Devices that do not depend on each other: change ~0."""
    import os

    from ..testbed.isolation import check as measure
    from ..testbed.isolation import table

    results = measure(share, devices, repeats, f"check{os.getpid()}")
    for line in table(results, share, devices):
        click.echo(line)


@testbed.command()
def cleanup() -> None:
    """Remove the empty cgroups killed ranks left behind (jobs/testbed.sh runs this)."""
    from ..testbed.cgroups import TestbedError, sweep_leftovers

    try:
        removed = sweep_leftovers()
    except (TestbedError, OSError) as exc:
        click.echo(f"cocoi: testbed cleanup: nothing to do ({exc})")
        return
    click.echo(f"cocoi: testbed cleanup: removed {len(removed)} cgroup(s)")


@main.command()
def info() -> None:
    """Versions of python, torch, mpi4py, the MPI library (ULFM?), h5py and HDF5."""
    from ..runtime.provenance import versions

    for key, value in versions().items():
        click.echo(f"{key:12s} {value}")


@main.command()
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of subtasks (workers) the code spreads a layer over.",
)
@click.option(
    "--k",
    "ks",
    type=click.IntRange(min=1),
    multiple=True,
    help="Sources per layer; repeat for several. [default: every k in 1..n]",
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    help="Code to measure (rotation, vandermonde); repeat for several. [default: all]",
)
@click.option(
    "--systematic/--no-systematic",
    default=False,
    show_default=True,
    help="Measure the systematic variant (first k subtasks carry the sources).",
)
@click.option("--markdown", is_flag=True, help="Print a markdown table (for docs/).")
def codes(
    n: int, ks: tuple[int, ...], codes: tuple[str, ...], systematic: bool, markdown: bool
) -> None:
    """Worst-case decode error over all k-subsets of n subtasks, float32 and float64."""
    from ..codes import CODES
    from ..codes.analysis import error_table, format_table
    from ..experiment.config import RunConfig

    if any(k > n for k in ks):
        raise click.BadParameter(f"every k must be at most n={n}", param_hint="--k")
    unknown = sorted(set(codes) - set(CODES))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {CODES}", param_hint="--code")
    rows = error_table(n, sorted(set(ks)) or range(1, n + 1), codes or CODES, systematic=systematic)
    click.echo(format_table(rows, RunConfig.tolerance, markdown=markdown))


# --------------------------------------------------------------------------- latency model


def _load_profile(path: str | None):
    """A fitted profile from JSON, or the built-in Raspberry Pi 4B + WiFi one."""
    from ..latency.model import Profile, pi4_profile

    if path is None:
        return pi4_profile()
    try:
        return Profile.load(path)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--profile") from None


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        msg = f"expected integers like 3,224,224, got {text!r}"
        raise click.BadParameter(msg, param_hint=what) from None


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


@main.command()
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


@main.command()
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
    master_cost: bool,
    exact_widths: bool,
    samples: int,
    seed: int,
    markdown: bool,
) -> None:
    """Mean and p95 latency of one layer under CoCoI, uncoded, replication and LT."""
    import time

    from ..latency.model import LayerShape
    from ..latency.simulate import SCHEMES, Scenario, format_results
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
    scenario = Scenario(failures=failures, lambda_tr=lambda_tr, slow_workers=slow_workers)
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
        f"lambda_tr={lambda_tr}, slow workers={slow_workers}, "
        f"master cost {'on' if master_cost else 'off'}, {samples} draws"
    )
    click.echo(format_results(results, markdown=markdown))
    click.echo(f"simulated in {elapsed:.2f} s")


@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Profile JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Fitted vs empirical CDFs (PNG).")
@click.option(
    "--method",
    type=click.Choice(["mle", "unbiased", "quantile"]),
    default="mle",
    show_default=True,
)
def fit(trace: str, out: str, plot: str | None, method: str) -> None:
    """Fit (mu, theta) of master, receive, compute and send from a trace (appendix B)."""
    from ..latency.fit import fit_samples, plot_cdfs, trace_samples
    from ..traces.core import read_trace

    samples = trace_samples(read_trace(trace))
    profile = fit_samples(samples, method, source=trace)
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


@main.command()
@click.option(
    "--model", default="lenet5", show_default=True, help="Registry name or module:factory."
)
@click.option("--weights", help="Base model weights (.pt); required for a codec.")
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="digits (ships with scikit-learn), mnist:DIR (IDX files) or cifar10:DIR (python batches).",
)
@click.option("--base", is_flag=True, help="Train the base model itself (not a codec).")
@click.option("--block", help="Conv block to code: the name of its first conv, e.g. features.3.")
@click.option("--k", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--r", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--arch",
    default="sparsemlp",
    show_default=True,
    help="sparsemlp, conv, mlp, or ENCODER-DECODER such as conv-mlp.",
)
@click.option("--hidden", type=click.IntRange(min=1), help="Hidden width of conv/sparsemlp codecs.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=None, help="[1e-5 codec, 0 base]")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--task-loss",
    type=float,
    default=0.0,
    show_default=True,
    help="Codec: weight of cross-entropy.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --out's checkpoint up to --epochs.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write.")
@click.option("--quiet", is_flag=True, help="No per-epoch lines.")
def train(**opts) -> None:
    """Train a base model (--base) or a learned codec for one conv block.

    The base model is frozen while a codec trains; a checkpoint is written after every
    epoch and carries model, block, k, r, architecture and data, so a run refuses a
    checkpoint that does not fit and --resume continues where it stopped.
    """
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with reported_as(UserError, ValueError):  # e.g. torch refusing a shape
        _train(**opts)


def _train(**o) -> None:
    from pathlib import Path

    from ..experiment.progress import progress
    from ..learned.training import (
        CodecTraining,
        coded_accuracy,
        load_codec,
        make_coded_block,
        new_state,
        save_codec,
        train_codec,
    )
    from ..models import build_model, input_shape, load_weights
    from ..models.data import load_dataset
    from ..models.training import accuracy, save_base, train_base

    echo = (lambda *a: None) if o["quiet"] else click.echo
    train_set, test_set = load_dataset(o["data"], "train"), load_dataset(o["data"], "test")
    model = build_model(o["model"], seed=o["seed"])
    if o["base"]:
        with progress(o["epochs"], "train", o["quiet"], unit="epoch") as bar:
            log = train_base(
                model,
                train_set,
                test_set,
                o["epochs"],
                o["lr"],
                o["weight_decay"] or 0.0,
                o["batch_size"],
                o["seed"],
                progress=lambda row: _epoch_done(bar, echo, row, o["epochs"]),
            )
        save_base(o["out"], model, o["model"], o["data"], log)
        click.echo(
            f"base {o['model']} on {o['data']}: test accuracy {accuracy(model, test_set):.2f}%"
        )
        click.echo(f"wrote {o['out']}")
        return
    if not o["weights"] or not o["block"]:
        raise UserError("a codec needs --weights (the trained base model) and --block")
    load_weights(model, o["weights"])
    model.eval()
    shape = input_shape(o["model"], model)
    if o["resume"] and Path(o["out"]).is_file():
        cb, state = load_codec(o["out"], model, o["model"], shape)
        if cb.name != o["block"] or (cb.codec.k, cb.codec.r) != (o["k"], o["r"]):
            raise UserError(
                f"--resume: {o['out']} codes {cb.name} with k={cb.codec.k}, r={cb.codec.r}"
            )
        echo(f"resuming {o['out']} at epoch {state.epoch}")
    else:
        cb = make_coded_block(
            model, o["block"], shape, o["k"], o["r"], o["arch"], o["hidden"], o["hidden"]
        )
        state = new_state(o["model"], o["data"], shape, cb, model)
    settings = CodecTraining(
        epochs=o["epochs"],
        lr=o["lr"],
        weight_decay=1e-5 if o["weight_decay"] is None else o["weight_decay"],
        batch_size=o["batch_size"],
        task_loss=o["task_loss"],
        seed=o["seed"],
    )
    echo(
        f"codec {cb.codec.arch} for {cb.name}: k={cb.codec.k}, r={cb.codec.r}, pieces "
        f"{cb.codec.in_shape} -> {cb.codec.out_shape}, epochs {state.epoch + 1}..{settings.epochs}"
    )
    bar = progress(settings.epochs, "train", o["quiet"], unit="epoch", initial=state.epoch)
    with bar:
        train_codec(
            model,
            cb,
            train_set,
            settings,
            state,
            progress=lambda row: _epoch_done(bar, echo, row, settings.epochs),
            save=lambda st: save_codec(o["out"], cb, st),
        )
    save_codec(o["out"], cb, state)
    lost = [coded_accuracy(model, [cb], test_set, lost=m) for m in range(cb.codec.r + 1)]
    click.echo(
        f"test accuracy with 0..{cb.codec.r} of {cb.codec.n} outputs lost: "
        + ", ".join(f"{a:.2f}%" for a in lost)
    )
    click.echo(f"wrote {o['out']}")


def _epoch_done(bar, echo, row: dict, epochs: int) -> None:
    """One epoch ended: advance the bar (postfix: loss and accuracies) and print the
    epoch's line where no bar shows it (cocoi_mpi.experiment.progress.echo_line)."""
    from ..experiment.progress import echo_line

    bar.set_postfix_str(_epoch_stats(row), refresh=False)
    bar.update(1)
    echo_line(bar, echo, _epoch_line(row, epochs))


def _epoch_stats(row: dict) -> str:
    extra = "".join(
        f", {key} {value:.2f}" if "acc" in key else ""
        for key, value in row.items()
        if value is not None
    )
    return f"loss {row['loss']:.4g}{extra}"


def _epoch_line(row: dict, epochs: int) -> str:
    return f"epoch {row['epoch']}/{epochs}: {_epoch_stats(row)} ({row['seconds']:.1f} s)"


@main.command()
@click.option("--model", default="lenet5", show_default=True)
@click.option("--weights", required=True, help="Base model weights (.pt).")
@click.option("--codec", "codecs", multiple=True, required=True, help="Codec checkpoint; repeat.")
@click.option("--data", default="digits", show_default=True)
@click.option(
    "--lost-rows",
    help="Exactly these code rows lost in every block (e.g. 0,2): what a run with those "
    "workers silent decodes from. Default: the table over 0..r outputs lost.",
)
@click.option("--markdown", is_flag=True, help="Print the table as markdown.")
def accuracy(model, weights, codecs, data, lost_rows, markdown) -> None:
    """Test accuracy of the base model and with 0..r outputs lost (paper Fig. 10)."""
    with reported_as(UserError, ValueError):
        for line in _accuracy_lines(model, weights, codecs, data, lost_rows, markdown):
            click.echo(line)


def _accuracy_lines(model_spec, weights, codecs, data, lost_rows, markdown) -> list[str]:
    from ..learned.training import coded_accuracy, load_codec
    from ..models import build_model, input_shape, load_weights
    from ..models.data import load_dataset
    from ..models.training import accuracy as plain_accuracy

    test = load_dataset(data, "test")
    model = build_model(model_spec)
    load_weights(model, weights)
    model.eval()
    shape = input_shape(model_spec, model)
    entries = [load_codec(path, model, model_spec, shape)[0] for path in codecs]
    base = plain_accuracy(model, test)
    if lost_rows:
        rows = _ints(lost_rows, "--lost-rows")
        acc = coded_accuracy(model, entries, test, lost=rows)
        return [
            f"base {base:.2f}%; rows {','.join(map(str, rows))} lost in every block: {acc:.2f}%"
        ]
    lines = ["| codec | block | k | r | lost | any of n | systematic only | drop (any) |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for cb in entries:
        for lost in range(cb.codec.r + 1):
            any_ = coded_accuracy(model, [cb], test, lost=lost)
            sys_ = coded_accuracy(model, [cb], test, lost=lost, systematic_only=True)
            lines.append(
                f"| {cb.codec.arch} | {cb.name} | {cb.codec.k} | {cb.codec.r} | {lost} | "
                f"{any_:.2f} | {sys_:.2f} | {base - any_:.2f} |"
            )
    head = f"base accuracy on {data} test ({len(test)} images): {base:.2f}%"
    if not markdown:
        return [head, *[line.replace("|", " ").strip() for line in lines if "---" not in line]]
    return [head, "", *lines]


if __name__ == "__main__":
    main()
