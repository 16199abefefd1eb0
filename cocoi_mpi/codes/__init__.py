"""Coding schemes behind one interface (see base.Scheme)."""

from .base import DecodeError, Scheme
from .linear import GENERATORS, LinearCode

CODES = tuple(GENERATORS)
DEFAULT_CODE = "rotation"


def make_code(name: str, n: int, k: int, systematic: bool = False) -> Scheme:
    """Build a scheme by its command-line name."""
    if name not in GENERATORS:
        raise ValueError(f"unknown code {name!r}; choose one of: {', '.join(CODES)}")
    return LinearCode(n, k, name, systematic)


__all__ = ["CODES", "DEFAULT_CODE", "DecodeError", "LinearCode", "Scheme", "make_code"]
