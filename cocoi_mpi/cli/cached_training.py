"""What ``cocoi train`` does for models too big to train the plain way here (VGG16 at
224x224): data fitted to the model's input, subsets (``--count``), block caches
(``--cache``) and head-only base training (``--head-only``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError


def parse_count(text: str | None) -> tuple[int | None, int | None]:
    """``--count TRAIN[:TEST]`` -> (train, test); None keeps the whole split."""
    if not text:
        return None, None
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise UserError(f"--count takes TRAIN or TRAIN:TEST, positive integers; got {text!r}")
    return values[0], values[1] if len(values) == 2 else None


def model_data(data_spec: str, shape: tuple, count: str | None):
    """(train, test) datasets cut to ``--count`` and fitted to the model's input."""
    from ..models.data import fit_to_input, load_dataset

    train_n, test_n = parse_count(count)
    train, test = load_dataset(data_spec, "train"), load_dataset(data_spec, "test")
    if train_n is not None:
        train = train.subset(train_n)
    if test_n is not None:
        test = test.subset(test_n)
    return fit_to_input(train, shape), fit_to_input(test, shape)


def block_caches(model, model_spec: str, train, test, directory: str, quiet: bool):
    """(train, test) block caches under DIR/train and DIR/test, captured on first use."""
    from ..experiment.progress import progress
    from ..learned.cache import open_or_capture

    caches = []
    for part, data in (("train", train), ("test", test)):
        folder = Path(directory) / part
        fresh = not (folder / "meta.json").is_file()
        if fresh and not quiet:
            click.echo(f"capturing every block's input and output for {data.name} -> {folder}")
        with progress(len(data) if fresh else 0, f"capture {part}", quiet, unit="image") as bar:
            caches.append(open_or_capture(model, model_spec, data, folder, progress=bar.update))
    return caches[0], caches[1]


def train_head_only(o: dict, model, echo) -> list[dict]:
    """``--base --head-only``: the last Linear trained on cached features; returns the log."""
    from ..learned.head import train_head
    from ..models import input_shape

    if not o["cache"]:
        raise UserError("--head-only trains on cached features: give --cache DIR")
    model.eval()
    train, test = model_data(o["data"], input_shape(o["model"], model), o["count"])
    train_cache, test_cache = block_caches(model, o["model"], train, test, o["cache"], o["quiet"])
    return train_head(
        model,
        train_cache,
        test_cache,
        o["epochs"],
        o["lr"],
        o["weight_decay"] or 0.0,
        o["batch_size"],
        o["seed"],
        progress=lambda row: echo(
            f"epoch {row['epoch']}/{o['epochs']}: loss {row['loss']:.4g}, "
            f"train {row['train_acc']:.2f}%, test {row['test_acc']:.2f}% ({row['seconds']:.1f} s)"
        ),
    )
