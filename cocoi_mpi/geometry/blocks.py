"""Conv blocks as the coding unit of the learned (non-linear) scheme (section V).

A conv block is a run of convs with their element-wise companions (BatchNorm,
activations) between pooling layers, inside an ``nn.Sequential``. Its output is cut
along the width into k equal pieces; each piece maps back through the whole block
to an input slice of one common width, because a learned encoder mixes equal-shape
pieces.

Equal widths come from running every conv "valid" (no width padding) on a slice of
the block input padded with enough zeros, and zeroing, before each inner conv, the
columns a piece computed outside the true feature map: those columns are the inner
convs' zero padding, so a systematic piece reproduces its output columns exactly.
Parity pieces (made by the encoder) carry no mask: they are "interior" everywhere.
Pure torch; the MPI workers, the training loop and the tests run this same code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .split import AxisGeom, equal_pieces

if TYPE_CHECKING:
    from ..codes import Scheme
    from .rounds import Prepared

Range = tuple[int, int]

ELEMENTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
)


class BlockError(UserError, ValueError):
    """A block cannot be built or split (the message says which and why)."""


@dataclass(frozen=True)
class BlockLoc:
    """Where a block sits: children ``start:stop`` of the Sequential ``container``."""

    container: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The name of its first conv, e.g. ``features.3``: what checkpoints refer to."""
        return f"{self.container}.{self.start}" if self.container else str(self.start)


def is_block_member(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, *ELEMENTWISE))


def find_blocks(model: nn.Module) -> list[BlockLoc]:
    """Every maximal run of convs and element-wise layers, with at least one conv,
    among the children of each ``nn.Sequential`` of the model."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        start = None
        for i, child in enumerate([*children, None]):
            member = child is not None and is_block_member(child)
            if member and start is None:
                start = i
            if not member and start is not None:
                if any(isinstance(c, nn.Conv2d) for c in children[start:i]):
                    found.append(BlockLoc(name, start, i))
                start = None
    return found


def block_modules(model: nn.Module, loc: BlockLoc) -> list[nn.Module]:
    container = model.get_submodule(loc.container) if loc.container else model
    return list(container.children())[loc.start : loc.stop]


def conv_width_geom(conv: nn.Conv2d) -> AxisGeom:
    left, right, _, _ = conv._reversed_padding_repeated_twice
    return AxisGeom(conv.kernel_size[1], conv.stride[1], conv.dilation[1], left, right)


@dataclass(frozen=True)
class BlockSpec:
    """What a worker needs to run subtasks of one block: a copy of its layers."""

    block_id: int
    name: str
    layers: nn.Sequential

    @cached_property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.layers if isinstance(m, nn.Conv2d)]

    @cached_property
    def geoms(self) -> list[AxisGeom]:
        return [conv_width_geom(c) for c in self.convs]

    def signature(self) -> list[dict]:
        """The block's structure, stored in codec checkpoints to refuse a wrong block."""
        return [
            {"type": type(m).__name__, **({"weight": list(m.weight.shape)} if is_conv(m) else {})}
            for m in self.layers
        ]

    # The coding-unit protocol (subtasks.Unit), answered by ConvSpec too.

    def compute(
        self, x: torch.Tensor, masks: Sequence[Range] = (), bias_scales: Sequence[float] = ()
    ) -> torch.Tensor:
        """A worker's subtask (``run_block``), masked when it is a systematic piece.

        A block keeps its biases inside its layers (its code is learned, not linear):
        ``bias_scales`` is for convs and is not used here."""
        return run_block(self, x, masks)

    def masks_for(self, prep: Prepared, index: int) -> tuple[Range, ...]:
        """Inner-conv masks of a systematic piece; parity pieces have none."""
        return prep.split.pieces[index].masks if index < prep.split.k else ()

    def reply_shape(self, prep: Prepared, code: Scheme) -> tuple[int, ...]:
        return prep.reply

    def rest_output(self, prep: Prepared) -> torch.Tensor | None:
        """The master's share of the columns (``run_rest``)."""
        return run_rest(self, prep.split, prep.padded)


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def block_spec(block_id: int, name: str, modules: Sequence[nn.Module]) -> BlockSpec:
    """Copy the block's modules (eval mode, no grad) and check every conv can be split."""
    for m in modules:
        if not is_block_member(m):
            raise BlockError(f"block {name}: {type(m).__name__} is not a conv or element-wise")
        if is_conv(m) and m.padding_mode != "zeros":
            raise BlockError(f"block {name}: padding_mode={m.padding_mode!r} is not supported")
    layers = copy.deepcopy(nn.Sequential(*modules)).eval()
    for p in layers.parameters():
        p.requires_grad_(False)
    return BlockSpec(block_id, name, layers)


@dataclass(frozen=True)
class PieceGeom:
    """One output piece: its columns, where its input starts, and its inner masks."""

    out: Range
    start: int  # first block-input column, in unpadded coordinates (may be < 0)
    masks: tuple[Range, ...]  # valid local columns of the input of each conv


@dataclass(frozen=True)
class BlockSplit:
    """The k equal pieces of a block's output, the master's remainder, and the padding."""

    width_in: int
    width_out: int
    pieces: tuple[PieceGeom, ...]
    rest: PieceGeom | None
    piece_in: int  # block-input width of every piece
    rest_in: int
    pad_left: int
    pad_right: int

    @property
    def k(self) -> int:
        return len(self.pieces)

    @property
    def piece_width(self) -> int:
        return self.pieces[0].out[1] - self.pieces[0].out[0]

    @property
    def remainder_width(self) -> int:
        return 0 if self.rest is None else self.rest.out[1] - self.rest.out[0]


def layer_widths(geoms: Sequence[AxisGeom], width_in: int) -> list[int]:
    """Input width of each conv, then the block's output width."""
    widths = [width_in]
    for g in geoms:
        widths.append(g.out_size(widths[-1]))
    return widths


def piece_geom(
    geoms: Sequence[AxisGeom], widths: Sequence[int], out: Range
) -> tuple[PieceGeom, int]:
    """Trace output columns ``out`` back through valid convs; returns the piece and its
    block-input width."""
    start, width = out[0], out[1] - out[0]
    starts, ins = [], []
    for g in reversed(geoms):
        start = start * g.stride - g.pad_before
        width = (width - 1) * g.stride + g.span
        starts.append(start)
        ins.append(width)
    starts.reverse()
    ins.reverse()
    masks = tuple(
        (lo := min(max(0, -s), w), max(lo, min(w, size - s)))
        for s, w, size in zip(starts, ins, widths[:-1], strict=True)
    )
    return PieceGeom(out, starts[0], masks), ins[0]


def split_block(spec: BlockSpec, width_in: int, k: int) -> BlockSplit:
    """Cut the block's output width into k equal pieces (the rest goes to the master)."""
    widths = layer_widths(spec.geoms, width_in)
    try:
        outs, rest = equal_pieces(widths[-1], k)
    except ValueError as exc:
        raise BlockError(f"block {spec.name}: {exc}") from None
    pieces = [piece_geom(spec.geoms, widths, o) for o in outs]
    rest_piece = piece_geom(spec.geoms, widths, rest) if rest else None
    spans = [(p.start, p.start + w) for p, w in [*pieces, *([rest_piece] if rest_piece else [])]]
    return BlockSplit(
        width_in=width_in,
        width_out=widths[-1],
        pieces=tuple(p for p, _ in pieces),
        rest=rest_piece[0] if rest_piece else None,
        piece_in=pieces[0][1],
        rest_in=rest_piece[1] if rest_piece else 0,
        pad_left=max(0, -min(a for a, _ in spans)),
        pad_right=max(0, max(b for _, b in spans) - width_in),
    )


def pad_width(split: BlockSplit, x: torch.Tensor) -> torch.Tensor:
    return (
        F.pad(x, (split.pad_left, split.pad_right, 0, 0))
        if split.pad_left or split.pad_right
        else x
    )


def piece_input(
    split: BlockSplit, padded: torch.Tensor, piece: PieceGeom, width: int
) -> torch.Tensor:
    a = piece.start + split.pad_left
    return padded[..., a : a + width]


def cut_block(split: BlockSplit, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) block input -> (B, k, C, H, piece_in) equal input pieces."""
    padded = pad_width(split, x)
    return torch.stack([piece_input(split, padded, p, split.piece_in) for p in split.pieces], 1)


def run_block(spec: BlockSpec, x: torch.Tensor, masks: Sequence[Range] = ()) -> torch.Tensor:
    """A worker's subtask: the block's layers on one piece, convs valid in width.

    ``masks`` (systematic pieces) zero the columns outside the true feature map before
    each conv (zero padding, also after leading element-wise layers); without masks
    (parity pieces) every column is kept.
    """
    conv_index = 0
    for module in spec.layers:
        if is_conv(module):
            if masks:
                x = mask_columns(x, masks[conv_index])
            x = valid_conv(module, x)
            conv_index += 1
        else:
            x = module(x)
    return x


def mask_columns(x: torch.Tensor, valid: Range) -> torch.Tensor:
    lo, hi = valid
    if lo <= 0 and hi >= x.shape[-1]:
        return x
    keep = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    keep[max(lo, 0) : max(hi, 0)] = 1
    return x * keep


def valid_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv with its height padding but none in width (the piece carries its own)."""
    _, _, top, bottom = conv._reversed_padding_repeated_twice
    if top or bottom:
        x = F.pad(x, (0, 0, top, bottom))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def run_rest(spec: BlockSpec, split: BlockSplit, x: torch.Tensor) -> torch.Tensor | None:
    """The master's own share: the output columns past the k equal pieces."""
    if split.rest is None:
        return None
    piece = piece_input(split, pad_width(split, x), split.rest, split.rest_in)
    return run_block(spec, piece, split.rest.masks)


def run_pieces(spec: BlockSpec, split: BlockSplit, pieces: torch.Tensor) -> torch.Tensor:
    """(B, k, C, H, w_in) systematic pieces -> (B, k, C_o, H_o, w_o), masked as workers do."""
    outs = [run_block(spec, pieces[:, i], p.masks) for i, p in enumerate(split.pieces)]
    return torch.stack(outs, 1)


def merge_block(decoded: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
    """(B, k, C_o, H_o, w_o) pieces + (B, C_o, H_o, w_rest) remainder -> block output."""
    parts = list(decoded.unbind(1))
    if rest is not None:
        parts.append(rest)
    return torch.cat(parts, dim=-1)


def block_reference(spec: BlockSpec, x: torch.Tensor) -> torch.Tensor:
    """The block as the model computes it."""
    return spec.layers(x)


def probe_block(spec: BlockSpec, piece_in: tuple[int, int, int]) -> tuple[tuple, int]:
    """Output shape (1, C_o, H_o, w_o) of one piece and the block's FLOPs on it."""
    x, flops = torch.zeros(1, *piece_in), 0
    with torch.no_grad():
        for module in spec.layers:
            x = valid_conv(module, x) if is_conv(module) else module(x)
            if is_conv(module):
                w = module.weight
                flops += 2 * x.numel() * w.shape[1] * w.shape[2] * w.shape[3]
    return tuple(x.shape), flops


def piece_shapes(
    spec: BlockSpec, in_shape: tuple[int, int, int], k: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(C, H, piece_in) and (C_o, H_o, piece_out) of a block's pieces for input (C, H, W)."""
    split = split_block(spec, in_shape[2], k)
    piece_in = (in_shape[0], in_shape[1], split.piece_in)
    return piece_in, probe_block(spec, piece_in)[0][1:]
