"""Training only a model's head on cached features (``cocoi train --base --head-only``).

Training all of VGG16 at 224x224 on this project's CPUs is out of reach (about 90
GFLOP per image per step), and no ImageNet weights ship with it. What can be trained
is the last Linear layer on the features the rest of the seeded model computes: a
linear probe of its random features. The model is then a real classifier of the data
(its accuracy a real number), with the seeded conv trunk every coded run uses, so
block caches and codecs made for the seeded model stay valid (the trunk digest
excludes the head). docs/fig8.md reports what accuracy then means.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .cache import BlockCache, as_float, head_layer


def train_head(
    model: nn.Module,
    train: BlockCache,
    test: BlockCache | None,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fit the head (the last nn.Linear) to the cached features with Adam and
    cross-entropy; the rest of the model is untouched. One log row per epoch."""
    found = head_layer(model)
    if found is None:
        raise UserError("--head-only: this model has no Linear layer to train")
    head = found[1]
    features, labels = as_float(train.head_inputs()), train.labels()
    if features.shape[1] != head.in_features:
        raise UserError(
            f"--head-only: cached features have {features.shape[1]} values, "
            f"the head takes {head.in_features}"
        )
    for p in head.parameters():  # a codec's training may have frozen the whole model
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    log = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(head(features[index]), labels[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(index)
        row = dict(epoch=epoch + 1, loss=total / len(labels), train_acc=head_accuracy(head, train))
        if test is not None:
            row["test_acc"] = head_accuracy(head, test)
        row["seconds"] = time.perf_counter() - t0
        log.append(row)
        if progress is not None:
            progress(row)
    return log


def head_accuracy(head: nn.Linear, cache: BlockCache) -> float:
    """Top-1 accuracy (percent) of the head on a cache's features: what the whole
    model scores, since the features are the model's own up to the head."""
    with torch.no_grad():
        logits = head(as_float(cache.head_inputs()))
    return 100.0 * float((logits.argmax(1) == cache.labels()).float().mean())
