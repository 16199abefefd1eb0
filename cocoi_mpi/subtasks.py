"""What one subtask is, for either unit of coding: a single conv or a conv block.

The master loop, the in-process engine and the worker call these and never branch
on the unit themselves. Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .blocks import BlockSpec, run_block, run_rest
from .codes import Scheme
from .convtask import ConvRound, ConvSpec, Prepared, worker_conv

Range = tuple[int, int]


def compute(
    spec: ConvSpec | BlockSpec, x: torch.Tensor, masks: Sequence[Range] = ()
) -> torch.Tensor:
    """A worker's computation on one (m, C, H, w) subtask input."""
    if isinstance(spec, BlockSpec):
        return run_block(spec, x, masks)
    return worker_conv(spec, x)


def masks_for(
    spec: ConvSpec | BlockSpec, prep: ConvRound | Prepared, index: int
) -> tuple[Range, ...]:
    """Inner-conv masks of a block's systematic piece; parity pieces and convs have none."""
    if isinstance(spec, BlockSpec) and index < prep.split.k:
        return prep.split.pieces[index].masks
    return ()


def reply_shape(
    spec: ConvSpec | BlockSpec, prep: ConvRound | Prepared, code: Scheme
) -> tuple[int, ...]:
    """Shape of one subtask's output: (m, C_out, H_out, piece width)."""
    if isinstance(spec, BlockSpec):
        return prep.reply
    height = spec.height_geom.out_size(prep.height)
    return (code.pieces_per_task, spec.weight.shape[0], height, prep.split.piece_width)


def rest_output(spec: ConvSpec | BlockSpec, prep: ConvRound | Prepared) -> torch.Tensor | None:
    """The master's share of the columns (no bias for convs: added after decoding)."""
    if isinstance(spec, BlockSpec):
        return run_rest(spec, prep.split, prep.padded)
    return None  # a conv round covers every column with its pieces
