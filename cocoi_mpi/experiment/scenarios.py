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
- device jitter (``jitter``, any scenario): the shift-exponential excess of eq. 7 on
  every subtask, as real devices have it. A level is two ratios, the mean excess over
  the minimum of computing and of transferring (:class:`Jitter`); the worker's compute
  takes (1 + rho_cmp E) times its measured time and each transfer rho_tr E' times its
  link time more, E, E' ~ Exp(1) drawn from the seed. Being ratios, a level means the
  same on a Pi and on a device 14 times faster (docs/testbed.md, "Presets").
- failure detection (``detection``, scenarios 2-3): when the master learns that a
  worker failed: at once (``immediate``: the worker says so before computing),
  ``after=S`` seconds after the subtask was sent (a heartbeat), ``timeout=F`` times
  the round trip of the round's first reply, or ``never`` (at the round's deadline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..statuses import CrashKind, FaultKind, ScenarioKind

PAPER_STRAGGLER_FACTOR = 85.2 / 50.8  # VGG16 on the paper's slow Pi vs a normal one
NOMINAL_MBPS = 100.0  # T_tr's bandwidth when no link is emulated
# The "paper" jitter level and the failure detection fitted with it (`python -m
# cocoi_mpi.latency.request_sim`, docs/testbed.md "Jitter levels"): with them, the
# simulated VGG16 on the built-in Pi profile shows uncoded +73 % from n_f = 0 to 2 and
# CoCoI 4 % slower than uncoded at n_f = 0, as the paper measured (+68-79 %, "slightly").
PAPER_JITTER_CMP = 0.25
PAPER_JITTER_TR = 0.25
PAPER_DETECTION = "timeout=1.5"


@dataclass(frozen=True)
class Jitter:
    """A device's straggling as ratios of eq. 7's mean excess (N/mu) to its minimum
    (N theta): ``cmp`` for computing, ``tr`` for receiving and sending."""

    cmp: float = 0.0
    tr: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cmp", "tr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"jitter must have finite ratios >= 0, got {name} = {value}")

    @property
    def off(self) -> bool:
        return self.cmp == 0 and self.tr == 0


# The named levels (docs/testbed.md, "Jitter levels", derives each):
# - builtin: latency.profile.pi4_profile()'s excess, 0.2 of the Pi's 1.645 ns/FLOP over
#   its 0.8 minimum, and 40 ns/byte over 80 on the WiFi;
# - fig14b: the paper's Fig. 14(b) example, mu_cmp = 1e8 (10 ns/FLOP of excess over
#   the Pi's 1.316 ns minimum) and mu_tr = 1e7 (100 ns/byte over 80);
# - paper: fitted with the simulator to the paper's own uncoded (+68-79 % from n_f = 0
#   to 2) and CoCoI (slightly slower than uncoded at n_f = 0): latency.jitter_fit.
JITTER_LEVELS = {
    "none": Jitter(0.0, 0.0),
    "builtin": Jitter(0.25, 0.5),
    "fig14b": Jitter(10.0 / 1.316, 100.0 / 80.0),
    "paper": Jitter(PAPER_JITTER_CMP, PAPER_JITTER_TR),
}


def parse_jitter(text: str) -> Jitter:
    """A named level (none, builtin, fig14b, paper) or two ratios 'CMP/TR' (e.g. 0.5/1)."""
    text = str(text).strip()
    if text in JITTER_LEVELS:
        return JITTER_LEVELS[text]
    cmp, sep, tr = text.partition("/")
    usage = (
        f"jitter must be one of {', '.join(JITTER_LEVELS)} or two ratios CMP/TR "
        f"(mean excess over minimum, e.g. 0.5/1), got {text!r}"
    )
    try:
        if not sep:
            raise ValueError
        return Jitter(float(cmp), float(tr))
    except ValueError as exc:
        raise ValueError(str(exc) if "ratios >=" in str(exc) else usage) from None


DETECTIONS = ("immediate", "after", "timeout", "never")


@dataclass(frozen=True)
class Detection:
    """When the master learns of a failed worker (scenarios 2-3): ``kind`` one of
    DETECTIONS, ``value`` the seconds of ``after`` or the factor of ``timeout``."""

    kind: str = "immediate"
    value: float = 0.0

    @property
    def immediate(self) -> bool:
        return self.kind == "immediate"

    def noticed_after(self, first_reply_s: float | None) -> float | None:
        """Seconds from a failed subtask's send to its detection; None: not known yet
        (``timeout`` before any reply of the round arrived; ``never``)."""
        if self.kind == "immediate":
            return 0.0
        if self.kind == "after":
            return self.value
        if self.kind == "timeout" and first_reply_s is not None:
            return self.value * first_reply_s
        return None


def parse_detection(text: str) -> Detection:
    """'immediate', 'after=SECONDS', 'timeout=FACTOR' or 'never'."""
    text = str(text).strip()
    kind, sep, value = text.partition("=")
    usage = (
        "detection must be immediate, after=SECONDS, timeout=FACTOR (times the round's "
        f"first reply) or never, got {text!r}"
    )
    if kind not in DETECTIONS or bool(sep) != (kind in ("after", "timeout")):
        raise ValueError(usage)
    if not sep:
        return Detection(kind)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(usage) from None
    low = 1.0 if kind == "timeout" else 0.0
    if not (math.isfinite(number) and number >= low):
        raise ValueError(f"{usage}: the {kind} value must be a finite number >= {low:g}")
    return Detection(kind, number)


@dataclass(frozen=True)
class Scenario:
    """One level of one scenario, as the command line and sweep files name it."""

    kind: int = 0
    lambda_tr: float = 0.0
    failures: int = 0
    straggler_factor: float = PAPER_STRAGGLER_FACTOR
    straggler_prob: float = 0.8
    link_mbps: float = 0.0
    jitter: str = "none"  # a level of JITTER_LEVELS or 'CMP/TR'
    detection: str = "immediate"  # see parse_detection

    def __post_init__(self) -> None:
        if self.kind not in tuple(ScenarioKind):
            raise ValueError(f"scenario must be 0, 1, 2 or 3, got {self.kind}")
        check_levels(self.lambda_tr, self.failures, self.straggler_factor, self.straggler_prob)
        if self.link_mbps < 0:
            raise ValueError(f"link_mbps must be >= 0, got {self.link_mbps}")
        parse_jitter(self.jitter)
        parse_detection(self.detection)

    @property
    def device_jitter(self) -> Jitter:
        return parse_jitter(self.jitter)

    @property
    def failure_detection(self) -> Detection:
        """How failures are noticed; immediate where no failure is injected."""
        return parse_detection(self.detection) if self.has_failures else Detection()

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
        self.jitter = scenario.device_jitter
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
        slowdown = sc.straggler_factor if slow and rank == self.straggler else 1.0
        if not self.jitter.off:
            # eq. 7's excess: a ratio of each phase's minimum (the link time, or for
            # compute the worker's own measured time, which the slowdown multiplies)
            rng = np.random.default_rng([self.seed, 5, round_id, subtask, rank])
            e_rec, e_cmp, e_sen = rng.standard_exponential(3)
            nominal_in = link_in or transfer_s(bytes_in, NOMINAL_MBPS)
            nominal_out = link_out or transfer_s(bytes_out, NOMINAL_MBPS)
            link_in += self.jitter.tr * nominal_in * float(e_rec)
            link_out += self.jitter.tr * nominal_out * float(e_sen)
            slowdown *= 1.0 + self.jitter.cmp * float(e_cmp)
        return Fault(
            fail=fail.value,  # a plain str: it is pickled into the worker's Task
            recv_delay=link_in,
            send_delay=link_out + extra,
            slowdown=slowdown,
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
