"""How accurately a code decodes in float32 / float64, over every k-subset of its workers.

The master may decode from any k of the n subtasks, so a code is only as good as its
worst k-subset. This module measures that worst case the way the runtime sees it:
source pieces are encoded in the data dtype (a worker convolves the encoded input in
that dtype, so the coded data is rounded to it), then decoded by the code's own
decode() in the same dtype. Pure numpy/torch: no MPI, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from . import make_code
from .linear import ALWAYS_SYSTEMATIC, LinearCode

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


def decode_errors(
    code_name: str,
    n: int,
    k: int,
    dtype: torch.dtype,
    systematic: bool = False,
    width: int = 5,
    seed: int = 0,
) -> dict:
    """Worst and median decode error and condition number over all k-subsets of n subtasks.

    ``width`` is the width of one source piece (conv outputs are cut along width).
    """
    code = make_code(code_name, n, k, systematic)
    source = source_pieces(code, width, seed).to(dtype)
    coded = code.encode(source)
    subsets = list(itertools.combinations(range(n), k))
    errors = np.array([relative_error(decode_subset(code, coded, s), source) for s in subsets])
    conds = np.array([code.condition(s) for s in subsets])
    worst = int(np.argmax(errors))
    return {
        "code": code_name,
        "systematic": systematic,
        "n": n,
        "k": k,
        "dtype": dtype_name(dtype),
        "subsets": len(subsets),
        "worst_error": float(errors[worst]),
        "median_error": float(np.median(errors)),
        "worst_subset": subsets[worst],
        "worst_cond": float(conds.max()),
        "median_cond": float(np.median(conds)),
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
