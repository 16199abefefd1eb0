"""One type-1 conv as a coded task: what the master cuts, what a worker computes.

Pure torch. The MPI master and the in-process engine both use these functions, so
the arithmetic that decides exactness is the same code in tests and in real runs.

The master cuts equal pieces that together cover the whole output width (the last
one reaches past it and is cropped), copying each piece's input columns straight into
its subtask's send buffer, with zeros where the layer's padding (or the coverage past
the edge) is; a worker pads the height itself and convolves without bias. Outputs go
straight into the layer's output with the bias added on the way (``Assembly``): the
code is linear and bias is not. No column of a distributed conv runs on the master.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InternalError
from .split import AxisGeom, LayerSplit, split_layer, tightest_pieces

if TYPE_CHECKING:
    from ..codes import Scheme


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

    @property
    def width_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[3], self.stride[1], self.dilation[1], *self.pad_w)

    @property
    def height_geom(self) -> AxisGeom:
        return AxisGeom(self.weight.shape[2], self.stride[0], self.dilation[0], *self.pad_h)

    # The coding-unit protocol (subtasks.Unit), answered by BlockSpec too.

    def compute(self, x: torch.Tensor, masks: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
        """A worker's subtask (``worker_conv``); a conv's pieces carry no masks."""
        return worker_conv(self, x)

    def masks_for(self, prep: ConvRound, index: int) -> tuple[tuple[int, int], ...]:
        return ()

    def reply_shape(self, prep: ConvRound, code: Scheme) -> tuple[int, ...]:
        """(m, C_out, H_out, piece width) of one subtask's output."""
        height = self.height_geom.out_size(prep.height)
        return (code.pieces_per_task, self.weight.shape[0], height, prep.split.piece_width)

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
    )


def worker_conv(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    """A worker's subtask: (m, C, H, w) coded input -> (m, C_out, H_out, w_out), no bias."""
    x = F.pad(x, (0, 0, *spec.pad_h)) if any(spec.pad_h) else x
    return F.conv2d(x, spec.weight, None, spec.stride, 0, spec.dilation, spec.groups)


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


# Integer (or complex) types a row of 4, 8 or 16 bytes is copied as: bit for bit, and
# numpy has aligned strided loops for them; other widths use a void type (memmove).
_ROW_TYPES = {4: np.dtype(np.uint32), 8: np.dtype(np.uint64), 16: np.dtype(np.complex128)}


# Windows whose rows are a cache line or wider are copied by torch, row by row: its
# per-row cost is then small beside the row, and one numpy item per row measured no
# faster (7% faster to 19% slower, docs/master.md). Narrower ones use ``_columns``.
WIDE_ROW_BYTES = 64


def _numpy(t: torch.Tensor) -> np.ndarray | None:
    """t's memory as a C-contiguous, non-empty numpy array (no copy); None where numpy
    cannot see it (autograd, device, dtype) or it is strided or empty."""
    try:
        arr = t.numpy()
    except (RuntimeError, TypeError):
        return None
    return arr if arr.flags.c_contiguous and arr.size else None


def _as_byte_rows(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous (..., w) array as (rows, w * itemsize) bytes, same memory."""
    return arr.reshape(-1, arr.shape[-1]).view(np.uint8)


def _columns(byte_rows: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bytes lo:hi of every row of a 2-D uint8 array as a 1-D array, one item per row.

    Why: torch (and numpy) copy a (rows, w) window row by row with a fixed cost per
    row, which dwarfs the bytes when w is a few floats (the pieces of 7-28 wide
    layers: C*H rows of 4-16 bytes). One item per row makes the copy one strided
    1-D loop: 1.5-4x faster for w = 1-4 floats, and no slower below WIDE_ROW_BYTES."""
    width = hi - lo
    return byte_rows[:, lo:hi].view(_ROW_TYPES.get(width) or np.dtype((np.void, width)))[:, 0]


def _copy_columns(dst: np.ndarray, dst_lo: int, src: np.ndarray, src_lo: int, width: int) -> None:
    """Copy bytes src_lo:src_lo+width of every row of src into dst's, bit for bit."""
    if width > 0:
        np.copyto(_columns(dst, dst_lo, dst_lo + width), _columns(src, src_lo, src_lo + width))


def _zero_columns(dst: np.ndarray, lo: int, hi: int) -> None:
    """Zero bytes lo:hi of every row (all-zero bits are 0.0 in every float type)."""
    if hi > lo:
        columns = _columns(dst, lo, hi)
        np.copyto(columns, np.zeros((), columns.dtype))


def fill_piece(spec: ConvSpec, x: torch.Tensor, padded_range: tuple[int, int], dst) -> None:
    """Copy input columns ``padded_range`` (padded coordinates) of x (1, C, H, W) into
    dst (C, H, w): one pass over the piece's bytes, zeros where padding would be."""
    columns = _piece_columns(spec, x.shape[3], padded_range)
    rows = _piece_rows(x, dst.unsqueeze(0))
    if rows is None:
        _fill_piece_torch(x, columns, dst)
    else:
        _fill_piece_rows(rows[0], rows[1][0], columns, x.element_size())


def _piece_columns(
    spec: ConvSpec, width_in: int, padded_range: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(lo, hi, start, stop): input columns lo:hi fill the piece's columns start:stop;
    the piece's other columns are the layer's width padding (or past the input): 0."""
    a, b = padded_range
    left = spec.pad_w[0]
    lo, hi = max(a - left, 0), min(b - left, width_in)
    start = lo - (a - left)
    return lo, hi, start, start + max(hi - lo, 0)


def _piece_rows(x: torch.Tensor, slots: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """x (1, C, H, W) as (C*H, W*itemsize) byte rows and slots (P, C, H, w) as
    (P, C*H, w*itemsize); None where numpy cannot see them, they do not match, or the
    slots' rows are wide (WIDE_ROW_BYTES): torch copies those."""
    if slots.shape[-1] * slots.element_size() >= WIDE_ROW_BYTES:
        return None
    src, dst = _numpy(x), _numpy(slots)
    if src is None or dst is None or src.dtype != dst.dtype or src.ndim != 4 or dst.ndim != 4:
        return None
    if src.shape[0] != 1 or src.shape[1:3] != dst.shape[1:3]:
        return None
    return _as_byte_rows(src), _as_byte_rows(dst).reshape(len(dst), src.shape[1] * src.shape[2], -1)


def _fill_piece_rows(src: np.ndarray, dst: np.ndarray, columns: tuple, size: int) -> None:
    """fill_piece on byte rows: dst (C*H, w*size) from src (C*H, W*size)."""
    lo, hi, start, stop = columns
    _zero_columns(dst, 0, size * start)
    _copy_columns(dst, size * start, src, size * lo, size * (stop - start))
    _zero_columns(dst, size * stop, dst.shape[1])


def _fill_piece_torch(x: torch.Tensor, columns: tuple, dst: torch.Tensor) -> None:
    """fill_piece with torch ops: for wide rows and tensors numpy cannot see."""
    lo, hi, start, stop = columns
    if start > 0:
        dst[:, :, :start].zero_()
    if hi > lo:
        dst[:, :, start:stop].copy_(x[0, :, :, lo:hi])
    if stop < dst.shape[2]:
        dst[:, :, stop:].zero_()


def check_input(spec: ConvSpec, x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{spec.name}: coded layers take one image, got {tuple(x.shape)}")


def cut_pieces(spec: ConvSpec, x: torch.Tensor, pieces: int) -> tuple[LayerSplit, torch.Tensor]:
    """The split and its k*m input pieces stacked on dim 0 (tests and analysis)."""
    check_input(spec, x)
    split = split_layer(spec.width_geom, x.shape[3], pieces)
    width = split.ins[0][1] - split.ins[0][0]
    out = x.new_empty((pieces, x.shape[1], x.shape[2], width))
    for i, rng in enumerate(split.ins):
        fill_piece(spec, x, rng, out[i])
    return split, out


Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class ConvRound:
    """The master's side of one conv round: subtask inputs made on demand.

    ``subtask_input(i)`` makes subtask i's input in its own slot of one (n*m, C, H, w)
    buffer (the send buffer: nothing is copied again before MPI sends it), so the
    master can post each send as soon as its input exists. A subtask that carries
    source pieces unchanged costs one copy of their columns (``split_s``); coded
    subtasks are made together, a systematic code's parities by one matrix product
    over the source slots (``encode_s``).
    """

    def __init__(
        self,
        spec: ConvSpec,
        x: torch.Tensor,
        code,
        alloc: Alloc = new_buffer,
        clock: Callable[[], float] = time.perf_counter,
    ):
        check_input(spec, x)
        self.spec, self.x, self.code, self.clock = spec, x, code, clock
        self.split = split_layer(spec.width_geom, x.shape[3], code.source_pieces)
        self.m = code.pieces_per_task
        width = self.split.ins[0][1] - self.split.ins[0][0]
        self.piece_shape = (x.shape[1], x.shape[2], width)
        self.buffer = alloc((code.n * self.m, *self.piece_shape), x.dtype)
        self.made: set[int] = set()
        self.split_s = self.encode_s = 0.0
        self._sources: torch.Tensor | None = None
        self._encoded = False
        self.reply = None

    @property
    def height(self) -> int:
        return self.x.shape[2]

    def subtask_input(self, index: int) -> torch.Tensor:
        """(m, C, H, w) input of subtask ``index``, contiguous; streaming schemes may ask
        for indices past n (made from the sources, outside the buffer)."""
        m = self.m
        if index >= self.code.n:
            t0 = self.clock()
            out = self.code.subtask_input(self.pieces, index).contiguous()
            self.encode_s += self.clock() - t0
            return out
        if index not in self.made:
            self._make(index)
        return self.buffer[index * m : (index + 1) * m]

    def _make(self, index: int) -> None:
        sources = self.code.sources_of(index)
        if sources is None:
            self._encode()
        else:
            t0 = self.clock()
            for slot, piece in enumerate(sources):
                self._fill(index * self.m + slot, piece)
            self.split_s += self.clock() - t0
        self.made.add(index)

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The input and the buffer as byte rows (``_piece_rows``), once per round:
        the per-piece cost of viewing them is then not paid k times."""
        return _piece_rows(self.x, self.buffer)

    def _fill(self, slot: int, piece: int) -> None:
        """fill_piece of source ``piece`` into buffer row ``slot``."""
        columns = _piece_columns(self.spec, self.x.shape[3], self.split.ins[piece])
        if self._rows is None:
            _fill_piece_torch(self.x, columns, self.buffer[slot])
        else:
            src, dst = self._rows
            _fill_piece_rows(src, dst[slot], columns, self.buffer.itemsize)

    @property
    def systematic(self) -> bool:
        return bool(getattr(self.code, "systematic", False)) and hasattr(
            self.code, "encode_parities"
        )

    @property
    def pieces(self) -> torch.Tensor:
        """The k*m source pieces (K, C, H, w): the buffer's first rows when systematic."""
        if self.systematic:
            for i in range(self.code.k):
                if i not in self.made:
                    self._make(i)
            return self.buffer[: self.code.source_pieces]
        if self._sources is None:
            t0 = self.clock()
            self._sources = cut_pieces(self.spec, self.x, self.code.source_pieces)[1]
            self.split_s += self.clock() - t0
        return self._sources

    def _encode(self) -> None:
        """Make every coded subtask input at once (one matrix product)."""
        if self._encoded:
            return
        sources = self.pieces
        t0 = self.clock()
        km = self.code.source_pieces
        if self.systematic:
            flat = self.buffer.view(self.buffer.shape[0], -1)
            self.code.encode_parities(flat[:km], flat[km:])
        else:
            self.code.encode_into(sources, self.buffer)
        self.encode_s += self.clock() - t0
        self.made.update(i for i in range(self.code.n) if self.code.sources_of(i) is None)
        self._encoded = True


class Assembly:
    """The layer's output, filled piece by piece as outputs arrive, then the bias.

    A subtask that carries source pieces unchanged is placed when it arrives (while
    the master still waits for others); after that only the missing pieces are
    decoded. Columns past the output width (the last piece's padding) are cropped."""

    def __init__(
        self,
        split: LayerSplit,
        out_shape: tuple[int, ...],
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.split, self.clock = split, clock
        self.out = torch.empty(out_shape, dtype=dtype)
        # the output seen by numpy, for place; None: torch copies (wide pieces too)
        width = split.outs[0][1] - split.outs[0][0]
        wide = width * self.out.element_size() >= WIDE_ROW_BYTES
        self._out = None if wide else _numpy(self.out)
        self._rows = None if self._out is None else _as_byte_rows(self._out)
        self.bias = None if bias is None else bias.detach().view(-1, 1, 1)
        self.placed: set[int] = set()
        self.place_s = 0.0

    def place(self, piece: int, value: torch.Tensor) -> None:
        """Write one output piece (C_out, H_out, w) into its columns of the output."""
        block = value.unsqueeze(0)
        self._place(piece, block, 0, self._block_rows(block))

    def place_subtask(self, code, index: int, output: torch.Tensor) -> None:
        """Put the source pieces a subtask carries into place (first copy wins)."""
        sources = code.sources_of(index)
        if sources is None:
            return
        t0 = self.clock()
        rows = self._block_rows(output)
        for slot, piece in enumerate(sources):
            if piece not in self.placed:
                self._place(piece, output, slot, rows)
        self.place_s += self.clock() - t0

    def _block_rows(self, block: torch.Tensor) -> np.ndarray | None:
        """A (m, C_out, H_out, w) block of pieces as (m, C_out*H_out, w*itemsize) byte
        rows, seen once for its m pieces; None where numpy cannot see it (then place
        copies with torch)."""
        arr = None if self._out is None else _numpy(block)
        if arr is None or arr.ndim != 4 or arr.dtype != self._out.dtype:
            return None
        if arr.shape[1:3] != self._out.shape[1:3]:
            return None
        return _as_byte_rows(arr).reshape(len(arr), len(self._rows), -1)

    def _place(self, piece: int, block: torch.Tensor, slot: int, rows: np.ndarray | None) -> None:
        """Copy ``block[slot]`` into piece ``piece``'s columns, cropped at the output edge:
        as byte rows (``_columns``) when there are some, else with torch."""
        a, b = self.split.outs[piece]
        b = min(b, self.split.width_out)
        self.placed.add(piece)
        if b <= a:  # a piece wholly past the edge (m = 2 codes): nothing to keep
            return
        if rows is None:
            self.out[0, :, :, a:b].copy_(block[slot][..., : b - a])
        else:
            size = self._out.itemsize
            _copy_columns(self._rows, size * a, rows[slot], 0, size * (b - a))

    def finish(self, code, outputs: Mapping[int, torch.Tensor]) -> tuple[list[int], float]:
        """Place what is still unplaced, decode only the missing pieces.

        Returns (subtasks used, decode seconds)."""
        for index, output in outputs.items():
            self.place_subtask(code, index, output)
        missing = [j for j in range(code.source_pieces) if j not in self.placed]
        t0 = self.clock()
        rebuilt, used = code.decode_missing(outputs, missing)
        t1 = self.clock()
        rows = self._block_rows(rebuilt) if missing else None
        for slot, piece in enumerate(missing):
            self._place(piece, rebuilt, slot, rows)
        if self.bias is not None:  # one streaming pass: 4x faster than per narrow piece
            self.out.add_(self.bias)
        self.place_s += self.clock() - t1
        return used, t1 - t0


def conv_output_shape(spec: ConvSpec, x: torch.Tensor, split: LayerSplit) -> tuple[int, ...]:
    height = spec.height_geom.out_size(x.shape[2])
    return (1, spec.weight.shape[0], height, split.width_out)


@dataclass
class Prepared:
    """The master's side of one block round (learned scheme): coded inputs and geometry."""

    split: object  # a blocks.BlockSplit
    padded: torch.Tensor  # the block input as is (its split knows the padding)
    coded: torch.Tensor  # (n, m, C, H, w_in)
    pieces: torch.Tensor | None = None  # (k*m, C, H, w_in) sources, for streaming schemes
    reply: tuple[int, ...] | None = None  # shape of one subtask's output
    split_s: float = 0.0
    encode_s: float = 0.0

    def subtask_input(self, index: int) -> torch.Tensor:
        if index < self.coded.shape[0]:
            return self.coded[index]
        raise ValueError(f"block rounds have {self.coded.shape[0]} subtasks, not {index}")


def merge(
    decoded: torch.Tensor, rest: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """(k*m, C_out, H_out, w) decoded pieces + remainder -> (1, C_out, H_out, W_out) + bias."""
    parts = list(decoded.unbind(0))
    if rest is not None:
        parts.append(rest[0])
    out = torch.cat(parts, dim=-1).unsqueeze(0)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
