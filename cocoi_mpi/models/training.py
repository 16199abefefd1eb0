"""Train and evaluate base CNNs on a :class:`~cocoi_mpi.models.data.Dataset`, and save them.

Training is deterministic for a seed on one machine: the global torch RNG is seeded (inside
a fork, so callers' random state is untouched) and each epoch's shuffle comes from
:func:`~cocoi_mpi.models.data.batches` with a seed derived from (seed, epoch).

Checkpoints are plain dicts of tensors, strings and numbers, so ``torch.load(...,
weights_only=True)`` reads them and :func:`cocoi_mpi.models.load_weights` takes their
``"state_dict"``; or, for an output named ``.safetensors``, a safetensors file of the
state_dict with the rest as JSON metadata, which ``load_weights`` reads as well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Dataset, batches
from .tensorfiles import atomic_write, has_suffix, save_safetensors

__all__ = ["CHECKPOINT_KIND", "TrainLog", "accuracy", "save_base", "train_base"]

CHECKPOINT_KIND = "cocoi-base"


@dataclass
class TrainLog:
    """One row per epoch: epoch, loss, train_acc, test_acc (if a test set was given), seconds.

    ``seconds`` is the epoch's wall time, test evaluation included.
    """

    epochs: list[dict] = field(default_factory=list)

    @property
    def final_test_acc(self) -> float | None:
        """Test accuracy after the last epoch, or None without a test set or epochs."""
        return self.epochs[-1].get("test_acc") if self.epochs else None


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Percentage of ``data`` that ``model`` classifies correctly; the model's mode is kept."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for images, labels in batches(data, batch_size, shuffle=False):
                logits = _logits(model, images, data)
                correct += int((logits.argmax(dim=1) == labels).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / len(data)


def train_base(
    model: nn.Module,
    train: Dataset,
    test: Dataset | None,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> TrainLog:
    """Train ``model`` in place with Adam and cross-entropy; it is left in eval mode.

    ``progress`` gets each epoch's log row as soon as the epoch ends (for live output).
    """
    _check_settings(train, test, epochs, lr, weight_decay, batch_size, seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    log = TrainLog()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            row = {"epoch": epoch}
            row |= _train_epoch(model, optimiser, train, batch_size, _epoch_seed(seed, epoch))
            if test is not None:
                row["test_acc"] = accuracy(model, test)
            row["seconds"] = time.perf_counter() - start
            log.epochs.append(row)
            if progress is not None:
                progress(row)
    model.eval()
    return log


def _train_epoch(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    data: Dataset,
    batch_size: int,
    seed: int,
) -> dict:
    """One shuffled pass over ``data``; mean loss and accuracy seen during the pass."""
    model.train()
    total_loss, correct = 0.0, 0
    for images, labels in batches(data, batch_size, shuffle=True, seed=seed):
        optimiser.zero_grad(set_to_none=True)
        logits = _logits(model, images, data)
        loss = nn.functional.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()}; try a smaller lr")
        loss.backward()
        optimiser.step()
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
    return {
        "loss": total_loss / len(data),
        "train_acc": 100.0 * correct / len(data),
    }


def _logits(model: nn.Module, images: torch.Tensor, data: Dataset) -> torch.Tensor:
    """Run the model, checking it scores as many classes as the dataset has."""
    logits = model(images)
    if logits.dim() != 2 or logits.shape[1] != data.classes:
        raise ValueError(
            f"model outputs shape {tuple(logits.shape)} but dataset {data.name} has "
            f"{data.classes} classes; expected (batch, {data.classes})"
        )
    return logits


def _epoch_seed(seed: int, epoch: int) -> int:
    """A shuffle seed per (seed, epoch) pair, with no overlap between nearby seeds."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _check_settings(
    train: Dataset,
    test: Dataset | None,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> None:
    problems = []
    if epochs < 1:
        problems.append(f"epochs must be at least 1, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        problems.append(f"lr must be a positive number, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        problems.append(f"weight_decay must be >= 0, got {weight_decay}")
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    if test is not None and test.classes != train.classes:
        problems.append(
            f"test set {test.name} has {test.classes} classes, "
            f"train set {train.name} has {train.classes}"
        )
    if problems:
        raise ValueError("train_base: " + "; ".join(problems))


def save_base(
    path: str | Path,
    model: nn.Module,
    model_spec: str,
    data_spec: str,
    log: TrainLog,
) -> None:
    """Write a trained base model atomically, so an interrupted save leaves no half file.

    The dict holds kind, model and data specs, the state_dict (CPU tensors), the log rows
    and the last test accuracy (None if trained without a test set). A ``path`` ending in
    ``.safetensors`` gets the state_dict as its tensors and the rest as its metadata
    (:mod:`~cocoi_mpi.models.tensorfiles`); either loads with ``load_weights``.
    """
    checkpoint = {
        "kind": CHECKPOINT_KIND,
        "model": model_spec,
        "data": data_spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "log": [dict(row) for row in log.epochs],
        "accuracy": log.final_test_acc,
    }
    if has_suffix(path):
        save_safetensors(path, checkpoint.pop("state_dict"), checkpoint)
    else:
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then os.replace onto ``path``
    (:func:`~cocoi_mpi.models.tensorfiles.atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
