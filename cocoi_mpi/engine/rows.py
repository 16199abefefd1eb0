"""What one round hands the engine and what the engine records of it: the workers'
replies (``Execution``), a round too few of them answered (``RoundShortfall``), and the
fields of a round's trace row that are not plain timings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..codes import Scheme
from ..errors import RunError
from ..geometry.blocks import BlockSpec
from ..geometry.conv import ConvSpec
from ..latency.counts import counts_for_spec

SHORTFALL_POLICIES = ("local", "error")


class RoundShortfall(RunError, RuntimeError):
    """Too few live workers replied for a round to decode; ``rows`` are its subtask rows."""

    def __init__(self, message: str, rows: list[dict] | None = None):
        super().__init__(message)
        self.rows = rows or []


@dataclass
class Execution:
    """What came back from the workers for one round, as the engine needs it."""

    outputs: dict[int, torch.Tensor]  # subtask index -> output, in arrival order
    send_s: float = 0.0
    wait_s: float = 0.0
    remainder_s: float = 0.0
    rest: torch.Tensor | None = None
    n_outstanding: int = 0
    n_failed: int = 0
    subtasks: list[dict] = field(default_factory=list)
    ranks: dict[int, int] = field(default_factory=dict)  # subtask -> rank that answered
    release: Callable[[], None] | None = None  # frees receive buffers once decoded


FAILED_STATUSES = ("failed", "dead", "timeout")


def no_arithmetic(code: Scheme, used: list[int]) -> bool:
    """Did decoding only place outputs? (every used subtask carried source pieces)"""
    return bool(getattr(code, "systematic", False)) and all(i < code.k for i in used)


def flop_counts(spec: ConvSpec, x: torch.Tensor, code: Scheme) -> dict:
    """The N of the latency model for this round (eq. 8-12), as the planner computes them."""
    c = counts_for_spec(spec, x.shape[2], x.shape[3], code.n, code.k, code.pieces_per_task)
    return dict(n_enc=float(c.enc), n_cmp=float(c.cmp), n_dec=float(c.dec))


def layer_id(spec: ConvSpec | BlockSpec) -> int:
    return spec.block_id if isinstance(spec, BlockSpec) else spec.layer_id
