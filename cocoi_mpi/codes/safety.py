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

from functools import lru_cache

import torch

from ..errors import UserError
from .analysis import decode_errors

SAFE_DEFAULT = "stable"


class UnsafeCode(UserError, ValueError):
    """The configured code cannot decode every pattern within the tolerance."""


@lru_cache(maxsize=1024)
def worst_float32(code: str, n: int, k: int, systematic: bool) -> tuple[float, str]:
    """The worst float32 decode error of ``code`` at (n, k), and how it was found."""
    res = decode_errors(code, n, k, torch.float32, systematic)
    return res["worst_error"], res["method"]


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
