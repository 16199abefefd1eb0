"""Learned codes end to end, without MPI: train a codec for one conv block, save and
check its checkpoint, and measure accuracy with outputs lost (the paper's Fig. 10,
the seed paper's Table V).

Training follows the seed paper: the base model is frozen, each batch's k pieces are
encoded, all n pieces go through the block exactly as workers run them
(``blocks.run_block``), 0..r outputs are erased at random per sample, and the MSE
between the decoded and the true block output is minimised with Adam (lr 1e-3,
weight decay 1e-5). An optional task loss adds the cross-entropy of the whole model
run on the decoded block output.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InternalError, UserError
from ..geometry.blocks import (
    BlockLoc,
    BlockSpec,
    BlockSplit,
    block_modules,
    block_spec,
    cut_block,
    find_blocks,
    merge_block,
    piece_shapes,
    run_block,
    run_pieces,
    run_rest,
    split_block,
)
from ..models.data import Dataset, batches
from ..models.inputs import read_error, torch_load
from ..models.training import atomic_torch_save
from .scheme import Codec

CHECKPOINT_KIND = "cocoi-codec"
CHECKPOINT_VERSION = 1


class CodecError(UserError, ValueError):
    """A codec checkpoint is unreadable or does not fit the model, block or input."""


@dataclass
class CodedBlock:
    """One block under a learned code, as training and evaluation use it."""

    loc: BlockLoc
    spec: BlockSpec
    split: BlockSplit
    codec: Codec

    @property
    def name(self) -> str:
        return self.loc.name


def locate_block(model: nn.Module, name: str) -> BlockLoc:
    """The block whose first conv is ``name`` (e.g. features.3); errors list the choices."""
    locs = find_blocks(model)
    for loc in locs:
        if loc.name == name:
            return loc
    choices = ", ".join(loc.name for loc in locs) or "none"
    raise CodecError(f"no conv block named {name!r} in this model; blocks: {choices}")


def block_input_shape(model: nn.Module, loc: BlockLoc, input_shape: Sequence[int]) -> tuple:
    """(C, H, W) reaching the block when the model sees one input of ``input_shape``."""
    return tuple(block_inputs(model, loc, torch.zeros(1, *input_shape)).shape[1:])


class _Stop(InternalError):
    """Ends a forward pass once the block input is captured."""


def make_coded_block(
    model: nn.Module,
    name: str,
    input_shape: Sequence[int],
    k: int,
    r: int,
    arch: str,
    hidden_enc: int | None = None,
    hidden_dec: int | None = None,
) -> CodedBlock:
    """A fresh (untrained) codec for block ``name`` of ``model``."""
    loc = locate_block(model, name)
    spec = block_spec(0, loc.name, block_modules(model, loc))
    shape = block_input_shape(model, loc, input_shape)
    split = split_block(spec, shape[2], k)
    in_piece, out_piece = piece_shapes(spec, shape, k)
    codec = Codec(arch, k, r, in_piece, out_piece, hidden_enc, hidden_dec)
    return CodedBlock(loc, spec, split, codec)


# --------------------------------------------------------------------------- the coded block


def block_outputs(cb: CodedBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, ...) outputs of all n subtasks, as workers compute them, and the exact
    (B, k, ...) systematic ones. Gradients reach the encoder through the frozen block."""
    pieces = cut_block(cb.split, x)
    systematic = run_pieces(cb.spec, cb.split, pieces)
    parity = cb.codec.parity(pieces)
    coded = [run_block(cb.spec, parity[:, j]) for j in range(parity.shape[1])]
    return torch.cat([systematic, torch.stack(coded, 1)], 1), systematic


def coded_block_output(cb: CodedBlock, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The block's output rebuilt from the subtasks in ``present`` (B, n) — the runtime's
    LearnedScheme.decode, batched."""
    outputs, _ = block_outputs(cb, x)
    decoded = cb.codec.reconstruct(outputs, present)
    return merge_block(decoded, run_rest(cb.spec, cb.split, x))


def random_erasures(batch: int, n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, n) presence masks with 0..r outputs missing, uniformly at random."""
    lost = torch.randint(0, r + 1, (batch,), generator=gen)
    order = torch.rand(batch, n, generator=gen).argsort(1)
    ranks = order.argsort(1)  # a random permutation rank per position
    return ranks >= lost.unsqueeze(1)


@contextmanager
def replaced_blocks(
    model: nn.Module, entries: Sequence[CodedBlock], present: Callable[[int, int], torch.Tensor]
) -> Iterator[None]:
    """Run ``model`` with each block's output replaced by its coded version.

    ``present(block_index, batch)`` gives the (batch, n) presence mask of a forward
    pass. A pre-hook on the block's first module keeps its input; a hook on its last
    module returns the coded output in place of the plain one.
    """
    handles = []
    for i, cb in enumerate(entries):
        modules = block_modules(model, cb.loc)
        store = {}

        def keep(module, args, store=store):
            store["x"] = args[0]

        def swap(module, args, output, store=store, i=i, cb=cb):
            x = store.pop("x")
            return coded_block_output(cb, x, present(i, x.shape[0]))

        handles.append(modules[0].register_forward_pre_hook(keep))
        handles.append(modules[-1].register_forward_hook(swap))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def block_inputs(model: nn.Module, loc: BlockLoc, images: torch.Tensor) -> torch.Tensor:
    """The block's inputs for a batch of images (the model's prefix, no grad)."""
    first = block_modules(model, loc)[0]
    seen = {}

    def grab(module, args):
        seen["x"] = args[0].detach()
        raise _Stop

    handle = first.register_forward_pre_hook(grab)
    try:
        with torch.no_grad(), contextlib.suppress(_Stop):
            model(images)
    finally:
        handle.remove()
    return seen["x"]


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


@dataclass
class CodecState:
    """What a checkpoint carries besides the weights: enough to resume and to refuse."""

    model: str
    block: str
    data: str
    input_shape: tuple
    block_input_shape: tuple
    signature: list
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    optimizer: dict | None = None


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


# --------------------------------------------------------------------------- accuracy


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


# --------------------------------------------------------------------------- checkpoints


def save_codec(path: str | Path, cb: CodedBlock, state: CodecState) -> None:
    """Write a checkpoint atomically: an interrupted save never leaves half a file."""
    payload = dict(
        kind=CHECKPOINT_KIND,
        version=CHECKPOINT_VERSION,
        codec=cb.codec.meta(),
        state_dict=cb.codec.state_dict(),
        model=state.model,
        block=state.block,
        data=state.data,
        input_shape=list(state.input_shape),
        block_input_shape=list(state.block_input_shape),
        signature=state.signature,
        epoch=state.epoch,
        history=state.history,
        optimizer=state.optimizer,
    )
    atomic_torch_save(payload, Path(path))


def read_codec(path: str | Path) -> dict:
    """The raw checkpoint dict, with clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"codec checkpoint not found: {path}")
    try:
        payload = torch_load(path)
    except Exception as exc:
        raise CodecError(f"cannot read codec checkpoint {path}: {read_error(exc)}") from None
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise CodecError(f"{path} is not a cocoi codec checkpoint (made by cocoi train)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CodecError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    return payload


def load_codec(
    path: str | Path, model: nn.Module, model_spec: str, input_shape: Sequence[int]
) -> tuple[CodedBlock, CodecState]:
    """Rebuild a checkpoint's codec for ``model``; refuse one made for another model,
    block, block structure or input size."""
    payload = read_codec(path)
    if payload["model"] != model_spec:
        raise CodecError(f"{path} was trained for model {payload['model']!r}, not {model_spec!r}")
    loc = locate_block(model, payload["block"])
    spec = block_spec(0, loc.name, block_modules(model, loc))
    if spec.signature() != payload["signature"]:
        raise CodecError(
            f"{path}: block {loc.name} of this model has another structure than the codec's"
        )
    shape = block_input_shape(model, loc, input_shape)
    if list(shape) != list(payload["block_input_shape"]):
        raise CodecError(
            f"{path}: block {loc.name} receives {tuple(shape)} here, the codec was trained for "
            f"{tuple(payload['block_input_shape'])} (input {tuple(payload['input_shape'])})"
        )
    try:
        codec = Codec.from_meta(payload["codec"])
        codec.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CodecError(f"{path}: codec weights do not load: {exc}") from None
    codec.eval()
    split = split_block(spec, shape[2], codec.k)
    state = CodecState(
        model=payload["model"],
        block=payload["block"],
        data=payload["data"],
        input_shape=tuple(payload["input_shape"]),
        block_input_shape=tuple(shape),
        signature=payload["signature"],
        epoch=payload["epoch"],
        history=list(payload["history"]),
        optimizer=payload.get("optimizer"),
    )
    return CodedBlock(loc, spec, split, codec), state


def new_state(
    model_spec: str, data: str, input_shape, cb: CodedBlock, model: nn.Module
) -> CodecState:
    return CodecState(
        model=model_spec,
        block=cb.name,
        data=data,
        input_shape=tuple(input_shape),
        block_input_shape=block_input_shape(model, cb.loc, input_shape),
        signature=cb.spec.signature(),
    )
