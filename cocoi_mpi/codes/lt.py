"""LT (Luby transform) codes as the paper's LtCoI baseline (appendix G).

Each encoded symbol sums d source pieces, d drawn from the Robust Soliton
distribution (:mod:`cocoi_mpi.latency.soliton`, which the simulator models too); its encoding
vector has 1s at those pieces. Symbols stream: every worker gets one, and gets the
next as soon as it answers, until the received encoding vectors reach rank k. The
master then solves the received system by least squares. Symbol j's vector depends
only on (seed, k, j), so a seed reproduces a run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch

from ..latency.soliton import robust_soliton
from .base import DecodeError, Scheme

RANK_TOL = 1e-9
MAX_COND = 300.0  # decode once float32 outputs lose at most ~2.5 of their 7 digits


class LTCode(Scheme):
    """Rateless: ``n`` symbols to start, one more per reply until rank k is reached."""

    pieces_per_task = 1

    def __init__(self, n: int, k: int, seed: int = 0, name: str = "lt"):
        if k < 1 or n < 1:
            raise ValueError(f"LT needs k >= 1 and n >= 1, got k={k}, n={n}")
        self.name, self.n, self.k, self.seed = name, n, k, seed
        self._vectors: dict[int, np.ndarray] = {}
        self._basis: list[np.ndarray] = []  # orthonormal basis of processed vectors
        self._seen: list[int] = []  # symbols already folded into the basis, in order

    def vector(self, j: int) -> np.ndarray:
        """Encoding vector of symbol j: 1s at d distinct source pieces."""
        if j not in self._vectors:
            rng = np.random.default_rng([self.seed, self.k, j])
            d = int(rng.choice(self.k, p=robust_soliton(self.k))) + 1
            v = np.zeros(self.k)
            v[rng.choice(self.k, size=d, replace=False)] = 1.0
            self._vectors[j] = v
        return self._vectors[j]

    def matrix(self, symbols: Collection[int]) -> np.ndarray:
        return np.stack([self.vector(j) for j in symbols])

    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        if pieces.shape[0] != self.k:
            raise ValueError(f"expected {self.k} pieces, got {pieces.shape[0]}")
        return torch.stack([self.subtask_input(pieces, j) for j in range(self.n)])

    def subtask_input(self, pieces: torch.Tensor, subtask: int) -> torch.Tensor:
        idx = np.flatnonzero(self.vector(subtask))
        return pieces[idx.tolist()].sum(dim=0, keepdim=True)

    def next_subtask(self, issued: int) -> int | None:
        return issued  # rateless: there is always another symbol

    def rank(self, symbols: Collection[int]) -> int:
        """Rank of the symbols' vectors, updated incrementally as a round grows."""
        symbols = list(symbols)
        if self._seen != symbols[: len(self._seen)]:
            self._basis, self._seen = [], []
        for j in symbols[len(self._seen) :]:
            v = self.vector(j).copy()
            for b in self._basis:
                v -= (v @ b) * b
            norm = np.linalg.norm(v)
            if norm > RANK_TOL and len(self._basis) < self.k:
                self._basis.append(v / norm)
            self._seen.append(j)
        return len(self._basis)

    def decodable(self, arrived: Collection[int]) -> bool:
        """Rank k (the paper's rule) and a condition number float32 data survives.

        At exactly rank k a Robust-Soliton 0/1 system is often ill-conditioned (about
        6e3 for k = 224), which costs float32 outputs three digits; ~10% more symbols
        bring it under MAX_COND. The condition is only computed once rank k is reached.
        """
        if len(arrived) < self.k or self.rank(arrived) < self.k:
            return False
        return bool(np.linalg.cond(self.matrix(list(arrived))) <= MAX_COND)

    def decode(self, outputs: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        symbols = list(outputs)
        if not self.decodable(symbols):
            raise DecodeError(f"{self.describe()}: received vectors have rank < {self.k}")
        stacked = torch.cat([outputs[j] for j in symbols])
        flat = stacked.reshape(len(symbols), -1).to(torch.float64)
        # least squares through the pseudo-inverse of the small (symbols x k) 0/1 matrix:
        # one matmul over the data, in float64 because these matrices are ill-conditioned
        pinv = torch.from_numpy(np.linalg.pinv(self.matrix(symbols)))
        out = (pinv @ flat).to(stacked.dtype)
        return out.reshape(self.k, *stacked.shape[1:]), symbols

    def needs_resend(self, failed: int, arrived: Collection[int], pending: Collection[int]) -> bool:
        return False  # live workers keep streaming symbols instead
