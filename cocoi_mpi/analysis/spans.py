"""The pieces of a request timeline (``cocoi report --timeline``): spans, instants, and the
timeline that holds them, one track per rank (the master is rank 0).

Placed by :mod:`.tracks`, written by :mod:`.chrome_json` and :mod:`.gantt`; the placement
rules are in :mod:`.timeline`'s docstring. Pure Python: no MPI here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MASTER_RANK = 0
PREPARE_LANE = 1  # the master's second thread: per-subtask preparation (pipelined master)


@dataclass
class Span:
    """One bar: ``phase`` picks its colour ("" for the parent spans the PNG leaves out)."""

    rank: int
    lane: int
    name: str
    phase: str
    start: float  # seconds since run start, master clock
    dur: float
    request: int
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    inner: bool = False  # drawn thinner, on top of its parent phase (the remainder)


@dataclass
class Mark:
    """One instant: a send at ``sent_t``, or a reply that never came."""

    rank: int
    lane: int
    name: str
    kind: str  # "send" or "no reply"
    t: float
    request: int
    cat: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    """Spans and marks of the chosen requests, with what the titles need."""

    requests: list[int]
    spans: list[Span]
    marks: list[Mark]
    titles: dict[int, str]
    lane_names: dict[tuple[int, int], str]
    source: str = ""
    model: str = ""
