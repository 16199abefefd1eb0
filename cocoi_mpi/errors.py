"""Every exception cocoi_mpi raises on purpose, and the exit code it ends a command with.

Each class the package defines derives from one of the categories below (the class
stays in its own module, e.g. ``from cocoi_mpi.experiment.config import ConfigError``, and keeps
its builtin base, e.g. ValueError, for callers that catch that)::

    CocoiError                          catch this to catch them all
    ├── UserError            exit 2     what the command was given is wrong
    │   ConfigError, ResumeError, UnknownModelError, WeightsError, InputError,
    │   DataError, CodecError, BlockError
    ├── ResultError          exit 1     a trace (or its parts) cannot be used
    │   TraceError, MergeError, TimelineError, TraceFitError
    ├── RunError             exit 1     the run failed
    │   WorkerError, ShutdownTimeout, RoundShortfall, TestbedError
    ├── Stopped              exit 130 (SIGINT) / 143 (SIGTERM)
    │   Interrupted
    └── InternalError        no exit code: never meant to reach the user
        NotSplittable, SetupAborted, DecodeError, learning._Stop

The ``cocoi`` commands (cocoi_mpi.cli.common.CocoiGroup) print one ``cocoi: error: <message>``
line for any of them with a code and exit with it. The MPI job (``python -m cocoi_mpi.run``)
does the same for a UserError met before the ranks exchange anything; an error during
the run ends the job with exit 1 whatever its class (130/143 when stopped by a
signal), as every rank has to be stopped first (cocoi_mpi.cli.run.exit_code_for).
"""

from __future__ import annotations

__all__ = [
    "CocoiError",
    "InternalError",
    "ResultError",
    "RunError",
    "Stopped",
    "UserError",
    "error_line",
]


class CocoiError(Exception):
    """Base of every exception cocoi_mpi defines. Its message is one line that says
    what is wrong (a WorkerError adds the worker's stack on the lines after it).

    ``exit_code``: what a command exits with when this error ends it; None for an
    internal error, which a command lets through as a traceback (a bug if it shows)."""

    exit_code: int | None = 1


class UserError(CocoiError):
    """Exit 2: what the command was given is wrong, and nothing was done with it: an
    option or config file setting, a model name, a weights, input, dataset or codec
    file, a trace --resume must not continue. The message names the setting or file;
    fix it and run again."""

    exit_code = 2


class ResultError(CocoiError):
    """Exit 1: a trace, or the parts of a sweep, cannot be read, merged, fitted or
    drawn as asked (truncated or foreign file, parts that do not belong together, a
    request that is not in it). The message names the file. (The commands that read
    traces, report, merge and fit, have always exited 1 here, not 2.)"""

    exit_code = 1


class RunError(CocoiError):
    """Exit 1: the run itself failed: a worker raised, too few workers were left to
    decode a round (--on-shortfall error), workers did not stop in time, the CPU
    emulation cannot be set up on this machine. The trace keeps what was done."""

    exit_code = 1


class Stopped(CocoiError):
    """Exit 128 + the signal: SIGINT (130) or SIGTERM (143) asked the run to stop, and
    it did at the next safe point; the trace is closed as incomplete. The message says
    which signal ("stopped by SIGTERM")."""

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 143 if "SIGTERM" in str(self) else 130


class InternalError(CocoiError):
    """No exit code: raised and caught inside the package to say "take the other path"
    (a conv that runs on the master, a worker that leaves before set-up, the end of a
    probing forward pass) or that code was called in the wrong order. None should
    reach the user; if one does, the command shows its traceback, as for any bug."""

    exit_code = None


def error_line(message: object) -> str:
    """The one line a command prints on stderr when an error ends it."""
    return f"cocoi: error: {message}"
