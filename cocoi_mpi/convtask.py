"""One type-1 conv as a coded task: what the master cuts, what a worker computes.

Pure torch. The MPI master and the in-process engine both use these functions, so
the arithmetic that decides exactness is the same code in tests and in real runs.

The master pads the input's width once (zeros, exactly as the layer would) and cuts
equal pieces from it; a worker pads the height itself and convolves without bias;
the master adds the bias after decoding, because the code is linear and bias is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .codes import Scheme
from .split import AxisGeom, LayerSplit, split_layer


class NotSplittable(ValueError):
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

    @property
    def width_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[3], self.stride[1], self.dilation[1], *self.pad_w)

    @property
    def height_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[2], self.stride[0], self.dilation[0], *self.pad_h)


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
    )


def worker_conv(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    """A worker's subtask: (m, C, H, w) coded input -> (m, C_out, H_out, w_out), no bias."""
    x = F.pad(x, (0, 0, *spec.pad_h)) if any(spec.pad_h) else x
    return F.conv2d(x, spec.weight, None, spec.stride, 0, spec.dilation, spec.groups)


def layer_k(spec: ConvSpec, width_in: int, k: int, pieces_per_task: int) -> int:
    """Largest k' <= k whose k'*m pieces are at least one output column each."""
    width_out = spec.width_geom.out_size(width_in)
    k_fit = min(k, width_out // pieces_per_task)
    if k_fit < 1:
        raise NotSplittable(
            f"{spec.name}: output width {width_out} < {pieces_per_task} pieces per subtask"
        )
    return k_fit


@dataclass
class Prepared:
    """The master's side of one round before sending: coded inputs and the geometry."""

    split: LayerSplit  # or a blocks.BlockSplit for a conv block
    padded: torch.Tensor  # conv: input padded in width, (1, C, H, W + left + right);
    # block: the block input as is (its split knows the padding)
    coded: torch.Tensor  # (n, m, C, H, w_in)
    pieces: torch.Tensor | None = None  # (k*m, C, H, w_in) sources, for streaming schemes
    reply: tuple[int, ...] | None = None  # block: shape of one subtask's output


def cut_pieces(
    spec: ConvSpec, x: torch.Tensor, pieces: int
) -> tuple[LayerSplit, torch.Tensor, torch.Tensor]:
    """Pad the width and cut the k*m equal input pieces (eq. 2), stacked on dim 0."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{spec.name}: coded layers take one image, got {tuple(x.shape)}")
    split = split_layer(spec.width_geom, x.shape[3], pieces)
    padded = F.pad(x, (*spec.pad_w, 0, 0)) if any(spec.pad_w) else x
    pieces = torch.stack([padded[0, :, :, a:b] for a, b in split.ins])
    return split, padded, pieces


def prepare(spec: ConvSpec, x: torch.Tensor, code: Scheme) -> Prepared:
    """Split and encode: the inputs of the n subtasks."""
    split, padded, pieces = cut_pieces(spec, x, code.source_pieces)
    return Prepared(split, padded, code.encode(pieces).contiguous(), pieces)


def remainder(spec: ConvSpec, prep: Prepared) -> torch.Tensor | None:
    """The master's own share (footnote 2): the columns past k*m equal pieces, no bias."""
    if prep.split.rest_in is None:
        return None
    a, b = prep.split.rest_in
    return worker_conv(spec, prep.padded[:, :, :, a:b])


def merge(
    decoded: torch.Tensor, rest: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """(k*m, C_out, H_out, w) decoded pieces + remainder -> (1, C_out, H_out, W_out) + bias."""
    parts = list(decoded.unbind(0))
    if rest is not None:
        parts.append(rest[0])
    out = torch.cat(parts, dim=-1).unsqueeze(0)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
