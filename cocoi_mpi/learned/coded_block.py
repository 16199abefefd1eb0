"""One conv block under a learned code, as codec training and evaluation run it without
MPI: find the block, build its codec, run all n subtasks exactly as workers do
(``blocks.run_block``), erase outputs, and swap the coded output into the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
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
from .scheme import Codec


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
