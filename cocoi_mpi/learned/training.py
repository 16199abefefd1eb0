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

from ..geometry.blocks import cut_block, run_block
from ..models.data import Dataset, batches
from .accuracy import coded_accuracy
from .cache import BlockCache
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
    per_epoch: int | None = None  # from a cache: a seeded random subset per epoch


def train_codec(
    model: nn.Module,
    cb: CodedBlock,
    train: Dataset,
    settings: CodecTraining,
    state: CodecState,
    progress: Callable[[dict], None] | None = None,
    test: Dataset | None = None,
    save: Callable[[CodecState], None] | None = None,
    cache: tuple[BlockCache, BlockCache | None] | None = None,
) -> CodecState:
    """Train ``cb.codec`` from ``state.epoch`` to ``settings.epochs``; the base model stays
    frozen. Calls ``progress`` and ``save`` after every epoch (checkpoint per epoch).

    With ``cache`` (train, test block caches) the block's inputs and exact outputs come
    from the cache instead of running the model: the loss is the same MSE, the
    per-epoch check is the test pieces' reconstruction error instead of an accuracy
    (which would need the whole model per image)."""
    if cache is not None and settings.task_loss > 0:
        raise ValueError("--task-loss runs the whole model per batch; it cannot use --cache")
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
        for loss, size in _batch_losses(model, cb, train, settings, epoch, gen, cache):
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * size
            count += size
        codec.eval()
        row = dict(epoch=epoch + 1, loss=total / max(count, 1), seconds=time.perf_counter() - t0)
        if cache is not None and cache[1] is not None:
            row["test_rel_err_lost_r"] = cached_reconstruction_error(
                cb, cache[1], cb.codec.r, settings.batch_size
            )
        elif test is not None:
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


def _batch_losses(model, cb, train, settings, epoch, gen, cache):
    """(loss, batch size) per training batch, from the model's forward or the cache."""
    seed = settings.seed + epoch
    if cache is None:
        for images, labels in batches(train, settings.batch_size, True, seed):
            yield codec_loss(model, cb, images, labels, settings.task_loss, gen), len(images)
        return
    batches_ = cache[0].block_batches(
        cb.name, settings.batch_size, True, seed, limit=settings.per_epoch
    )
    for x, y in batches_:
        present = random_erasures(len(x), cb.codec.n, cb.codec.r, gen)
        decoded, systematic = cached_decode(cb, x, y, present)
        yield F.mse_loss(decoded, systematic), len(x)


def output_pieces(cb: CodedBlock, y: torch.Tensor) -> torch.Tensor:
    """(B, k, C_o, H_o, w_o): the k source pieces' exact outputs, cut from the block's
    output. Equal to ``run_pieces`` on the masked source pieces (tests check it), so
    the cache spares that forward pass."""
    return torch.stack([y[..., p.out[0] : p.out[1]] for p in cb.split.pieces], 1)


def cached_decode(
    cb: CodedBlock, x: torch.Tensor, y: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded and exact source outputs for cached block inputs ``x`` and outputs ``y``:
    only the encoder, the block on the parity pieces and the decoder run."""
    systematic = output_pieces(cb, y)
    parity = cb.codec.parity(cut_block(cb.split, x))
    coded = torch.stack([run_block(cb.spec, parity[:, j]) for j in range(parity.shape[1])], 1)
    outputs = torch.cat([systematic, coded], 1)
    return cb.codec.reconstruct(outputs, present), systematic


def cached_reconstruction_error(
    cb: CodedBlock, cache: BlockCache, lost: int, batch_size: int, seed: int = 0
) -> float:
    """Relative L2 error of the rebuilt source outputs, ||rebuilt - exact|| / ||exact||
    over the pieces that were lost, with ``lost`` random outputs of n missing per image.
    Only lost source pieces count: a present one is exact, and a lost parity costs
    nothing, so diluting with them would flatter the code."""
    gen = torch.Generator().manual_seed(seed)
    err, ref = 0.0, 0.0
    with torch.no_grad():
        for x, y in cache.block_batches(cb.name, batch_size, False):
            present = ~(torch.rand(len(x), cb.codec.n, generator=gen).argsort(1) < lost)
            decoded, systematic = cached_decode(cb, x, y, present)
            missing = ~present[:, : cb.codec.k]
            err += float(((decoded - systematic)[missing] ** 2).sum())
            ref += float((systematic[missing] ** 2).sum())
    return (err / ref) ** 0.5 if ref > 0 else 0.0
