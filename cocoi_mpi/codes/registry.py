"""The one registry of schemes a run can name (``--scheme``, a sweep entry).

Each scheme is registered once with what the rest of the program needs to know
about it, so that no module outside codes/ branches on a scheme's name (DESIGN.md):

- ``unit``: what one coded round covers, a single conv (``conv``) or a conv block
  between pooling layers (``block``). A proxy distributes its work only when the
  scheme in use codes its unit; otherwise it runs on the master.
- ``exact``: decoded outputs equal the local forward up to float rounding, so the
  run checks them against its tolerance; approximate schemes only report agreement.
- ``plannable``: the latency model's k per layer (k°, k*) replaces the run's k.
- ``k_source``: where the number of source pieces comes from (see K_SOURCES).
- ``build``: the Scheme for (n, k, code, systematic); None for block schemes, whose
  codes are trained modules loaded from checkpoints (codes.learned, learning.py).
- ``uses_code``: m (pieces per subtask) is the ``--code`` generator's.

Pure: no MPI, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import Scheme
from .linear import GENERATORS, LinearCode
from .lt import LTCode
from .pieces import replication, uncoded

CONV, BLOCK = "conv", "block"
UNITS = (CONV, BLOCK)
FINEST = 1 << 30  # "as many pieces as the layer has output columns" (lt-kl)

# How a scheme's source k follows from the run's n and k (before a layer's width caps it).
K_SOURCES: dict[str, Callable[[int, int], int] | None] = {
    "run": lambda n, k: k,  # the run's k, or the plan's per layer when plannable
    "workers": lambda n, k: n,  # one piece per worker, all needed
    "half": lambda n, k: max(1, n // 2),  # two copies of each piece
    "width": lambda n, k: FINEST,  # one output column per source symbol
    "codec": None,  # the trained codec's k, fixed when it was trained
}

Builder = Callable[[int, int, str, bool], Scheme]


@dataclass(frozen=True)
class SchemeInfo:
    """What one scheme is; see the module docstring for each field."""

    name: str
    unit: str
    exact: bool
    plannable: bool
    k_source: str
    build: Builder | None
    uses_code: bool = False
    summary: str = ""

    @property
    def needs_codec(self) -> bool:
        """Block schemes code with trained codecs, one checkpoint per block (--codec)."""
        return self.unit == BLOCK

    def source_k(self, n: int, k: int) -> int:
        """Source pieces wanted for n workers and the run's (or plan's) k."""
        rule = K_SOURCES[self.k_source]
        if rule is None:
            raise ValueError(f"the {self.name} scheme takes its k from its trained codecs")
        return rule(n, k)

    def make(self, n: int, k: int, code: str, systematic: bool = False) -> Scheme:
        """The scheme for one conv round of n workers and k source pieces."""
        if self.build is None:
            raise ValueError(
                f"the {self.name} scheme codes conv blocks with trained codecs (--codec)"
            )
        return self.build(n, k, code, systematic)

    def pieces_per_task(self, code: str) -> int:
        """m: pieces per subtask, the --code generator's for MDS codes, else 1."""
        if not self.uses_code:
            return 1
        if code not in GENERATORS:
            raise ValueError(f"unknown code {code!r}; choose one of: {', '.join(GENERATORS)}")
        return GENERATORS[code][1]


def make_code(name: str, n: int, k: int, systematic: bool = False) -> Scheme:
    """Build an MDS code by its generator name (stable, rotation, vandermonde)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown code {name!r}; choose one of: {', '.join(GENERATORS)}")
    return LinearCode(n, k, name, systematic)


def _lt(name: str) -> Builder:
    return lambda n, k, code, systematic: LTCode(n, k, seed=0, name=name)


REGISTRY: dict[str, SchemeInfo] = {
    info.name: info
    for info in (
        SchemeInfo(
            "cocoi",
            CONV,
            exact=True,
            plannable=True,
            k_source="run",
            build=lambda n, k, code, systematic: make_code(code, n, k, systematic),
            uses_code=True,
            summary="MDS code (--code): any k of n replies decode",
        ),
        SchemeInfo(
            "uncoded",
            CONV,
            exact=True,
            plannable=False,
            k_source="workers",
            build=lambda n, k, code, systematic: uncoded(min(n, k)),
            summary="n plain pieces, all needed; a failed one is re-sent",
        ),
        SchemeInfo(
            "replication",
            CONV,
            exact=True,
            plannable=False,
            k_source="half",
            build=lambda n, k, code, systematic: replication(n, min(k, n)),
            summary="n // 2 pieces, two copies each; the first copy wins",
        ),
        SchemeInfo(
            "lt-kl",
            CONV,
            exact=True,
            plannable=False,
            k_source="width",
            build=_lt("lt-kl"),
            summary="LT code, one output column per source symbol",
        ),
        SchemeInfo(
            "lt-ks",
            CONV,
            exact=True,
            plannable=True,
            k_source="run",
            build=_lt("lt-ks"),
            summary="LT code on k source pieces",
        ),
        SchemeInfo(
            "learned",
            BLOCK,
            exact=False,
            plannable=False,
            k_source="codec",
            build=None,
            summary="conv blocks coded by trained codecs (--codec); approximate",
        ),
    )
}

RUN_SCHEMES = tuple(REGISTRY)  # every scheme a run can name, in the order help lists them
SCHEMES = tuple(name for name, info in REGISTRY.items() if info.build is not None)  # make_scheme


def scheme_info(name: str) -> SchemeInfo:
    """The registered scheme of this name; an unknown name is an error naming the valid ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown scheme {name!r}; choose one of: {', '.join(RUN_SCHEMES)}"
        ) from None


def is_exact(label: str) -> bool:
    """Are a trace label's results exact? False for a label that names no registered
    scheme: nothing vouches for it, so it is reported, not checked."""
    info = REGISTRY.get(str(label).partition(":")[0])
    return info is not None and info.exact


def schemes_coding(unit: str) -> tuple[str, ...]:
    """The names of the schemes whose rounds cover this unit (conv or block)."""
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of: {', '.join(UNITS)}")
    return tuple(name for name, info in REGISTRY.items() if info.unit == unit)
