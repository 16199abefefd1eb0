"""Accuracy of a model whose coded blocks lose outputs: every erasure pattern, random
ones, or exactly the code rows a run lost (the paper's Fig. 10, the seed paper's
Table V).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..models.data import Dataset, batches
from .coded_block import CodedBlock, replaced_blocks
from .scheme import Codec


def erasure_patterns(n: int, lost: int, among: int | None = None) -> list[tuple[int, ...]]:
    """Every set of ``lost`` subtasks out of the first ``among`` (default all n)."""
    return list(itertools.combinations(range(among if among is not None else n), lost))


def pattern_mask(n: int, lost: Sequence[int], batch: int) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[:, list(lost)] = False
    return mask


def coded_accuracy(
    model: nn.Module,
    entries: Sequence[CodedBlock],
    data: Dataset,
    lost: int | Sequence[int] = 0,
    systematic_only: bool = False,
    draws: int = 0,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (percent) with outputs lost in every coded block.

    ``lost`` an int: that many outputs lost per block, averaged over every pattern
    (one block, ``draws`` = 0) or over ``draws`` random patterns per image. ``lost`` a
    sequence: exactly those code rows lost in every block (what a run with silent
    workers does). ``systematic_only``: only original pieces are lost (the worst case).
    """
    if not isinstance(lost, int):
        return _accuracy_with(
            model, entries, data, lambda i, b: pattern_mask(entries[i].codec.n, lost, b), batch_size
        )
    if lost == 0:
        return _accuracy_with(
            model, entries, data, lambda i, b: pattern_mask(entries[i].codec.n, (), b), batch_size
        )
    if len(entries) == 1 and draws == 0:
        codec = entries[0].codec
        patterns = erasure_patterns(codec.n, lost, codec.k if systematic_only else None)
        accs = [
            _accuracy_with(
                model, entries, data, lambda i, b, p=p: pattern_mask(codec.n, p, b), batch_size
            )
            for p in patterns
        ]
        return sum(accs) / len(accs)
    gen = torch.Generator().manual_seed(seed)
    accs = [
        _accuracy_with(
            model,
            entries,
            data,
            lambda i, b: random_lost(entries[i].codec, lost, b, systematic_only, gen),
            batch_size,
        )
        for _ in range(max(1, draws))
    ]
    return sum(accs) / len(accs)


def random_lost(codec: Codec, lost: int, batch: int, systematic_only: bool, gen) -> torch.Tensor:
    among = codec.k if systematic_only else codec.n
    order = torch.rand(batch, among, generator=gen).argsort(1)[:, :lost]
    mask = torch.ones(batch, codec.n, dtype=torch.bool)
    mask.scatter_(1, order, False)
    return mask


def _accuracy_with(model, entries, data: Dataset, present, batch_size: int) -> float:
    correct = 0
    with torch.no_grad(), replaced_blocks(model, entries, present):
        for images, labels in batches(data, batch_size, False):
            correct += int((model(images).argmax(1) == labels).sum())
    return 100.0 * correct / len(data)


def coded_predictions(
    model: nn.Module, entries: Sequence[CodedBlock], images: torch.Tensor, lost: Sequence[int]
) -> torch.Tensor:
    """Logits with exactly the code rows ``lost`` missing in every block (offline replay)."""
    with (
        torch.no_grad(),
        replaced_blocks(model, entries, lambda i, b: pattern_mask(entries[i].codec.n, lost, b)),
    ):
        return model(images)


def together_rows(
    model: nn.Module,
    entries: Sequence[CodedBlock],
    data: Dataset,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> list[dict]:
    """Every codec at once, the same code rows lost in every block: what ``lost`` failed
    workers do to a run (worker i computes row i of every block). For lost = 0..r,
    ``draws`` seeded random row sets each; per set the top-1 accuracy and the agreement
    with the exact model's top-1 (the meaning accuracy keeps for weights not trained
    on the data). Needs one full forward pass per set: affordable for VGG16 where the
    every-pattern table of :func:`coded_accuracy` is not."""
    sizes = {cb.codec.n for cb in entries}
    if len(sizes) != 1:
        raise ValueError(f"codecs of different n ({sorted(sizes)}): no worker rows in common")
    n, r = sizes.pop(), min(cb.codec.r for cb in entries)
    exact = _predictions(model, [], data, (), batch_size)
    rng = np.random.default_rng([seed, 20])
    rows = []
    for lost in range(r + 1):
        for _ in range(draws if lost else 1):
            pattern = tuple(sorted(int(i) for i in rng.choice(n, lost, replace=False)))
            coded = _predictions(model, entries, data, pattern, batch_size)
            rows.append(
                dict(
                    lost=lost,
                    rows=pattern,
                    accuracy=100.0 * float((coded == data.labels).float().mean()),
                    agreement=100.0 * float((coded == exact).float().mean()),
                )
            )
    return rows


def _predictions(model, entries, data: Dataset, lost: Sequence[int], batch_size: int):
    out = []
    for images, _labels in batches(data, batch_size, False):
        if entries:
            out.append(coded_predictions(model, entries, images, lost).argmax(1))
        else:
            with torch.no_grad():
                out.append(model(images).argmax(1))
    return torch.cat(out)
