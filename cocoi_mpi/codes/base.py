"""The interface every coding scheme shares, so the master loop never branches on names.

A scheme turns k source pieces into n subtask inputs and, from whichever subtask
outputs have arrived, says whether it can rebuild the k source outputs and does so.
Pieces are tensors stacked on dim 0; the scheme never looks inside them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping

import torch

from ..errors import InternalError


class DecodeError(InternalError, RuntimeError):
    """Raised when decode is asked for before enough outputs have arrived."""


class Scheme(ABC):
    """k-of-n style coding of width pieces.

    ``pieces_per_task`` (m) is how many equal width pieces one subtask carries: 1 for
    the paper's real codes, 2 for codes that embed complex numbers as 2x2 rotations.
    The master cuts the output into ``source_pieces = k * m`` equal pieces.
    """

    name: str
    n: int
    k: int
    pieces_per_task: int = 1

    @property
    def source_pieces(self) -> int:
        return self.k * self.pieces_per_task

    @abstractmethod
    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        """(k*m, ...) source pieces -> (n, m, ...) subtask inputs."""

    def encode_into(self, pieces: torch.Tensor, coded: torch.Tensor) -> None:
        """Write the n*m coded pieces into ``coded`` ((n*m, ...), e.g. send buffers)."""
        coded.copy_(self.encode(pieces).reshape(coded.shape))

    @abstractmethod
    def decodable(self, arrived: Collection[int]) -> bool:
        """Can the source outputs be rebuilt from the subtasks in ``arrived``?"""

    @abstractmethod
    def decode(self, outputs: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """{subtask: (m, ...) output} -> ((k*m, ...) source outputs, subtasks used).

        ``outputs`` is in arrival order; a scheme uses the earliest ones it needs.
        """

    def sources_of(self, subtask: int) -> range | None:
        """The source pieces (k*m-indexed) that subtask carries unchanged, or None.

        The master puts such a subtask's output straight into the layer's output."""
        return None

    def decode_missing(
        self, outputs: Mapping[int, torch.Tensor], missing: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Only the source outputs in ``missing``: ((len(missing), ...), subtasks used).

        The default decodes everything and picks; systematic codes do better."""
        decoded, used = self.decode(outputs)
        return decoded[list(missing)], used

    def needs_resend(self, failed: int, arrived: Collection[int], pending: Collection[int]) -> bool:
        """After subtask ``failed`` reported failure: must its input go to another worker?

        ``arrived`` replied, ``pending`` may still reply. By default a scheme re-sends
        only when what can still arrive would not be enough to decode.
        """
        return not self.decodable({*arrived, *pending})

    def next_subtask(self, issued: int) -> int | None:
        """Streaming schemes (LT) hand an idle worker subtask ``issued`` (a new one);
        fixed-rate schemes have exactly ``n`` subtasks and return None."""
        return None

    def subtask_input(self, pieces: torch.Tensor, subtask: int) -> torch.Tensor:
        """(m, ...) input of one subtask; streaming schemes make ones past ``n`` on demand.

        A fixed-rate scheme has exactly ``n`` subtasks, all made by ``encode``.
        """
        if not 0 <= subtask < self.n:
            raise ValueError(f"{self.describe()} has subtasks 0..{self.n - 1}, not {subtask}")
        return self.encode(pieces)[subtask]

    def bias_scales(self, subtask: int) -> tuple[float, ...]:
        """Per piece of ``subtask``, the sum of its encoding row: what a worker scales
        the layer's bias by. A coded input sum_i g_i x_i then gives sum_i g_i (conv(x_i)
        + b), the code's combination of the *biased* source outputs, so decoding needs
        no bias correction and the master adds none (a source piece's scale is 1).
        Found by encoding pieces of ones; cached per subtask."""
        cache = self.__dict__.setdefault("_bias_scales", {})
        if subtask not in cache:
            ones = torch.ones(self.source_pieces, 1, 1, 1)
            rows = self.subtask_input(ones, subtask).reshape(-1)
            cache[subtask] = tuple(float(v) for v in rows)
        return cache[subtask]

    def describe(self) -> str:
        return f"{self.name}(n={self.n}, k={self.k}, m={self.pieces_per_task})"
