"""Real linear MDS codes for coded convolution (CoCoI eq. 3-4) and a stable variant.

A conv without bias is linear in its input, so conv(sum_j G_ij x_j) = sum_j G_ij conv(x_j):
the master encodes input pieces with a generator G and decodes any k outputs with the
inverse of the k-row submatrix. Bias is added by the master after decoding.

Three generators:
- ``stable`` (default): systematic [I; P] with one piece per subtask and a parity block
  searched for the smallest worst-case condition number (codes/stable.py); the first
  k subtasks carry the source pieces unchanged.
- ``vandermonde``: the paper's rows [g^(k-1) ... g^0] on nodes g = 1..n. Exact in
  theory, but its k-subsets are badly conditioned (about 6e9 at n=10, k=7).
- ``rotation``: a complex Vandermonde on the n-th roots of unity, each
  complex entry embedded as a 2x2 rotation (Ramamoorthy & Tang; FCDCC). Each
  subtask then carries two width pieces (the real and imaginary parts) of half the
  width, so per-worker load is unchanged, and the worst k-subset condition number
  at n=10 is tens, not billions.

Pure numpy/torch. Generators and inverses of the submatrices used are cached.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import lru_cache

import numpy as np
import torch

from .base import DecodeError, Scheme
from .stable import group_subtasks, stable_generator


def vandermonde_generator(n: int, k: int) -> np.ndarray:
    """The paper's (n, k) generator: row i is [g_i^(k-1), ..., g_i^0], g_i = i + 1."""
    nodes = np.arange(1, n + 1, dtype=np.float64)
    return nodes[:, None] ** np.arange(k - 1, -1, -1, dtype=np.float64)[None, :]


def rotation_generator(n: int, k: int) -> np.ndarray:
    """(2n, 2k) real embedding of the complex Vandermonde on the n-th roots of unity.

    Block (i, l) is the rotation by angle 2*pi*i*l/n, i.e. the real form of z_i^l.
    The realification of a complex matrix has the same singular values, so every
    k-worker submatrix is invertible with the complex Vandermonde's condition number.
    """
    angles = 2.0 * np.pi * np.outer(np.arange(n), np.arange(k)) / n
    cos, sin = np.cos(angles), np.sin(angles)
    gen = np.empty((2 * n, 2 * k))
    gen[0::2, 0::2], gen[0::2, 1::2] = cos, -sin
    gen[1::2, 0::2], gen[1::2, 1::2] = sin, cos
    return gen


GENERATORS = {
    "stable": (stable_generator, 1),
    "rotation": (rotation_generator, 2),
    "vandermonde": (vandermonde_generator, 1),
}
ALWAYS_SYSTEMATIC = frozenset({"stable"})  # generators that are systematic as built


def make_systematic(gen: np.ndarray, k_rows: int) -> np.ndarray:
    """G @ inv(G_top): the first k subtasks then carry the source pieces unchanged."""
    sys_gen = gen @ np.linalg.inv(gen[:k_rows])
    sys_gen[:k_rows] = np.eye(k_rows)  # exact, not identity up to rounding
    return sys_gen


@lru_cache(maxsize=64)
def cached_generator(name: str, n: int, k: int, systematic: bool) -> np.ndarray:
    """Generator matrix (n*m, k*m), float64, read-only."""
    build, m = GENERATORS[name]
    gen = build(n, k)
    if systematic and name not in ALWAYS_SYSTEMATIC:
        gen = make_systematic(gen, k * m)
    gen.setflags(write=False)
    return gen


# Above this many bytes of outputs, decode adds them up one by one instead of stacking.
STACK_BYTES = 4 * 2**20


def combine_outputs(coef: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """coef (e, R) @ the R pieces that ``blocks`` (outputs of one shape (m, ...)) hold,
    in order, each piece flattened: an (e, N) tensor.

    Small outputs are stacked with ``torch.cat`` and multiplied once: the fewest calls.
    Large ones (past STACK_BYTES, beyond the caches) are not stacked: the cat would
    write and read every byte once more, which put decode at 2.6-2.8x its floor.
    Instead the product is built by rank-1 updates, an (e x 1) @ (1 x N) ``addmm_`` per
    piece, so each output is read once and only the (e, N) result is rewritten. Both
    sum the same products in the same order; with this machine's MKL the results were
    identical bit for bit (tests/test_engine.py checks that they agree)."""
    first = blocks[0]
    if len(blocks) * first.numel() * first.element_size() <= STACK_BYTES:
        return coef @ torch.cat(blocks).reshape(coef.shape[1], -1)
    pieces = [piece for block in blocks for piece in block.reshape(block.shape[0], 1, -1)]
    out = torch.mm(coef[:, :1], pieces[0])
    for j in range(1, len(pieces)):
        out.addmm_(coef[:, j : j + 1], pieces[j])
    return out


class LinearCode(Scheme):
    """An MDS code given by a real generator; decode from the first k subtasks to arrive."""

    def __init__(self, n: int, k: int, generator: str = "stable", systematic: bool = False):
        if generator not in GENERATORS:
            raise ValueError(f"unknown code {generator!r}; known: {', '.join(GENERATORS)}")
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
        systematic = systematic or generator in ALWAYS_SYSTEMATIC
        self.n, self.k, self.systematic = n, k, systematic
        self.generator_name = generator
        self.pieces_per_task = GENERATORS[generator][1]
        suffix = "-sys" if systematic and generator not in ALWAYS_SYSTEMATIC else ""
        self.name = generator + suffix
        self.generator = cached_generator(generator, n, k, systematic)
        # (sources, parities) per group: one group (any k of n) unless stable grouped it
        self.groups = group_subtasks(n, k) if generator == "stable" else [(range(k), range(k, n))]
        self._group_of = np.empty(n, dtype=int)
        for g, (sources, parities) in enumerate(self.groups):
            self._group_of[list(sources) + list(parities)] = g
        self._inverses: dict[tuple[int, ...], np.ndarray] = {}
        self._torch: dict[tuple, torch.Tensor] = {}

    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        if pieces.shape[0] != self.source_pieces:
            raise ValueError(f"expected {self.source_pieces} pieces, got {pieces.shape[0]}")
        coded = pieces.new_empty((self.n * self.pieces_per_task, *pieces.shape[1:]))
        self.encode_into(pieces, coded)
        return coded.reshape(self.n, self.pieces_per_task, *pieces.shape[1:])

    def encode_into(self, pieces: torch.Tensor, coded: torch.Tensor) -> None:
        """Write the n*m coded pieces into ``coded`` (contiguous, (n*m, ...)).

        A systematic code copies the sources and multiplies only the parity rows."""
        flat = pieces.reshape(self.source_pieces, -1)
        out = coded.view(self.n * self.pieces_per_task, -1)
        km = self.source_pieces
        if self.systematic:
            out[:km].copy_(flat)
            if out.shape[0] > km:
                self.encode_parities(flat, out[km:])
            return
        torch.matmul(self._as_torch(("G",), self.generator, flat.dtype), flat, out=out)

    def encode_parities(self, sources: torch.Tensor, out: torch.Tensor) -> None:
        """(k*m, N) contiguous sources -> (n*m - k*m, N) parity rows, written into ``out``."""
        parity = self.generator[self.source_pieces :]
        torch.matmul(self._as_torch(("P",), parity, sources.dtype), sources, out=out)

    def sources_of(self, subtask: int) -> range | None:
        m = self.pieces_per_task
        return range(subtask * m, subtask * m + m) if self.systematic and subtask < self.k else None

    def decode_missing(
        self, outputs: Mapping[int, torch.Tensor], missing: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """Rebuild only the source pieces in ``missing`` (k*m-indexed).

        Uses every arrived systematic subtask plus the earliest parities needed, so the
        work is proportional to len(missing) and nothing is computed when it is empty."""
        if not self.systematic:
            return super().decode_missing(outputs, missing)
        used = self.systematic_used(outputs)
        first = next(iter(outputs.values()))
        if not missing:
            return first.new_empty((0, *first.shape[1:])), used
        key = tuple(sorted(used))
        coef = self._missing_rows(key, tuple(missing), first.dtype)
        rebuilt = combine_outputs(coef, [outputs[i] for i in key])
        return rebuilt.reshape(len(missing), *first.shape[1:]), used

    def systematic_used(self, outputs: Collection[int]) -> list[int]:
        """The subtasks a systematic decode uses, in arrival order (for the trace): in
        each group every arrived source, then its earliest parities still needed."""
        chosen: set[int] = set()
        for sources, parities in self.groups:
            have = [i for i in outputs if i in sources]
            need = len(sources) - len(have)
            extra = [i for i in outputs if i in parities][: max(0, need)]
            if len(extra) < need:
                raise DecodeError(f"{self.describe()} cannot decode from {sorted(outputs)}")
            chosen.update(have + extra)
        return [i for i in outputs if i in chosen]

    def _systematic_decode(
        self, outputs: Mapping[int, torch.Tensor]
    ) -> tuple[torch.Tensor, list[int]]:
        """Arrived sources as they are, the missing ones rebuilt: all k*m pieces."""
        have = {j: (i, t) for i in outputs if i < self.k for t, j in enumerate(self.sources_of(i))}
        missing = [j for j in range(self.source_pieces) if j not in have]
        rebuilt, used = self.decode_missing(outputs, missing)
        found = dict(zip(missing, rebuilt.unbind(0), strict=True))
        pieces = [
            outputs[have[j][0]][have[j][1]] if j in have else found[j]
            for j in range(self.source_pieces)
        ]
        return torch.stack(pieces), used

    def _missing_rows(self, used: tuple, missing: tuple, dtype: torch.dtype) -> torch.Tensor:
        """Rows of inv(G[used]) for the missing pieces, cached in the data's dtype."""
        key = ("miss", used, missing, dtype)
        if key not in self._torch:
            self._torch[key] = torch.tensor(self.inverse(used)[list(missing)], dtype=dtype)
        return self._torch[key]

    def decodable(self, arrived: Collection[int]) -> bool:
        """k of the n in an MDS code; k_g of each group's n_g in a grouped one."""
        if len(self.groups) == 1:
            return len(arrived) >= self.k
        counts = np.bincount(self._group_of[list(arrived)], minlength=len(self.groups))
        return all(counts[g] >= len(src) for g, (src, _) in enumerate(self.groups))

    def decode(self, outputs: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        if not self.decodable(outputs):
            raise DecodeError(f"{self.describe()} needs {self.k} outputs, got {len(outputs)}")
        if self.systematic:
            return self._systematic_decode(outputs)
        used = list(outputs)[: self.k]
        stacked = torch.cat([outputs[i] for i in used])
        flat = stacked.reshape(self.source_pieces, -1)
        key = tuple(used)
        inv = self._as_torch(key, self.inverse(key), flat.dtype)
        return (inv @ flat).reshape(stacked.shape), used

    def _as_torch(self, key: tuple, matrix: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """A torch copy of a float64 matrix in the data's dtype, cached per (matrix, dtype)."""
        cache_key = (*key, dtype)
        if cache_key not in self._torch:
            self._torch[cache_key] = torch.tensor(matrix, dtype=dtype)
        return self._torch[cache_key]

    def rows(self, subtasks: tuple[int, ...]) -> np.ndarray:
        """Generator rows of the given subtasks, in that order."""
        m = self.pieces_per_task
        idx = [i * m + j for i in subtasks for j in range(m)]
        return self.generator[idx]

    def inverse(self, subtasks: tuple[int, ...]) -> np.ndarray:
        """Inverse (float64) of the submatrix of ``subtasks``, cached per subset."""
        if subtasks not in self._inverses:
            self._inverses[subtasks] = np.linalg.inv(self.rows(subtasks))
        return self._inverses[subtasks]

    def describe(self) -> str:
        if len(self.groups) == 1:
            return super().describe()
        sizes = " ".join(f"{len(s) + len(p)}/{len(s)}" for s, p in self.groups)
        return f"{self.name}(n={self.n}, k={self.k}, m=1, {len(self.groups)} groups n/k: {sizes})"

    def condition(self, subtasks: tuple[int, ...]) -> float:
        return float(np.linalg.cond(self.rows(subtasks)))
