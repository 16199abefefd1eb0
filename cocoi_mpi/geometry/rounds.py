"""The master's side of one round: the subtask inputs of a conv (``ConvRound``), made
on demand in the send buffer, and the coded inputs of a block (``Prepared``).

Pure torch. How a conv's pieces are cut and why: :mod:`cocoi_mpi.geometry.conv`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from .layout import as_numpy, column_rows, copy_window, width_major, zero_rows
from .split import LayerSplit, split_layer

if TYPE_CHECKING:
    from .conv import ConvSpec


def check_input(spec: ConvSpec, x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{spec.name}: coded layers take one image, got {tuple(x.shape)}")


def cut_pieces(spec: ConvSpec, x: torch.Tensor, pieces: int) -> tuple[LayerSplit, torch.Tensor]:
    """The split and its k*m input pieces stacked on dim 0, each stored width-major
    (w, H, C) as the workers get them (tests and analysis)."""
    check_input(spec, x)
    split = split_layer(spec.width_geom, x.shape[3], pieces)
    width = split.ins[0][1] - split.ins[0][0]
    out = x.new_empty((pieces, width, x.shape[2], x.shape[1]))
    rows = column_rows(width_major(x))
    for i, rng in enumerate(split.ins):
        fill_piece(spec, rows, rng, out[i])
    return split, out


def piece_columns(spec: ConvSpec, width_in: int, padded_range: tuple[int, int]) -> tuple[int, ...]:
    """(lo, hi, start, stop): input columns lo:hi fill the piece's columns start:stop;
    the piece's other columns are the layer's width padding (or past the input): 0."""
    a, b = padded_range
    left = spec.pad_w[0]
    lo, hi = max(a - left, 0), min(b - left, width_in)
    start = lo - (a - left)
    return lo, hi, start, start + max(hi - lo, 0)


def fill_piece(
    spec: ConvSpec, rows: torch.Tensor, padded_range: tuple[int, int], dst: torch.Tensor
) -> None:
    """Write the input columns ``padded_range`` (padded coordinates) of the input's
    column rows (``layout.column_rows``, (W, H*C)) into ``dst`` (w, H, C): one
    contiguous copy, and zeros for the padding and past the input's edge."""
    fill_rows(spec, rows, padded_range, dst.view(dst.shape[0], -1))


def fill_rows(spec: ConvSpec, rows, padded_range: tuple[int, int], dst) -> None:
    """``fill_piece`` on (W, H*C) rows and a (w, H*C) slot, numpy arrays or tensors."""
    lo, hi, start, stop = piece_columns(spec, rows.shape[0], padded_range)
    zero_rows(dst, 0, start)
    copy_window(dst, rows, start, stop, lo)
    zero_rows(dst, stop, dst.shape[0])


Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class ConvRound:
    """The master's side of one conv round: subtask inputs made on demand.

    ``subtask_input(i)`` makes subtask i's input in its own slot of one (n*m, w, H, C)
    buffer (the send buffer: nothing is copied again before MPI sends it), so the
    master can post each send as soon as its input exists. A subtask that carries
    source pieces unchanged costs one contiguous copy of their columns of the
    width-major input (``split_s``; an input in another layout is made width-major
    first, counted there too); coded subtasks are made together, a systematic code's
    parities by one matrix product over the source slots (``encode_s``).
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
        self.piece_shape = (width, x.shape[2], x.shape[1])
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
        """(m, w, H, C) input of subtask ``index``, contiguous; streaming schemes may ask
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
    def _rows(self) -> tuple:
        """The input's column rows (W, H*C) and the buffer's slots (n*m, w, H*C), as
        numpy arrays where numpy can see both (else tensors), made once per round (the
        input made width-major first, inside the first piece's split time)."""
        rows = column_rows(width_major(self.x))
        slots = self.buffer.view(self.buffer.shape[0], self.buffer.shape[1], -1)
        rows_np, slots_np = as_numpy(rows), as_numpy(slots)
        if rows_np is None or slots_np is None:
            return rows, slots
        return rows_np, slots_np

    def _fill(self, slot: int, piece: int) -> None:
        """fill_piece of source ``piece`` into buffer row ``slot``."""
        rows, slots = self._rows
        fill_rows(self.spec, rows, self.split.ins[piece], slots[slot])

    @property
    def systematic(self) -> bool:
        return bool(getattr(self.code, "systematic", False)) and hasattr(
            self.code, "encode_parities"
        )

    @property
    def pieces(self) -> torch.Tensor:
        """The k*m source pieces (K, w, H, C): the buffer's first rows when systematic."""
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
