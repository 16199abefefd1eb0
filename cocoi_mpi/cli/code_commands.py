"""``cocoi codes``, ``cocoi train`` and ``cocoi accuracy``: the decode error of the linear codes,
training a base model or a learned codec, and the accuracy with coded outputs lost."""

from __future__ import annotations

import click

from ..errors import UserError
from .common import _ints, reported_as


@click.command()
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
    help="Sources per layer; repeat for several. [default: every k in 1..n up to n = 12; "
    "past it 1, n/4, n/2, 3n/4, n-2, n-1 and n]",
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
    """Worst-case decode error over the k-subsets of n subtasks, float32 and float64.

    Every k-subset while there are at most 3,000 of them; past that a search (the
    consecutive runs and a seeded sample of 300), a lower bound only: the last column
    says which. A grouped stable code (n > 12) is checked group by group, every
    pattern of each, which is its whole worst case."""
    from ..codes import CODES
    from ..codes.analysis import error_table, format_table
    from ..experiment.config import RunConfig

    if any(k > n for k in ks):
        raise click.BadParameter(f"every k must be at most n={n}", param_hint="--k")
    unknown = sorted(set(codes) - set(CODES))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {CODES}", param_hint="--code")
    rows = error_table(n, sorted(set(ks)) or default_ks(n), codes or CODES, systematic=systematic)
    click.echo(format_table(rows, RunConfig.tolerance, markdown=markdown))


def default_ks(n: int) -> list[int]:
    """Every k for small n; the telling ones past the shipped stable blocks."""
    from ..codes.stable import TABLE_MAX_N

    if n <= TABLE_MAX_N:
        return list(range(1, n + 1))
    return sorted({1, max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), max(1, n - 2), n - 1, n})


@click.command()
@click.option(
    "--model", default="lenet5", show_default=True, help="Registry name or module:factory."
)
@click.option("--weights", help="Base model weights (.pt, .safetensors); required for a codec.")
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
@click.option("--resume", is_flag=True, help="Continue from --out's .pt checkpoint to --epochs.")
@click.option(
    "--count",
    help="TRAIN[:TEST]: only the first TRAIN training and TEST test images (big models).",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    help="Folder of block inputs/outputs captured once (DIR/train, DIR/test) and reused: "
    "codecs train without re-running the model.",
)
@click.option(
    "--per-epoch",
    type=click.IntRange(min=1),
    help="With --cache: each epoch trains on a seeded random subset of this many images.",
)
@click.option(
    "--head-only",
    is_flag=True,
    help="With --base: train only the last Linear layer on cached features (needs --cache).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint to write: .pt, or .safetensors (no optimizer state, so no --resume).",
)
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
    from ..learned.accuracy import coded_accuracy
    from ..learned.checkpoint import load_codec, new_state, save_codec
    from ..learned.coded_block import make_coded_block
    from ..learned.training import CodecTraining, cached_reconstruction_error, train_codec
    from ..models import build_model, input_shape, load_weights
    from ..models.tensorfiles import is_safetensors
    from ..models.training import TrainLog, accuracy, save_base, train_base
    from .cached_training import block_caches, model_data, train_head_only

    echo = (lambda *a: None) if o["quiet"] else click.echo
    model = build_model(o["model"], seed=o["seed"])
    if o["head_only"] and not o["base"]:
        raise UserError("--head-only applies to --base (training the model's head)")
    if o["per_epoch"] and not o["cache"]:
        raise UserError("--per-epoch picks images from a block cache: give --cache DIR")
    if o["base"] and o["head_only"]:
        log = TrainLog(train_head_only(o, model, echo))
        save_base(o["out"], model, o["model"], o["data"], log)
        click.echo(
            f"base {o['model']} (head only) on {o['data']}: test accuracy {log.final_test_acc:.2f}%"
        )
        click.echo(f"wrote {o['out']}")
        return
    train_set, test_set = model_data(o["data"], input_shape(o["model"], model), o["count"])
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
    if o["resume"] and is_safetensors(o["out"]):
        raise UserError(
            f"--resume: {o['out']} is a .safetensors codec, which keeps no optimizer state; "
            "train to a .pt to resume, then cocoi convert it"
        )
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
        per_epoch=o["per_epoch"],
    )
    echo(
        f"codec {cb.codec.arch} for {cb.name}: k={cb.codec.k}, r={cb.codec.r}, pieces "
        f"{cb.codec.in_shape} -> {cb.codec.out_shape}, epochs {state.epoch + 1}..{settings.epochs}"
    )
    caches = None
    if o["cache"]:
        caches = block_caches(model, o["model"], train_set, test_set, o["cache"], o["quiet"])
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
            cache=caches,
        )
    save_codec(o["out"], cb, state)
    if caches is not None:
        errors = [
            cached_reconstruction_error(cb, caches[1], m, settings.batch_size)
            for m in range(1, cb.codec.r + 1)
        ]
        click.echo(
            f"relative error of the rebuilt pieces, 1..{cb.codec.r} of {cb.codec.n} outputs "
            f"lost ({len(test_set)} test images): " + ", ".join(f"{e:.4f}" for e in errors)
        )
        click.echo(f"wrote {o['out']}")
        return
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
        f", {key} {value:.2f}" if "acc" in key else f", {key} {value:.4f}" if "err" in key else ""
        for key, value in row.items()
        if value is not None
    )
    return f"loss {row['loss']:.4g}{extra}"


def _epoch_line(row: dict, epochs: int) -> str:
    return f"epoch {row['epoch']}/{epochs}: {_epoch_stats(row)} ({row['seconds']:.1f} s)"


@click.command()
@click.option("--model", default="lenet5", show_default=True)
@click.option("--weights", required=True, help="Base model weights (.pt or .safetensors).")
@click.option("--codec", "codecs", multiple=True, required=True, help="Codec checkpoint; repeat.")
@click.option("--data", default="digits", show_default=True)
@click.option(
    "--lost-rows",
    help="Exactly these code rows lost in every block (e.g. 0,2): what a run with those "
    "workers silent decodes from. Default: the table over 0..r outputs lost.",
)
@click.option("--markdown", is_flag=True, help="Print the table as markdown.")
@click.option(
    "--count", type=click.IntRange(min=1), help="Only the first N test images (big models)."
)
@click.option(
    "--together",
    is_flag=True,
    help="Every codec at once, the same rows lost in every block (what failed workers do to "
    "a run): accuracy and agreement with the exact model, one forward pass per row set.",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="With --together: random row sets per number lost.",
)
def accuracy(model, weights, codecs, data, lost_rows, markdown, count, together, draws) -> None:
    """Test accuracy of the base model and with 0..r outputs lost (paper Fig. 10)."""
    with reported_as(UserError, ValueError):
        if together:
            lines = _together_lines(model, weights, codecs, data, count, draws, markdown)
        else:
            lines = _accuracy_lines(model, weights, codecs, data, lost_rows, markdown, count)
        for line in lines:
            click.echo(line)


def _together_lines(model_spec, weights, codecs, data, count, draws, markdown) -> list[str]:
    from ..learned.accuracy import together_rows

    model, entries, test = _coded_model(model_spec, weights, codecs, data, count)
    rows = together_rows(model, entries, test, draws)
    names = ", ".join(cb.name for cb in entries)
    lines = [
        f"{len(entries)} coded blocks ({names}); {test.name}, {len(test)} images",
        "",
        "| lost rows | rows | accuracy % | agreement with exact % |",
        "|---:|---|---:|---:|",
    ]
    for row in rows:
        rows_text = ",".join(map(str, row["rows"])) or "-"
        lines.append(
            f"| {row['lost']} | {rows_text} | {row['accuracy']:.2f} | {row['agreement']:.2f} |"
        )
    if not markdown:
        return [line.replace("|", " ").strip() for line in lines if "---" not in line]
    return lines


def _coded_model(model_spec, weights, codecs, data, count):
    """The base model, its codecs, and the test data fitted to its input."""
    from ..learned.checkpoint import load_codec
    from ..models import build_model, input_shape, load_weights
    from ..models.data import fit_to_input, load_dataset

    model = build_model(model_spec)
    load_weights(model, weights)
    model.eval()
    shape = input_shape(model_spec, model)
    test = load_dataset(data, "test")
    if count is not None:
        test = test.subset(min(count, len(test)))
    entries = [load_codec(path, model, model_spec, shape)[0] for path in codecs]
    return model, entries, fit_to_input(test, shape)


def _accuracy_lines(model_spec, weights, codecs, data, lost_rows, markdown, count) -> list[str]:
    from ..learned.accuracy import coded_accuracy
    from ..models.training import accuracy as plain_accuracy

    model, entries, test = _coded_model(model_spec, weights, codecs, data, count)
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
