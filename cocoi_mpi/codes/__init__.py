"""Coding schemes behind one interface (see base.Scheme) and one registry (registry.py)."""

from .base import DecodeError, Scheme
from .linear import GENERATORS, LinearCode
from .lt import LTCode
from .pieces import PieceScheme, replication, uncoded
from .registry import (
    BLOCK,
    CONV,
    FINEST,
    REGISTRY,
    RUN_SCHEMES,
    SCHEMES,
    SchemeInfo,
    is_exact,
    make_code,
    scheme_info,
    schemes_coding,
)

CODES = tuple(GENERATORS)
DEFAULT_CODE = "stable"


def scheme_k(scheme: str, n: int, k: int) -> int:
    """The number of source pieces a scheme wants before a layer's width caps it."""
    return scheme_info(scheme).source_k(n, k)


def make_scheme(
    scheme: str, n: int, k: int, code: str = DEFAULT_CODE, systematic: bool = False
) -> Scheme:
    """Build a scheme by its command-line name for n workers and k source pieces."""
    return scheme_info(scheme).make(n, k, code, systematic)


__all__ = [
    "BLOCK",
    "CODES",
    "CONV",
    "DEFAULT_CODE",
    "DecodeError",
    "FINEST",
    "LTCode",
    "LinearCode",
    "PieceScheme",
    "REGISTRY",
    "RUN_SCHEMES",
    "SCHEMES",
    "Scheme",
    "SchemeInfo",
    "is_exact",
    "make_code",
    "make_scheme",
    "replication",
    "scheme_info",
    "scheme_k",
    "schemes_coding",
    "uncoded",
]
