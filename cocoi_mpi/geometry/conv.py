"""One type-1 conv as a coded task: what the master cuts, what a worker computes.

Pure torch. The MPI master and the in-process engine both use these functions, so
the arithmetic that decides exactness is the same code in tests and in real runs.

The master cuts equal pieces that together cover the whole output width (the last
one reaches past it and is cropped), copying each piece's input columns straight into
its subtask's send buffer, with zeros where the layer's padding (or the coverage past
the edge) is; a worker pads the height itself and convolves. Pieces travel
width-major, stored (w, H, C) (:mod:`cocoi_mpi.geometry.layout`): a window of columns
is then one contiguous block for the master to copy. The bias is added by the
workers, scaled by the subtask's encoding row sums (``Scheme.bias_scales``): a coded
input sum_i g_i x_i then yields sum_i g_i (conv(x_i) + b), the code's combination of
the biased pieces, so decoding stays linear and the master never adds a bias. Outputs
go straight into the layer's output (``Assembly``). No column of a distributed conv
runs on the master.

This module holds a conv's spec and a worker's subtask; the master's inputs are in
:mod:`cocoi_mpi.geometry.rounds`, its outputs in :mod:`cocoi_mpi.geometry.assembly`,
the width-major layout both use in :mod:`cocoi_mpi.geometry.layout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import InternalError
from .layout import transposed_conv, transposed_weight, width_major
from .split import AxisGeom, tightest_pieces

if TYPE_CHECKING:
    from ..codes import Scheme
    from .rounds import ConvRound


class NotSplittable(InternalError, ValueError):
    """This conv cannot be distributed (reason in the message); run it locally."""


@dataclass(frozen=True)
class ConvSpec:
    """What a worker needs to execute subtasks of one conv: weights and geometry."""

    layer_id: int
    name: str
    weight: torch.Tensor  # (C_out, C_in/groups, K_h, K_w)
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_h: tuple[int, int]  # (top, bottom), applied by the worker
    pad_w: tuple[int, int]  # (left, right), applied by the master before cutting
    bias: torch.Tensor | None = None  # (C_out,), added by the worker (worker_conv)

    @property
    def width_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[3], self.stride[1], self.dilation[1], *self.pad_w)

    @property
    def height_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[2], self.stride[0], self.dilation[0], *self.pad_h)

    @cached_property
    def weight_t(self) -> torch.Tensor:
        """The weight for width-major maps (``layout.transposed_weight``), made once."""
        return transposed_weight(self.weight)

    # The coding-unit protocol (subtasks.Unit), answered by BlockSpec too.

    def compute(
        self,
        x: torch.Tensor,
        masks: Sequence[tuple[int, int]] = (),
        bias_scales: Sequence[float] = (),
    ) -> torch.Tensor:
        """A worker's subtask (``worker_conv``); a conv's pieces carry no masks."""
        return worker_conv(self, x, bias_scales)

    def masks_for(self, prep: ConvRound, index: int) -> tuple[tuple[int, int], ...]:
        return ()

    def reply_shape(self, prep: ConvRound, code: Scheme) -> tuple[int, ...]:
        """(m, piece width, H_out, C_out): one subtask's output, stored width-major."""
        height = self.height_geom.out_size(prep.height)
        return (code.pieces_per_task, prep.split.piece_width, height, self.weight.shape[0])

    def rest_output(self, prep: ConvRound) -> None:
        return None  # a conv round covers every column with its pieces; bias comes later


def conv_spec(layer_id: int, name: str, conv: nn.Conv2d) -> ConvSpec:
    """Read a Conv2d's geometry; refuse what the coded split cannot reproduce exactly."""
    if not isinstance(conv, nn.Conv2d):
        raise NotSplittable(f"{name} is not a Conv2d")
    if conv.padding_mode != "zeros":
        raise NotSplittable(f"{name} uses padding_mode={conv.padding_mode!r}")
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    return ConvSpec(
        layer_id=layer_id,
        name=name,
        weight=conv.weight.detach(),
        stride=tuple(conv.stride),
        dilation=tuple(conv.dilation),
        groups=conv.groups,
        pad_h=(top, bottom),
        pad_w=(left, right),
        bias=None if conv.bias is None else conv.bias.detach(),
    )


def worker_conv(spec: ConvSpec, x: torch.Tensor, bias_scales: Sequence[float] = ()) -> torch.Tensor:
    """A worker's subtask: (m, w, H, C) width-major coded input -> (m, w_out, H_out, C_out).

    Piece p gets ``bias_scales[p]`` times the layer's bias (none when the scales are
    empty or the layer has no bias): fused into the conv when every piece's scale is
    the same, one in-place pass otherwise."""
    scales = tuple(bias_scales) if spec.bias is not None else ()
    fused = None
    if scales and len(set(scales)) == 1:
        fused = spec.bias if scales[0] == 1.0 else spec.bias * scales[0]
    out = transposed_conv(
        x, spec.weight_t, fused, spec.stride, spec.dilation, spec.groups, spec.pad_h
    )
    if scales and fused is None:
        per_piece = torch.tensor(scales, dtype=out.dtype).view(-1, 1, 1, 1)
        out = out.contiguous()
        out.add_(per_piece * spec.bias.view(1, 1, 1, -1))
    return out.contiguous()


def master_conv(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    """The whole layer on the master, (1, C, H, W) in any layout -> width-major output
    (so the next coded layer's pieces are contiguous windows of it)."""
    stored = width_major(x).permute(0, 3, 2, 1)
    out = transposed_conv(
        stored,
        spec.weight_t,
        spec.bias,
        spec.stride,
        spec.dilation,
        spec.groups,
        spec.pad_h,
        spec.pad_w,
    )
    return out.contiguous().permute(0, 3, 2, 1)


def layer_k(spec: ConvSpec, width_in: int, k: int, pieces_per_task: int) -> int:
    """k for this layer: at most ``k``, every piece at least one output column, and the
    fewest subtasks whose pieces of that width still cover the output (tightest_pieces)."""
    width_out = spec.width_geom.out_size(width_in)
    k_fit = min(k, width_out // pieces_per_task)
    if k_fit < 1:
        raise NotSplittable(
            f"{spec.name}: output width {width_out} < {pieces_per_task} pieces per subtask"
        )
    return -(-tightest_pieces(width_out, k_fit * pieces_per_task) // pieces_per_task)
