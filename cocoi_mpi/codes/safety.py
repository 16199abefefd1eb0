"""Never silently wrong: a code is refused before a run if its worst decode is not exact.

A decode from the worst k-subset loses about log10(cond) of float32's seven digits,
so a code that is fine at n = 10 can return wrong logits at n = 20, and with
``--no-check`` nobody would notice. Before any worker is involved the master asks, for
the code and every k a round may use (a narrow layer tightens k, so every k up to the
run's), what the worst float32 decode error is (``analysis.decode_errors``: every
pattern where that is cheap, each group's every pattern for a grouped ``stable`` code,
else a search, which can only find a lower bound) and refuses the run when it passes
the tolerance, naming a code that works. The planner asks ``largest_safe_k`` and never
picks beyond it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError
from .analysis import decode_errors
from .stable import TABLE_MAX_N, stable_groups

SAFE_DEFAULT = "stable"
ERRORS_PATH = Path(__file__).with_name("stable_errors.json")


class UnsafeCode(UserError, ValueError):
    """The configured code cannot decode every pattern within the tolerance."""


@lru_cache(maxsize=1024)
def worst_float32(code: str, n: int, k: int, systematic: bool) -> tuple[float, str]:
    """The worst float32 decode error of ``code`` at (n, k), and how it was found.

    The default code's groups are looked up in ``stable_errors.json`` (every pattern
    of every shipped block, measured once: a job then starts without decoding
    anything); the rest is measured now."""
    if code == SAFE_DEFAULT:
        keys = [f"{size},{pieces}" for size, pieces in stable_groups(n, k)]
        table = shipped_errors()
        if all(key in table for key in keys):
            return max(table[key] for key in keys), "all (shipped, per group)"
    res = decode_errors(code, n, k, torch.float32, systematic)
    return res["worst_error"], res["method"]


@lru_cache(maxsize=1)
def shipped_errors() -> dict[str, float]:
    """Worst float32 decode error of each shipped stable block, keyed "n,k"."""
    if not ERRORS_PATH.exists():
        return {}
    with open(ERRORS_PATH, encoding="utf-8") as fh:
        return json.load(fh)["worst_float32"]


def write_errors(path: Path = ERRORS_PATH) -> dict:
    """Measure every shipped block (n <= TABLE_MAX_N) over every pattern and save it
    (about 3 s): ``python -m cocoi_mpi.codes.safety``, after the blocks change."""
    errors = {
        f"{n},{k}": decode_errors(SAFE_DEFAULT, n, k, torch.float32)["worst_error"]
        for n in range(1, TABLE_MAX_N + 1)
        for k in range(1, n + 1)
    }
    doc = {"about": "python -m cocoi_mpi.codes.safety rewrites this", "worst_float32": errors}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=0)
    shipped_errors.cache_clear()
    return doc


def check_code(code: str, n: int, k_max: int, systematic: bool, tolerance: float) -> None:
    """Raise UnsafeCode unless every k in 1..k_max decodes within ``tolerance``."""
    for k in range(1, k_max + 1):
        error, how = worst_float32(code, n, k, systematic)
        if error <= tolerance:
            continue
        default_error = worst_float32(SAFE_DEFAULT, n, k, False)[0]
        fix = f"--code {SAFE_DEFAULT} (its worst at this n and k: {default_error:.1e})"
        safe = largest_safe_k(code, n, systematic, tolerance)
        if safe >= 1:
            fix += f", or k <= {safe} with --code {code}"
        raise UnsafeCode(
            f"--code {code} cannot decode exactly with n={n} workers at k={k} (a layer may "
            f"use any k up to {k_max}): its worst float32 decode error is {error:.1e} "
            f"({how} erasure patterns checked), past the tolerance {tolerance:g}. "
            f"Use {fix}."
        )


def largest_safe_k(code: str, n: int, systematic: bool, tolerance: float) -> int:
    """The largest K such that every k in 1..K decodes within ``tolerance`` (0: none)."""
    for k in range(1, n + 1):
        if worst_float32(code, n, k, systematic)[0] > tolerance:
            return k - 1
    return n


if __name__ == "__main__":
    write_errors()
