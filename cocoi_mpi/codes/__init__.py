"""Coding schemes behind one interface (see base.Scheme)."""

from .base import DecodeError, Scheme
from .linear import GENERATORS, LinearCode
from .lt import LTCode
from .pieces import PieceScheme, replication, uncoded

CODES = tuple(GENERATORS)
DEFAULT_CODE = "stable"
SCHEMES = ("cocoi", "uncoded", "replication", "lt-kl", "lt-ks")  # exact, built by make_scheme
RUN_SCHEMES = (*SCHEMES, "learned")  # learned: conv blocks with trained codecs (codes.learned)
FINEST = 1 << 30  # "as many pieces as the layer has output columns" (lt-kl)


def make_code(name: str, n: int, k: int, systematic: bool = False) -> Scheme:
    """Build an MDS code by its generator name (stable, rotation, vandermonde)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown code {name!r}; choose one of: {', '.join(CODES)}")
    return LinearCode(n, k, name, systematic)


def scheme_k(scheme: str, n: int, k: int) -> int:
    """The number of source pieces a scheme wants before a layer's width caps it."""
    if scheme == "uncoded":
        return n
    if scheme == "replication":
        return max(1, n // 2)
    if scheme == "lt-kl":
        return FINEST  # capped to the layer's output width: one column per source symbol
    return k


def make_scheme(
    scheme: str, n: int, k: int, code: str = DEFAULT_CODE, systematic: bool = False
) -> Scheme:
    """Build a scheme by its command-line name for n workers and k source pieces."""
    if scheme == "cocoi":
        return make_code(code, n, k, systematic)
    if scheme == "uncoded":
        return uncoded(min(n, k))
    if scheme == "replication":
        return replication(n, min(k, n))
    if scheme in ("lt-kl", "lt-ks"):
        return LTCode(n, k, seed=0, name=scheme)
    if scheme == "learned":
        raise ValueError("the learned scheme codes conv blocks with trained codecs (--codec)")
    raise ValueError(f"unknown scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")


__all__ = [
    "CODES",
    "DEFAULT_CODE",
    "DecodeError",
    "LinearCode",
    "PieceScheme",
    "RUN_SCHEMES",
    "SCHEMES",
    "Scheme",
    "make_code",
    "make_scheme",
    "replication",
    "scheme_k",
    "uncoded",
]
