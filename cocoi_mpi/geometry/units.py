"""What one subtask is, for either unit of coding: a single conv or a conv block.

The master loop, the in-process engine and the worker call these and never branch
on the unit themselves: each unit's spec (``ConvSpec``, ``BlockSpec``) answers the
``Unit`` protocol. Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..codes import Scheme
from .rounds import ConvRound, Prepared

Range = tuple[int, int]


class Unit(Protocol):
    """What the runtime asks of a coding unit's spec (ConvSpec and BlockSpec answer it)."""

    def compute(
        self, x: torch.Tensor, masks: Sequence[Range] = (), bias_scales: Sequence[float] = ()
    ) -> torch.Tensor:
        """A worker's computation on one subtask input: (m, w, H, C) width-major for a
        conv, (m, C, H, w) for a block."""
        ...

    def masks_for(self, prep: ConvRound | Prepared, index: int) -> tuple[Range, ...]:
        """Inner-conv masks of subtask ``index`` (a block's systematic pieces only)."""
        ...

    def reply_shape(self, prep: ConvRound | Prepared, code: Scheme) -> tuple[int, ...]:
        """Shape of one subtask's output: (m, piece width, H_out, C_out) for a conv,
        (m, C_out, H_out, piece width) for a block."""
        ...

    def rest_output(self, prep: ConvRound | Prepared) -> torch.Tensor | None:
        """The master's own share of the output columns, if any."""
        ...


def compute(
    spec: Unit, x: torch.Tensor, masks: Sequence[Range] = (), bias_scales: Sequence[float] = ()
) -> torch.Tensor:
    """A worker's computation on one subtask input (``Unit.compute``); a conv adds its bias
    scaled per piece by ``bias_scales`` (blocks carry their biases inside)."""
    return spec.compute(x, masks, bias_scales)


def masks_for(spec: Unit, prep: ConvRound | Prepared, index: int) -> tuple[Range, ...]:
    """Inner-conv masks of a block's systematic piece; parity pieces and convs have none."""
    return spec.masks_for(prep, index)


def reply_shape(spec: Unit, prep: ConvRound | Prepared, code: Scheme) -> tuple[int, ...]:
    """Shape of one subtask's output (``Unit.reply_shape``)."""
    return spec.reply_shape(prep, code)


def rest_output(spec: Unit, prep: ConvRound | Prepared) -> torch.Tensor | None:
    """The master's share of the columns (none for convs)."""
    return spec.rest_output(prep)
