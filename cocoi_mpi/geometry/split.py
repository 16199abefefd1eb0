"""Pure geometry of width splitting (CoCoI eq. 1-2, footnote 2).

A conv output is cut along the width into equal pieces; each piece maps back to the
input columns it depends on. Everything here is integer arithmetic on ranges: no
tensors, no MPI, so it can be tested exhaustively against torch's conv2d.

Conventions: ranges are half-open ``(a, b)``; "padded" coordinates index the input
after the layer's zero padding has been applied on both width edges (the paper's I).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Range = tuple[int, int]


@dataclass(frozen=True)
class AxisGeom:
    """One spatial axis of a conv or pooling layer: kernel, stride, dilation, padding."""

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_before: int = 0
    pad_after: int = 0

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.stride < 1 or self.dilation < 1:
            raise ValueError(f"kernel, stride and dilation must be >= 1, got {self}")
        if self.pad_before < 0 or self.pad_after < 0:
            raise ValueError(f"padding must be >= 0, got {self}")

    @property
    def span(self) -> int:
        """Input columns one output column reads: the dilated kernel extent."""
        return self.dilation * (self.kernel - 1) + 1

    def out_size(self, in_size: int) -> int:
        """Output length for an unpadded input length (eq. 1 with dilation)."""
        padded = in_size + self.pad_before + self.pad_after
        if padded < self.span:
            raise ValueError(f"input of size {in_size} is smaller than the kernel span")
        return (padded - self.span) // self.stride + 1

    def padded_input_range(self, out: Range) -> Range:
        """Input range in padded coordinates for output columns ``out`` (eq. 2)."""
        a_o, b_o = out
        if not 0 <= a_o < b_o:
            raise ValueError(f"bad output range {out}")
        return a_o * self.stride, (b_o - 1) * self.stride + self.span

    def input_range(self, out: Range, in_size: int) -> tuple[Range, int, int]:
        """Unpadded input range for ``out`` plus the zero columns to add left and right.

        Running the layer with no width padding on ``x[a:b]`` padded by the returned
        amounts gives exactly output columns ``out``: edge padding is reproduced only
        where the range touches an edge.
        """
        a_p, b_p = self.padded_input_range(out)
        a, b = a_p - self.pad_before, b_p - self.pad_before
        left = max(0, min(b, 0) - a)  # columns of [a, b) left of the data
        right = max(0, b - max(a, in_size))  # columns of [a, b) right of the data
        lo, hi = min(max(a, 0), in_size), min(max(b, 0), in_size)
        return (lo, hi), left, right


def equal_pieces(width: int, pieces: int) -> tuple[list[Range], Range | None]:
    """Cut ``width`` output columns into ``pieces`` ranges of floor(width/pieces) each.

    The remainder (footnote 2) is returned separately: the master computes it itself.
    """
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    piece = width // pieces
    if piece < 1:
        raise ValueError(f"cannot cut width {width} into {pieces} pieces")
    ranges = [(i * piece, (i + 1) * piece) for i in range(pieces)]
    rest = (pieces * piece, width) if pieces * piece < width else None
    return ranges, rest


def covering_pieces(width: int, pieces: int) -> list[Range]:
    """Cut ``width`` output columns into ``pieces`` ranges of ceil(width/pieces) each.

    The ranges cover the whole width, the last one reaching past it: the columns
    past ``width`` are computed from zero padding and cropped, so no column is left
    for the master (footnote 2's remainder is gone)."""
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    if pieces > width:
        raise ValueError(f"cannot cut width {width} into {pieces} pieces")
    piece = -(-width // pieces)
    return [(i * piece, (i + 1) * piece) for i in range(pieces)]


def tightest_pieces(width: int, pieces: int) -> int:
    """The fewest pieces of the width that ``pieces`` would give that still cover ``width``.

    28 columns in 8 pieces are 4 columns each, and 7 such pieces already cover them:
    the same per-worker load with fewer pieces leaves more subtasks to spare."""
    piece = -(-width // pieces)
    return -(-width // piece)


@dataclass(frozen=True)
class SubtaskGeom:
    """Where one output piece comes from: its input slice and the padding to add."""

    out: Range
    inp: Range  # unpadded input columns of the (block) input
    pads: tuple[tuple[int, int], ...]  # (left, right) zero columns before each layer

    @property
    def in_width(self) -> int:
        return self.inp[1] - self.inp[0]


def block_subtask(layers: Sequence[AxisGeom], in_size: int, out: Range) -> SubtaskGeom:
    """Map an output range of a chain of layers back to the block input.

    ``layers`` are the width geometries of the convs (and pools) in order; element-wise
    layers (BN, activations) do not change the mapping and are left out. The returned
    per-layer pads make running the chain on the slice reproduce ``out`` exactly,
    including zero padding inside the block at the true edges only.
    """
    sizes = [in_size]
    for geom in layers:
        sizes.append(geom.out_size(sizes[-1]))
    if not 0 <= out[0] < out[1] <= sizes[-1]:
        raise ValueError(f"output range {out} outside width {sizes[-1]}")
    pads: list[tuple[int, int]] = []
    rng = out
    for depth, (geom, size) in enumerate(zip(reversed(layers), reversed(sizes[:-1]), strict=True)):
        if rng[0] == rng[1]:
            raise ValueError(
                f"output range {out} reads only zero padding at layer {len(layers) - depth}: "
                "blocks with padding wider than a kernel's span are not supported"
            )
        rng, left, right = geom.input_range(rng, size)
        pads.append((left, right))
    return SubtaskGeom(out=out, inp=rng, pads=tuple(reversed(pads)))


@dataclass(frozen=True)
class LayerSplit:
    """The k*m equal pieces of one conv, in padded input coordinates.

    Every piece has the same width W_I^P = span + (W_O^P - 1) * stride (the linear code
    needs equal shapes); the last piece may reach past the padded input, where the
    master adds zeros, and past the output width, where it crops. ``rest_out`` and
    ``rest_in`` are always None: kept so traces keep their remainder_width column.
    """

    width_out: int
    outs: tuple[Range, ...]
    ins: tuple[Range, ...]
    rest_out: Range | None
    rest_in: Range | None

    @property
    def piece_width(self) -> int:
        return self.outs[0][1] - self.outs[0][0]

    @property
    def remainder_width(self) -> int:
        return 0 if self.rest_out is None else self.rest_out[1] - self.rest_out[0]


def split_layer(geom: AxisGeom, in_size: int, pieces: int) -> LayerSplit:
    """Cut one conv's output width into ``pieces`` that cover it and map each piece to
    its input (padded coordinates; past the padded input the master adds zeros)."""
    width = geom.out_size(in_size)
    outs = covering_pieces(width, pieces)
    ins = tuple(geom.padded_input_range(o) for o in outs)
    return LayerSplit(width, tuple(outs), ins, None, None)


def overlap_columns(geom: AxisGeom) -> int:
    """Columns shared by two adjacent pieces' inputs (K - S in the paper's I_ov)."""
    return max(0, geom.span - geom.stride)
