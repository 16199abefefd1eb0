"""Codec training for one conv block, without MPI (what ``cocoi train`` runs for a codec).

Training follows the seed paper: the base model is frozen, each batch's k pieces are
encoded, all n pieces go through the block exactly as workers run them
(``blocks.run_block``), 0..r outputs are erased at random per sample, and the MSE
between the decoded and the true block output is minimised with Adam (lr 1e-3,
weight decay 1e-5). An optional task loss adds the cross-entropy of the whole model
run on the decoded block output.

The coded block is :mod:`cocoi_mpi.learned.coded_block`, accuracy with outputs lost
:mod:`cocoi_mpi.learned.accuracy`, checkpoints :mod:`cocoi_mpi.learned.checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.data import Dataset, batches
from .accuracy import coded_accuracy
from .checkpoint import CodecState
from .coded_block import CodedBlock, block_inputs, block_outputs, random_erasures, replaced_blocks

# --------------------------------------------------------------------------- training


@dataclass
class CodecTraining:
    """Settings of ``cocoi train`` for a codec (the seed paper's hyperparameters)."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 64
    task_loss: float = 0.0  # weight of the cross-entropy term; 0: MSE only
    seed: int = 0


def train_codec(
    model: nn.Module,
    cb: CodedBlock,
    train: Dataset,
    settings: CodecTraining,
    state: CodecState,
    progress: Callable[[dict], None] | None = None,
    test: Dataset | None = None,
    save: Callable[[CodecState], None] | None = None,
) -> CodecState:
    """Train ``cb.codec`` from ``state.epoch`` to ``settings.epochs``; the base model stays
    frozen. Calls ``progress`` and ``save`` after every epoch (checkpoint per epoch)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    codec = cb.codec
    opt = torch.optim.Adam(codec.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if state.optimizer:
        opt.load_state_dict(state.optimizer)
    for epoch in range(state.epoch, settings.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        codec.train()
        total, count = 0.0, 0
        for images, labels in batches(train, settings.batch_size, True, settings.seed + epoch):
            loss = codec_loss(model, cb, images, labels, settings.task_loss, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(images)
            count += len(images)
        codec.eval()
        row = dict(epoch=epoch + 1, loss=total / max(count, 1), seconds=time.perf_counter() - t0)
        if test is not None:
            row["test_acc_lost_r"] = coded_accuracy(model, [cb], test, lost=cb.codec.r, draws=1)
        state.epoch = epoch + 1
        state.history.append(row)
        state.optimizer = opt.state_dict()
        if save is not None:
            save(state)
        if progress is not None:
            progress(row)
    return state


def codec_loss(
    model: nn.Module,
    cb: CodedBlock,
    images: torch.Tensor,
    labels: torch.Tensor,
    task_weight: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """MSE between decoded and true block outputs under random erasures (+ task loss)."""
    x = block_inputs(model, cb.loc, images)
    present = random_erasures(len(x), cb.codec.n, cb.codec.r, gen)
    outputs, systematic = block_outputs(cb, x)
    decoded = cb.codec.reconstruct(outputs, present)
    loss = F.mse_loss(decoded, systematic.detach())
    if task_weight > 0:
        with replaced_blocks(model, [cb], lambda i, b: present):
            logits = model(images)
        loss = loss + task_weight * F.cross_entropy(logits, labels)
    return loss
