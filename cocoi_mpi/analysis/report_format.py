"""Numbers and aligned tables for the plain-text report (``cocoi report``); NaN is "unknown"."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _mean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN marks 'unknown'); NaN if there are none, no warning."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else math.nan


def _fmt(value: float, spec: str = ".3f", scale: float = 1.0) -> str:
    """A number, or "-" when it is unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    return format(value * scale, spec)


def _clip(text: str, width: int) -> str:
    """Keep the tail of long names (the module path's end is the informative part)."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Align columns: the first ``left`` columns left-aligned, numbers right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
