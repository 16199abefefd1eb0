"""The master's side of a round's outputs: a conv's output filled piece by piece as
replies arrive (``Assembly``), and the merge of a block's decoded pieces.

Pure torch. The workers add the bias (scaled by the code, ``Scheme.bias_scales``), so
the outputs here already carry it and the master makes no bias pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from .layout import as_numpy, column_rows, copy_window, empty_width_major
from .split import LayerSplit

if TYPE_CHECKING:
    from .conv import ConvSpec


class Assembly:
    """The layer's output, filled piece by piece as outputs arrive.

    A subtask that carries source pieces unchanged is placed when it arrives (while
    the master still waits for others); after that only the missing pieces are
    decoded. Columns past the output width (the last piece's padding) are cropped.
    The output is width-major (``layout``): each piece's columns are one contiguous
    block of it, so placing a piece is one copy at memory speed."""

    def __init__(
        self,
        split: LayerSplit,
        out_shape: tuple[int, ...],
        dtype: torch.dtype,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.split, self.clock = split, clock
        _, channels, height, width = out_shape
        self.out = empty_width_major(channels, height, width, dtype)
        self._rows = column_rows(self.out)  # (W_out, H_out*C_out), the output's memory
        self._rows_np = as_numpy(self._rows)  # the same, for numpy's cheaper calls
        self._windows = [(a, min(b, split.width_out)) for a, b in split.outs]
        self.placed: set[int] = set()
        self.place_s = 0.0

    def place(self, piece: int, value: torch.Tensor) -> None:
        """Write one output piece (w, H_out, C_out) into its columns of the output."""
        self._place(piece, value.unsqueeze(0), 0)

    def place_subtask(self, code, index: int, output: torch.Tensor) -> None:
        """Put the source pieces a subtask carries into place (first copy wins)."""
        sources = code.sources_of(index)
        if sources is None:
            return
        t0 = self.clock()
        for slot, piece in enumerate(sources):
            if piece not in self.placed:
                self._place(piece, output, slot)
        self.place_s += self.clock() - t0

    def _place(self, piece: int, block: torch.Tensor, slot: int) -> None:
        """Copy ``block[slot]`` (w, H_out, C_out) into piece ``piece``'s columns,
        cropped at the output edge."""
        a, b = self._windows[piece]
        self.placed.add(piece)
        if b <= a:  # a piece wholly past the edge (m = 2 codes): nothing to keep
            return
        src = None if self._rows_np is None else as_numpy(block)
        dst = self._rows if src is None else self._rows_np
        value = block[slot] if src is None else src[slot]
        copy_window(dst, value.reshape(value.shape[0], -1), a, b, 0)

    def finish(self, code, outputs: Mapping[int, torch.Tensor]) -> tuple[list[int], float]:
        """Place what is still unplaced, decode only the missing pieces.

        Returns (subtasks used, decode seconds)."""
        for index, output in outputs.items():
            self.place_subtask(code, index, output)
        missing = [j for j in range(code.source_pieces) if j not in self.placed]
        t0 = self.clock()
        rebuilt, used = code.decode_missing(outputs, missing)
        t1 = self.clock()
        for slot, piece in enumerate(missing):
            self._place(piece, rebuilt, slot)
        self.place_s += self.clock() - t1
        return used, t1 - t0


def conv_output_shape(spec: ConvSpec, x: torch.Tensor, split: LayerSplit) -> tuple[int, ...]:
    height = spec.height_geom.out_size(x.shape[2])
    return (1, spec.weight.shape[0], height, split.width_out)


def merge(
    decoded: torch.Tensor, rest: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """(k*m, C_out, H_out, w) decoded pieces + remainder -> (1, C_out, H_out, W_out) + bias."""
    parts = list(decoded.unbind(0))
    if rest is not None:
        parts.append(rest[0])
    out = torch.cat(parts, dim=-1).unsqueeze(0)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
