"""Copying column windows of feature maps as byte rows: how the master fills a piece's
input and places an output piece, bit for bit, at a cost close to the bytes moved.

Pure torch and numpy; the why and the measurements are in docs/master.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .conv import ConvSpec


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
