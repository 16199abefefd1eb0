"""Schemes where each subtask carries one plain source piece: uncoded and replication.

Uncoded (the paper's baseline [9]): n pieces, one per worker, all needed; a failed
piece is re-sent to a live worker. Replication [16]: k = floor(n/2) pieces, each on
two workers (an odd n gives piece 0 a third copy); the first copy of every piece wins.
No arithmetic: decoding picks outputs, so these are exact in any precision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from .base import DecodeError, Scheme


class PieceScheme(Scheme):
    """Subtask i computes source piece ``assign[i]``; decodable when every piece is in."""

    pieces_per_task = 1

    def __init__(self, name: str, assign: Sequence[int], k: int):
        if sorted(set(assign)) != list(range(k)):
            raise ValueError(f"{name}: assignment {list(assign)} does not cover {k} pieces")
        self.name, self.n, self.k, self.assign = name, len(assign), k, tuple(assign)

    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        if pieces.shape[0] != self.k:
            raise ValueError(f"expected {self.k} pieces, got {pieces.shape[0]}")
        return pieces[list(self.assign)].unsqueeze(1)

    def covered(self, subtasks: Collection[int]) -> set[int]:
        return {self.assign[i] for i in subtasks}

    def decodable(self, arrived: Collection[int]) -> bool:
        return len(self.covered(arrived)) == self.k

    def decode(self, outputs: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        first: dict[int, int] = {}
        for i in outputs:  # arrival order: the first copy of each piece wins
            first.setdefault(self.assign[i], i)
        if len(first) < self.k:
            missing = sorted(set(range(self.k)) - set(first))
            raise DecodeError(f"{self.describe()} is missing pieces {missing}")
        used = [first[p] for p in range(self.k)]
        return torch.cat([outputs[i] for i in used]), used

    def sources_of(self, subtask: int) -> range | None:
        return range(self.assign[subtask], self.assign[subtask] + 1)

    def decode_missing(
        self, outputs: Mapping[int, torch.Tensor], missing: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """The first copy of each missing piece; no arithmetic."""
        first: dict[int, int] = {}
        for i in outputs:
            first.setdefault(self.assign[i], i)
        if any(p not in first for p in missing):
            raise DecodeError(
                f"{self.describe()} is missing pieces {sorted(set(missing) - set(first))}"
            )
        if not missing:
            out = next(iter(outputs.values()))
            return out.new_empty((0, *out.shape[1:])), [
                first[p] for p in range(self.k) if p in first
            ]
        return torch.cat([outputs[first[p]] for p in missing]), [first[p] for p in range(self.k)]

    def needs_resend(self, failed: int, arrived: Collection[int], pending: Collection[int]) -> bool:
        return self.assign[failed] not in self.covered({*arrived, *pending})


def uncoded(n: int) -> PieceScheme:
    """n pieces on n workers (fewer workers when a layer is narrower than n columns)."""
    return PieceScheme("uncoded", list(range(n)), n)


def replication(n: int, k: int | None = None) -> PieceScheme:
    """k = floor(n/2) pieces (or fewer for narrow layers), each on two or more workers."""
    k = max(1, n // 2) if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"replication needs 1 <= k <= n, got k={k}, n={n}")
    copies = [i % k for i in range(min(n, 2 * k))]
    if k == n // 2:  # an odd n: the last worker holds a third copy of piece 0
        copies += [0] * (n - len(copies))
    return PieceScheme("replication", copies, k)
