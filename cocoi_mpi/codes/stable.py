"""The default code: a systematic real MDS code searched for a small worst-case condition.

Generator G = [I_k; P]: subtask i < k carries source piece i unchanged, subtask k + j
carries parity sum_i P[j, i] x_i, one piece per subtask (m = 1). The master encodes
only the n - k parities, and decodes only the pieces whose subtasks did not arrive.

Why not a closed form: the real Vandermonde (the paper's eq. 3) and real Cauchy
matrices are MDS but their k-row submatrices are ill-conditioned (cond 1e4 to 1e9 at
n = 10, so float32 decoding loses most of its digits); the complex-Vandermonde
``rotation`` code is well-conditioned but needs two half-width pieces per subtask and
its systematic form is only twice inside the tolerance. A Gaussian P is MDS with
probability one, and for a small n every erasure pattern can be checked: we draw P
from a fixed seed sequence, keep the draw whose worst k x k submatrix of G has the
smallest condition number, and improve it by a seeded random local search against the
same objective. Every erasure pattern at n = 10 then decodes in float32 within 3e-6
(docs/codes.md, ``cocoi codes``).

The search is deterministic. Its results for n <= ``TABLE_MAX_N`` are shipped in
``stable_parity.json`` (regenerate with ``python -m cocoi_mpi.codes.stable``), so a job
never pays for it.

Past ``TABLE_MAX_N`` workers no single block stays well conditioned (a Gaussian [I; P]
has some nearly singular k-subset among the C(n, k), and not every one can be checked),
so the code is *grouped* (``stable_groups``): the workers split into groups of at most
``GROUP_MAX``, the source pieces among them in proportion, and each group is the shipped
(n_g, k_g) code on its own sources. A group decodes from any k_g of its own n_g
subtasks, independently of the others, so the worst case of the whole code is the worst
of its groups' exhaustively checked cases, at any n. The price: it tolerates n_g - k_g
lost subtasks *per group*, not n - k anywhere (docs/codes.md compares). With fewer
parities than such groups, each of n - k larger groups gets one parity, the sum of its
pieces, so that every group tolerates a loss.
"""

from __future__ import annotations

import itertools
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).with_name("stable_parity.json")
TABLE_MAX_N = 12
GROUP_MAX = 10  # workers per group past TABLE_MAX_N: the blocks with the widest margin
SEED_DRAWS = 300
CLIMB_STEPS = 1500
CLIMB_STEP = 0.05  # perturbation, relative to the mean |P| entry
MAX_PATTERNS = 3000  # beyond this many k-subsets the search samples them


def erasure_patterns(n: int, k: int, limit: int = MAX_PATTERNS, seed: int = 0) -> np.ndarray:
    """Every k-subset of n rows when there are at most ``limit``; otherwise the
    consecutive ones (the worst for Vandermonde-like codes) plus a seeded sample."""
    if math.comb(n, k) <= limit:
        return np.array(list(itertools.combinations(range(n), k)), dtype=int)
    rng = np.random.default_rng(seed)
    runs = [np.arange(s, s + k) % n for s in range(n)]
    sample = [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(limit - n)]
    return np.unique(np.array(runs + sample), axis=0)


def worst_condition(parity: np.ndarray, patterns: np.ndarray) -> float:
    """max over the patterns of cond(G[rows]) for G = [I; parity]."""
    gen = np.vstack([np.eye(parity.shape[1]), parity])
    sv = np.linalg.svd(gen[patterns], compute_uv=False)
    with np.errstate(divide="ignore"):
        return float(np.max(sv[:, 0] / sv[:, -1]))


def search_parity(n: int, k: int, draws: int = SEED_DRAWS, steps: int = CLIMB_STEPS) -> np.ndarray:
    """The (n - k, k) parity block of the stable code, found by the seeded search."""
    r = n - k
    if r == 0:
        return np.zeros((0, k))
    if k == 1:
        return np.ones((r, 1))  # repetition: every parity is the piece itself, cond 1
    patterns = erasure_patterns(n, k)
    best, best_cond = None, math.inf
    for seed in range(draws):
        cand = np.random.default_rng(seed).standard_normal((r, k))
        cond = worst_condition(cand, patterns)
        if cond < best_cond:
            best, best_cond = cand, cond
    rng = np.random.default_rng(1_000_003 * n + k)
    for _ in range(steps):
        cand = best + rng.standard_normal(best.shape) * CLIMB_STEP * np.abs(best).mean()
        cond = worst_condition(cand, patterns)
        if cond < best_cond:
            best, best_cond = cand, cond
    return best


@lru_cache(maxsize=1)
def shipped_table() -> dict[str, list]:
    """The precomputed parity blocks, keyed "n,k" (empty if the file is missing)."""
    if not TABLE_PATH.exists():
        return {}
    with open(TABLE_PATH, encoding="utf-8") as fh:
        return json.load(fh)["parity"]


def stable_parity(n: int, k: int) -> np.ndarray:
    """The parity block for (n, k): from the shipped table, else searched now."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    rows = shipped_table().get(f"{n},{k}")
    if rows is not None:
        return np.array(rows, dtype=np.float64).reshape(n - k, k)
    if n - k == 1:  # one parity, the sum: a lost piece is the parity minus the others
        return np.ones((1, k))
    return search_parity(n, k, draws=30, steps=200)


def stable_groups(n: int, k: int) -> list[tuple[int, int]]:
    """(n_g, k_g) per group: one group up to TABLE_MAX_N workers; past it, groups of at
    most GROUP_MAX workers (as equal as can be, but never more groups than pieces) and
    the k pieces shared in proportion to the group sizes (largest remainders first),
    each group keeping at least one piece and at most n_g.

    With fewer parities than such groups (n - k < n / GROUP_MAX), there are n - k
    groups instead, one parity each: the sum of the group's pieces (``stable_parity``),
    so that every group tolerates a loss; a group may then pass GROUP_MAX workers, and
    its every pattern (n_g of them) is still checked."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n <= TABLE_MAX_N:
        return [(n, k)]
    count = min(k, -(-n // GROUP_MAX))
    if 0 < n - k < count:
        count = n - k
    sizes = [n // count + (1 if g < n % count else 0) for g in range(count)]
    shares = [k * size / n for size in sizes]
    pieces = [
        max(1, min(size, math.floor(share))) for size, share in zip(sizes, shares, strict=True)
    ]
    by_remainder = sorted(range(count), key=lambda g: (pieces[g] - shares[g], g))
    while sum(pieces) < k:
        g = next(g for g in by_remainder if pieces[g] < sizes[g])
        pieces[g] += 1
        by_remainder.remove(g)
        by_remainder.append(g)
    while sum(pieces) > k:
        g = next(g for g in reversed(by_remainder) if pieces[g] > 1)
        pieces[g] -= 1
        by_remainder.remove(g)
        by_remainder.insert(0, g)
    return list(zip(sizes, pieces, strict=True))


def group_subtasks(n: int, k: int) -> list[tuple[range, range]]:
    """Per group, its source subtasks (a run of 0..k-1) and its parity subtasks (a run
    of k..n-1), in group order: the layout ``stable_generator`` builds."""
    out, source, parity = [], 0, k
    for size, pieces in stable_groups(n, k):
        out.append((range(source, source + pieces), range(parity, parity + size - pieces)))
        source, parity = source + pieces, parity + size - pieces
    return out


def stable_generator(n: int, k: int) -> np.ndarray:
    """(n, k) generator [I_k; P]: systematic, one piece per subtask. Grouped past
    TABLE_MAX_N: each group's parity rows combine only its own sources."""
    gen = np.zeros((n, k))
    gen[:k] = np.eye(k)
    for sources, parities in group_subtasks(n, k):
        if parities:
            block = stable_parity(len(sources) + len(parities), len(sources))
            gen[parities.start : parities.stop, sources.start : sources.stop] = block
    return gen


def write_table(max_n: int = TABLE_MAX_N, path: Path = TABLE_PATH) -> dict:
    """Run the search for every 2 <= n <= max_n and 1 <= k <= n and save it."""
    table, conds = {}, {}
    for n in range(2, max_n + 1):
        for k in range(1, n + 1):
            parity = search_parity(n, k)
            table[f"{n},{k}"] = parity.tolist()
            conds[f"{n},{k}"] = worst_condition(parity, erasure_patterns(n, k)) if k < n else 1.0
            print(f"n={n:2d} k={k:2d} worst cond {conds[f'{n},{k}']:8.1f}", flush=True)
    doc = {
        "about": "parity blocks of the stable code; python -m cocoi_mpi.codes.stable rewrites",
        "search": dict(draws=SEED_DRAWS, steps=CLIMB_STEPS, step=CLIMB_STEP),
        "worst_cond": conds,
        "parity": table,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    shipped_table.cache_clear()
    return doc


if __name__ == "__main__":
    write_table()
