"""The closed sets of names the runtime writes into traces and messages, in one place.

Subtask statuses, fault and crash kinds are ``StrEnum``s: a member *is* its string
(``Status.USED == "used"``, and ``str()``, f-strings and ``str.encode`` give the value,
not ``Status.USED``), so traces, pickled control messages and HDF5 columns stay
byte-identical whether a module writes the member or the literal. Scenario kinds are
an ``IntEnum`` for the same reason (``ScenarioKind.FAILURES == 2``).

Pure: no numpy, no torch.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

# The two scheme names the analysis compares (both in codes.registry; tests check it):
# every reduction is against the uncoded baseline, as in the paper's figures, and
# Fig. 5 sets CoCoI's per-layer split beside it.
BASELINE_SCHEME = "uncoded"
PAPER_SCHEME = "cocoi"


class Status(StrEnum):
    """A subtask row's status in the trace's ``subtasks`` table.

    The first six are what a trace records (``traces.SUBTASK_STATUSES``, same order;
    docs/hdf5.md). ``REPLIED`` is the master's transient mark for a reply that arrived,
    which becomes ``USED`` or ``LATE`` once its round decodes."""

    USED = "used"  # decoded from
    LATE = "late"  # arrived after its round decoded, or surplus in the same wake-up
    SKIPPED = "skipped"  # the worker skipped it: its round was already decoded
    FAILED = "failed"  # a FAILED notice (scenarios 2-3), or a --silent worker's
    DEAD = "dead"  # the worker died (ULFM failed the request, or it was known dead)
    TIMEOUT = "timeout"  # still open at the round's deadline
    REPLIED = "replied"  # transient: arrived, not yet known whether it was used


class FaultKind(StrEnum):
    """How an injected failure shows (``scenarios.Fault.fail``, ``protocol.Task.fail``)."""

    NONE = ""  # no failure
    SILENT = "silent"  # the worker never replies (--silent ranks)
    NOTICE = "notice"  # the worker tells the master it failed, as the paper's do


class CrashKind(StrEnum):
    """A fault drill's way of dying (``--crash RANK@REQUEST[:KIND]``, ``protocol.Task.crash``)."""

    KILL = "kill"  # SIGKILL
    EXIT = "exit"  # exit without a signal
    HANG = "hang"  # stop answering for hang_s seconds
    RAISE = "raise"  # raise an exception in the subtask


class ScenarioKind(IntEnum):
    """The paper's scenarios (section VI), as ``--scenario`` and sweep files number them."""

    NONE = 0  # nothing injected
    STRAGGLING = 1  # extra transmission delay ~ Exp(lambda_tr x T_tr)
    FAILURES = 2  # n_f random workers fail in each round
    FAILURES_AND_STRAGGLER = 3  # scenario 2 plus one high-probability straggler
