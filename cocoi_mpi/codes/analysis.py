"""How accurately a code decodes in float32 / float64, over every k-subset of its workers.

The master may decode from any k of the n subtasks, so a code is only as good as its
worst k-subset. This module measures that worst case the way the runtime sees it
(every k-subset while there are at most ``MAX_PATTERNS``; past that a search: the
consecutive runs, the worst pattern of Vandermonde-like codes, plus a seeded sample,
which finds a lower bound only and says so). A grouped ``stable`` code decodes each
group from its own subtasks alone, so its worst case is its groups' worst, each found
over every pattern: exact at any n.
source pieces are encoded in the data dtype (a worker convolves the encoded input in
that dtype, so the coded data is rounded to it), then decoded by the code's own
decode() in the same dtype. Pure numpy/torch: no MPI, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import torch

from . import make_code
from .linear import ALWAYS_SYSTEMATIC, LinearCode
from .stable import erasure_patterns

MAX_PATTERNS = 3000  # k-subsets checked one by one; past this many, a search
SEARCH_PATTERNS = 300  # ... over this many: the n consecutive runs and a seeded sample
EXHAUSTIVE_WORK = 3e8  # ... or when patterns x (k m)^3 (the inverses) would pass this
CHANNELS, HEIGHT = 8, 6  # a small conv output piece; the error does not depend on its size
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: row keys and table headers use plain names."""
    return str(dtype).removeprefix("torch.")


def source_pieces(code: LinearCode, width: int, seed: int) -> torch.Tensor:
    """Standard normal (k*m, C, H, width) pieces in float64, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (code.source_pieces, CHANNELS, HEIGHT, width)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def relative_error(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """max|decoded - source| / max|source|, computed in float64: the runtime's error measure."""
    diff = decoded.double() - source.double()
    return float(diff.abs().max() / source.double().abs().max())


def decode_subset(code: LinearCode, coded: torch.Tensor, subset: tuple[int, ...]) -> torch.Tensor:
    """Decode from exactly the subtasks in ``subset``, through the code's own decode()."""
    decoded, used = code.decode({i: coded[i] for i in subset})
    assert tuple(used) == subset, (used, subset)
    return decoded


def subset_error(
    code: LinearCode, coded: torch.Tensor, subset: tuple[int, ...], source: torch.Tensor
) -> float:
    """The relative error decoding from ``subset``; inf where its submatrix is singular
    to working precision (large Vandermonde-like codes)."""
    try:
        error = relative_error(decode_subset(code, coded, subset), source)
    except np.linalg.LinAlgError:
        return math.inf
    return math.inf if math.isnan(error) else error


def decode_errors(
    code_name: str,
    n: int,
    k: int,
    dtype: torch.dtype,
    systematic: bool = False,
    width: int = 5,
    seed: int = 0,
    limit: int = MAX_PATTERNS,
) -> dict:
    """Worst and median decode error and condition number over the k-subsets of n
    subtasks: all of them, or (past ``limit``) a search; ``method`` says which.

    ``width`` is the width of one source piece (conv outputs are cut along width).
    """
    code = make_code(code_name, n, k, systematic)
    if isinstance(code, LinearCode) and len(code.groups) > 1:
        return grouped_errors(code, dtype, width, seed, limit)
    source = source_pieces(code, width, seed).to(dtype)
    coded = code.encode(source)
    total = math.comb(n, k)
    work = total * (k * code.pieces_per_task) ** 3
    size = total if total <= limit and work <= EXHAUSTIVE_WORK else min(limit, SEARCH_PATTERNS)
    subsets = [tuple(int(i) for i in s) for s in erasure_patterns(n, k, size, seed)]
    errors = np.array([subset_error(code, coded, s, source) for s in subsets])
    conds = np.array([code.condition(s) for s in subsets])
    worst = int(np.argmax(errors))
    return {
        "code": code_name,
        "systematic": systematic,
        "n": n,
        "k": k,
        "dtype": dtype_name(dtype),
        "subsets": len(subsets),
        "method": f"all {total}" if len(subsets) == total else f"search {len(subsets)}/{total:.1e}",
        "worst_error": float(errors[worst]),
        "median_error": float(np.median(errors)),
        "worst_subset": subsets[worst],
        "worst_cond": float(conds.max()),
        "median_cond": float(np.median(conds)),
    }


@lru_cache(maxsize=256)
def _group_errors(n: int, k: int, dtype: torch.dtype, width: int, seed: int, limit: int) -> dict:
    return decode_errors("stable", n, k, dtype, False, width, seed, limit)


def grouped_errors(code: LinearCode, dtype: torch.dtype, width: int, seed: int, limit: int) -> dict:
    """A grouped code's worst case: the worst of its groups, each decoding alone (as the
    (n_g, k_g) code it is) over every pattern of its own subtasks. ``worst_subset``
    is the worst group's pattern in the whole code's subtask numbers."""
    parts = []
    for sources, parities in code.groups:
        res = _group_errors(len(sources) + len(parities), len(sources), dtype, width, seed, limit)
        members = list(sources) + list(parities)
        parts.append((res, tuple(members[i] for i in res["worst_subset"])))
    worst, subset = max(parts, key=lambda part: part[0]["worst_error"])
    exhaustive = all(res["method"].startswith("all") for res, _ in parts)
    return {
        "code": code.generator_name,
        "systematic": True,
        "n": code.n,
        "k": code.k,
        "dtype": dtype_name(dtype),
        "subsets": sum(res["subsets"] for res, _ in parts),
        "method": f"{'all' if exhaustive else 'search'}, per group ({len(parts)} groups)",
        "worst_error": worst["worst_error"],
        "median_error": float(np.median([res["median_error"] for res, _ in parts])),
        "worst_subset": subset,
        "worst_cond": max(res["worst_cond"] for res, _ in parts),
        "median_cond": float(np.median([res["median_cond"] for res, _ in parts])),
    }


def table_row(
    code_name: str, n: int, k: int, dtypes: Sequence[torch.dtype], systematic: bool
) -> dict:
    """One row per (code, k): conditioning once, then worst / median error per dtype."""
    systematic = systematic or code_name in ALWAYS_SYSTEMATIC  # stable is, as built
    row: dict = {"code": code_name, "systematic": systematic, "n": n, "k": k}
    for dtype in dtypes:
        res = decode_errors(code_name, n, k, dtype, systematic)
        name = res["dtype"]
        row.update(worst_cond=res["worst_cond"], median_cond=res["median_cond"])
        row["patterns"] = res["method"]
        row[f"worst_{name}"] = res["worst_error"]
        row[f"median_{name}"] = res["median_error"]
        row[f"worst_subset_{name}"] = res["worst_subset"]
    return row


def error_table(
    n: int,
    ks: Iterable[int],
    codes: Sequence[str],
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    systematic: bool = False,
) -> list[dict]:
    """Rows for every code and k, codes outermost: what ``cocoi codes`` prints."""
    ks = list(ks)
    return [table_row(code, n, k, dtypes, systematic) for code in codes for k in ks]


HEADERS = (
    "code",
    "systematic",
    "k",
    "worst cond",
    "worst err f32",
    "median err f32",
    "worst err f64",
    "f32 verdict",
    "patterns",
)


def verdict(row: dict, tolerance: float) -> str:
    """Whether float32 decoding from the worst subset stays within the runtime's tolerance."""
    worst = row.get("worst_float32")
    if worst is None:
        return "-"
    return "ok" if worst <= tolerance else f"FAILS (> {tolerance:.0e})"


def row_cells(row: dict, tolerance: float) -> list[str]:
    """The printed cells of one row, in HEADERS order; '-' for a dtype not measured."""

    def num(key: str) -> str:
        return f"{row[key]:.1e}" if key in row else "-"

    return [
        row["code"],
        "yes" if row["systematic"] else "no",
        str(row["k"]),
        num("worst_cond"),
        num("worst_float32"),
        num("median_float32"),
        num("worst_float64"),
        verdict(row, tolerance),
        row.get("patterns", "-"),
    ]


def format_table(rows: Sequence[dict], tolerance: float = 1e-4, markdown: bool = False) -> str:
    """A plain aligned table for the terminal, or a markdown table for docs."""
    cells = [list(HEADERS)] + [row_cells(r, tolerance) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in HEADERS) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) for c in cells)
    return "\n".join(line.rstrip() for line in lines)
