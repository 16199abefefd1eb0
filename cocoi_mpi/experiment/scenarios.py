"""The paper's straggler and failure scenarios, and link emulation. Pure and seeded.

Every injected behaviour is decided on the master from (seed, round, rank) alone, so
the same seed gives the same delays and failures whatever the timing of the run.

- scenario 1 (straggling): each subtask's transmission gets an extra delay drawn from
  Exp(scale = lambda_tr * T_tr), T_tr the nominal transmission time of its bytes.
- scenario 2 (failures): ``failures`` random workers fail in each round.
- scenario 3: scenario 2 plus one "high-probability" straggler whose compute is
  slower by ``straggler_factor`` (85.2/50.8 on the paper's Pis) in most rounds.
- link emulation (``link_mbps`` > 0): every transfer also takes bytes / bandwidth,
  as on the paper's WiFi, so a shared-memory run has a network to straggle on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..statuses import CrashKind, FaultKind, ScenarioKind

PAPER_STRAGGLER_FACTOR = 85.2 / 50.8  # VGG16 on the paper's slow Pi vs a normal one
NOMINAL_MBPS = 100.0  # T_tr's bandwidth when no link is emulated


@dataclass(frozen=True)
class Scenario:
    """One level of one scenario, as the command line and sweep files name it."""

    kind: int = 0
    lambda_tr: float = 0.0
    failures: int = 0
    straggler_factor: float = PAPER_STRAGGLER_FACTOR
    straggler_prob: float = 0.8
    link_mbps: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in tuple(ScenarioKind):
            raise ValueError(f"scenario must be 0, 1, 2 or 3, got {self.kind}")
        check_levels(self.lambda_tr, self.failures, self.straggler_factor, self.straggler_prob)
        if self.link_mbps < 0:
            raise ValueError(f"link_mbps must be >= 0, got {self.link_mbps}")

    @property
    def level(self) -> float:
        """The swept quantity: lambda_tr in scenario 1, n_f in scenarios 2 and 3."""
        return self.lambda_tr if self.kind == ScenarioKind.STRAGGLING else float(self.failures)

    @property
    def has_failures(self) -> bool:
        """Scenarios 2 and 3: ``failures`` workers fail in each round (else ignored)."""
        return self.kind in (ScenarioKind.FAILURES, ScenarioKind.FAILURES_AND_STRAGGLER)

    @property
    def has_straggler(self) -> bool:
        """Scenario 3: one worker is slower by ``straggler_factor`` in most rounds."""
        return self.kind == ScenarioKind.FAILURES_AND_STRAGGLER

    def check_workers(self, n: int) -> None:
        if self.has_failures and self.failures > n - 1:
            raise ValueError(f"{self.failures} failures per round leave no live worker of {n}")


@dataclass(frozen=True)
class Fault:
    """What one subtask suffers. ``fail``: "" (none), "silent" (never replies) or
    "notice" (tells the master it failed, as the paper's failed workers do)."""

    fail: str = FaultKind.NONE.value
    recv_delay: float = 0.0  # seconds before the worker may start computing
    send_delay: float = 0.0  # seconds before its reply may leave
    slowdown: float = 1.0  # compute takes this many times longer

    @property
    def injected(self) -> float:
        return self.recv_delay + self.send_delay


def check_levels(
    lambda_tr: float,
    failures: int,
    factor: float,
    prob: float,
    factor_name: str = "straggler_factor",
    prob_name: str = "straggler_prob",
) -> None:
    """The ranges of the paper's scenario parameters, for every description of them
    (this module's ``Scenario`` and the simulator's,
    :class:`cocoi_mpi.latency.sim_schemes.Scenario`, which calls the straggler's factor
    and probability by its own names)."""
    if lambda_tr < 0:
        raise ValueError(f"lambda_tr must be >= 0, got {lambda_tr}")
    if failures < 0:
        raise ValueError(f"failures must be >= 0, got {failures}")
    if factor < 1:
        raise ValueError(f"{factor_name} must be >= 1, got {factor}")
    if not 0 <= prob <= 1:
        raise ValueError(f"{prob_name} must be in [0, 1], got {prob}")


def transfer_s(nbytes: int, mbps: float) -> float:
    return 8.0 * nbytes / (mbps * 1e6)


class FaultModel:
    """Faults for each (round, worker), from the scenario, a seed and fixed ``silent`` ranks."""

    def __init__(
        self, scenario: Scenario, workers: Sequence[int], seed: int, silent: Sequence[int] = ()
    ):
        scenario.check_workers(len(workers))
        self.scenario, self.workers, self.seed = scenario, list(workers), seed
        self.silent = frozenset(silent)
        self.straggler = self.workers[np.random.default_rng([seed, 0]).integers(len(workers))]

    def round_state(self, round_id: int) -> tuple[frozenset, bool]:
        """Which workers fail in this round, and whether the straggler is slow in it
        (drawn once per round: the draw is O(n) and every subtask asks)."""
        last = getattr(self, "_last_round", None)
        if last is not None and last[0] == round_id:
            return last[1]
        state = self._draw_round(round_id)
        self._last_round = (round_id, state)
        return state

    def _draw_round(self, round_id: int) -> tuple[frozenset, bool]:
        sc, rng = self.scenario, np.random.default_rng([self.seed, 1, round_id])
        failed: frozenset = frozenset()
        if sc.has_failures and sc.failures:
            failed = frozenset(rng.choice(self.workers, size=sc.failures, replace=False).tolist())
        slow = sc.has_straggler and bool(rng.random() < sc.straggler_prob)
        return failed, slow

    def fault(self, round_id: int, subtask: int, rank: int, bytes_in: int, bytes_out: int) -> Fault:
        """The fault of one subtask: the same (seed, round, subtask, rank) gives the same."""
        sc = self.scenario
        failed, slow = self.round_state(round_id)
        link_in = transfer_s(bytes_in, sc.link_mbps) if sc.link_mbps else 0.0
        link_out = transfer_s(bytes_out, sc.link_mbps) if sc.link_mbps else 0.0
        extra = 0.0
        if sc.kind == ScenarioKind.STRAGGLING and sc.lambda_tr > 0:
            nominal = transfer_s(bytes_in + bytes_out, sc.link_mbps or NOMINAL_MBPS)
            rng = np.random.default_rng([self.seed, 2, round_id, subtask, rank])
            extra = float(rng.exponential(sc.lambda_tr * nominal))
        fail = FaultKind.NOTICE if rank in failed else FaultKind.NONE
        if rank in self.silent:
            fail = FaultKind.SILENT
        return Fault(
            fail=fail.value,  # a plain str: it is pickled into the worker's Task
            recv_delay=link_in,
            send_delay=link_out + extra,
            slowdown=sc.straggler_factor if slow and rank == self.straggler else 1.0,
        )


CRASH_KINDS = tuple(CrashKind)


@dataclass(frozen=True)
class Crash:
    """A fault drill (--crash): worker ``rank`` really dies (SIGKILL, or an exit
    without a signal), stops answering for ``hang_s`` seconds, or raises an exception
    in its subtask, on its first subtask of request ``request`` or later (requests are
    counted from 0 over the whole run)."""

    rank: int
    request: int
    kind: str = CrashKind.KILL.value
    hang_s: float = 0.0


def parse_crashes(text: str | list | tuple) -> tuple[Crash, ...]:
    """'2@3' (rank 2 dies at request 3), '4@1:exit', '3@0:hang=5' -> Crash tuple."""
    entries = text if isinstance(text, list | tuple) else str(text).split(",")
    return tuple(parse_crash(str(e).strip()) for e in entries if str(e).strip())


def parse_crash(entry: str) -> Crash:
    """One RANK@REQUEST[:kill|exit|hang=SECONDS] entry."""
    usage = (
        f"crash entry {entry!r} must be RANK@REQUEST[:kill|exit|raise|hang=SECONDS], e.g. 2@3:kill"
    )
    where, _, kind = entry.partition(":")
    rank, at, request = where.partition("@")
    kind, _, seconds = (kind or CrashKind.KILL.value).partition("=")
    try:
        crash = Crash(int(rank), int(request), kind, float(seconds) if seconds else 0.0)
    except ValueError:
        raise ValueError(usage) from None
    if not at or kind not in CRASH_KINDS or crash.request < 0 or crash.hang_s < 0:
        raise ValueError(usage)
    if (kind == CrashKind.HANG) != bool(seconds):
        raise ValueError(f"{usage}: only hang takes seconds, and it needs them")
    return crash
