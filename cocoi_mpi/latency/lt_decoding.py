"""How many LT symbols the master needs to decode, as the simulator draws it (appendix G).

Pure numpy. Degrees follow the runtime LT scheme's Robust Soliton pmf
(:mod:`cocoi_mpi.latency.soliton`, same c and delta); the simulator
(:mod:`cocoi_mpi.latency.simulate`) draws the count from a pool made here.
"""

from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np

from .soliton import SOLITON_C, SOLITON_DELTA, robust_soliton


def _needed_one(
    k: int, rng: np.random.Generator, pmf: np.ndarray, record: list | None = None
) -> int:
    """Symbols until the generic rank reaches k: incremental bipartite matching (Kuhn).

    Each symbol draws a Robust-Soliton degree d and d distinct sources; it joins the
    matching if an augmenting path from it exists. ``record`` collects the supports.
    """
    cap = 3 * k + 30
    degs = rng.choice(k, size=cap, p=pmf) + 1
    match = [-1] * k
    stamp = [0] * k
    adj: list[list[int]] = []

    def augment(sym: int, t: int) -> bool:
        for src in adj[sym]:
            if stamp[src] != t:
                stamp[src] = t
                if match[src] == -1 or augment(match[src], t):
                    match[src] = sym
                    return True
        return False

    size = 0
    for j in range(cap):
        support = rng.choice(k, size=int(degs[j]), replace=False).tolist()
        adj.append(support)
        if record is not None:
            record.append(support)
        if augment(j, j + 1):
            size += 1
            if size == k:
                return j + 1
    return cap


@lru_cache(maxsize=64)
def lt_symbols_needed(
    k: int, draws: int = 64, seed: int = 0, c: float = SOLITON_C, delta: float = SOLITON_DELTA
) -> np.ndarray:
    """A pool of draws of how many LT symbols the master needs to decode k sources.

    LtCoI decodes over the reals with random coefficients on Robust-Soliton supports
    (degree d, then d distinct sources). With continuous random coefficients the received
    vectors have rank k with probability 1 exactly when their support graph has a
    matching of size k, so we count symbols until an incremental maximum matching
    reaches k. Exact, no overhead guesswork; ~0.1 s per draw at k = 1000.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    pmf = robust_soliton(k, c, delta)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * k + 1000))
    try:
        pool = np.array([_needed_one(k, rng, pmf) for _ in range(draws)])
    finally:
        sys.setrecursionlimit(old)
    pool.setflags(write=False)
    return pool


def mean_degree(k: int, c: float = SOLITON_C, delta: float = SOLITON_DELTA) -> float:
    """E[d] under the Robust Soliton distribution (the encoder's additions per symbol)."""
    return float(np.arange(1, k + 1) @ robust_soliton(k, c, delta))
