"""One exception hierarchy (cocoi_mpi.errors) and one error handler in the CLI (issue 17).

Every exception class the package defines derives from one category of CocoiError
(found by importing every module, so a new class without one fails here); the codes
are those documented in errors.py; and the `cocoi` group prints one ``cocoi: error:``
line and exits with the code of the error a command lets out.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import cocoi_mpi
from cocoi_mpi import errors
from cocoi_mpi.cli.commands import main
from cocoi_mpi.cli.common import CocoiGroup, reported_as
from cocoi_mpi.errors import (
    CocoiError,
    InternalError,
    ResultError,
    RunError,
    Stopped,
    UserError,
)

CATEGORIES = (UserError, ResultError, RunError, Stopped, InternalError)

# As errors.py's docstring lists them: (module, class) -> category.
DOCUMENTED = {
    ("cocoi_mpi.experiment.config", "ConfigError"): UserError,
    ("cocoi_mpi.experiment.resume", "ResumeError"): UserError,
    ("cocoi_mpi.models", "UnknownModelError"): UserError,
    ("cocoi_mpi.models", "WeightsError"): UserError,
    ("cocoi_mpi.models.inputs", "InputError"): UserError,
    ("cocoi_mpi.models.data", "DataError"): UserError,
    ("cocoi_mpi.learned.coded_block", "CodecError"): UserError,
    ("cocoi_mpi.geometry.blocks", "BlockError"): UserError,
    ("cocoi_mpi.traces.reader", "TraceError"): ResultError,
    ("cocoi_mpi.traces.merge", "MergeError"): ResultError,
    ("cocoi_mpi.analysis.timeline", "TimelineError"): ResultError,
    ("cocoi_mpi.latency.fit", "TraceFitError"): ResultError,
    ("cocoi_mpi.runtime.transport", "WorkerError"): RunError,
    ("cocoi_mpi.runtime.ending", "ShutdownTimeout"): RunError,
    ("cocoi_mpi.engine.rows", "RoundShortfall"): RunError,
    ("cocoi_mpi.testbed.cgroups", "TestbedError"): RunError,
    ("cocoi_mpi.runtime.transport", "Interrupted"): Stopped,
    ("cocoi_mpi.geometry.conv", "NotSplittable"): InternalError,
    ("cocoi_mpi.runtime.worker", "SetupAborted"): InternalError,
    ("cocoi_mpi.codes.base", "DecodeError"): InternalError,
    ("cocoi_mpi.learned.coded_block", "_Stop"): InternalError,
}

# Builtin bases that callers catch (except ValueError / RuntimeError): kept.
BUILTIN_BASE = {
    "ConfigError": ValueError,
    "ResumeError": ValueError,
    "UnknownModelError": ValueError,
    "WeightsError": ValueError,
    "InputError": ValueError,
    "DataError": ValueError,
    "CodecError": ValueError,
    "BlockError": ValueError,
    "TraceError": ValueError,
    "MergeError": ValueError,
    "TimelineError": ValueError,
    "TraceFitError": ValueError,
    "NotSplittable": ValueError,
    "WorkerError": RuntimeError,
    "ShutdownTimeout": RuntimeError,
    "RoundShortfall": RuntimeError,
    "TestbedError": RuntimeError,
    "Interrupted": RuntimeError,
    "DecodeError": RuntimeError,
}


def package_exceptions() -> dict[tuple[str, str], type[BaseException]]:
    """Every exception class defined in a module of cocoi_mpi (not re-exports)."""
    found = {}
    for info in pkgutil.walk_packages(cocoi_mpi.__path__, "cocoi_mpi."):
        if info.name.endswith(".__main__"):  # runs the CLI on import
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[(module.__name__, name)] = obj
    return found


@pytest.fixture(scope="module")
def found():
    return package_exceptions()


def test_the_walk_finds_the_classes(found):
    """The discovery works: at least the classes known today, and errors.py's own."""
    assert set(DOCUMENTED) <= set(found)
    assert ("cocoi_mpi.errors", "CocoiError") in found


def test_every_exception_class_derives_from_a_category(found):
    loose = [
        f"{module}.{name}"
        for (module, name), cls in found.items()
        if cls not in (CocoiError, *CATEGORIES) and not issubclass(cls, CATEGORIES)
    ]
    assert not loose, f"derive these from a category in cocoi_mpi.errors: {loose}"


def test_each_class_is_in_its_documented_category(found):
    for key, category in DOCUMENTED.items():
        cls = found[key]
        assert issubclass(cls, category), f"{key}: {cls.__mro__}"
        others = [c for c in CATEGORIES if c is not category]
        assert not issubclass(cls, tuple(others)), f"{key} is in two categories"
        assert str(cls.__name__) in errors.__doc__, f"{key} missing from errors.py's list"


def test_builtin_bases_are_kept(found):
    by_name = {name: cls for (_, name), cls in found.items()}
    for name, base in BUILTIN_BASE.items():
        assert issubclass(by_name[name], base), name


@pytest.mark.parametrize(
    "category, code",
    [(CocoiError, 1), (UserError, 2), (ResultError, 1), (RunError, 1), (InternalError, None)],
)
def test_exit_codes(category, code):
    assert category("x").exit_code == code


def test_every_documented_class_has_its_category_code(found):
    for key, category in DOCUMENTED.items():
        if category is Stopped:
            continue
        assert found[key].exit_code == category.exit_code, key


@pytest.mark.parametrize("signal, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_by_signal_exits_128_plus_its_number(found, signal, code):
    interrupted = found[("cocoi_mpi.runtime.transport", "Interrupted")]
    assert interrupted(f"stopped by {signal}").exit_code == code


def test_imports_from_the_old_places_still_work():
    from cocoi_mpi.analysis.report import TraceError
    from cocoi_mpi.experiment.config import ConfigError

    assert issubclass(ConfigError, UserError) and issubclass(TraceError, ResultError)


def test_error_line():
    assert errors.error_line("bad k") == "cocoi: error: bad k"


# --------------------------------------------------------------------------- the handler


def group_with(raise_: BaseException) -> click.Group:
    """A CocoiGroup with one command (in a sub-group, as `cocoi testbed check`) that
    prints a line and raises ``raise_``."""

    @click.group(cls=CocoiGroup)
    def top() -> None:
        """The top group: no work of its own."""

    @top.group()
    def sub() -> None:
        """A sub-group, as `cocoi testbed`."""

    @sub.command()
    def go() -> None:
        click.echo("before")
        raise raise_

    return top


@pytest.mark.parametrize(
    "exc, code",
    [
        (UserError("bad --k: 9"), 2),
        (ResultError("t.h5: truncated HDF5 file"), 1),
        (RunError("worker rank 2 failed"), 1),
    ],
)
def test_handler_prints_one_line_and_exits_with_the_code(exc, code):
    result = CliRunner().invoke(group_with(exc), ["sub", "go"])
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    assert result.stderr == f"cocoi: error: {exc}\n"
    assert result.stdout == "before\n"


def test_handler_uses_the_project_classes_codes():
    from cocoi_mpi.experiment.config import ConfigError
    from cocoi_mpi.traces.reader import TraceError

    for exc, code in ((ConfigError("k must be >= 1"), 2), (TraceError("x.h5: no such file"), 1)):
        result = CliRunner().invoke(group_with(exc), ["sub", "go"])
        assert result.exit_code == code and result.stderr == f"cocoi: error: {exc}\n"


@pytest.mark.parametrize("exc", [InternalError("a bug"), KeyError("other")])
def test_handler_lets_internal_and_other_errors_through(exc):
    result = CliRunner().invoke(group_with(exc), ["sub", "go"])
    assert result.exception is exc and result.exit_code == 1
    assert "cocoi: error" not in result.output


def test_reported_as_keeps_the_message_and_takes_the_code():
    def fails(raise_: BaseException):
        with reported_as(UserError, ValueError):
            raise raise_

    with pytest.raises(UserError, match="^shape mismatch$") as info:
        fails(ValueError("shape mismatch"))
    assert type(info.value) is UserError and isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ResultError):  # a class with a code of its own keeps it
        fails(type("Odd", (ResultError, ValueError), {})("x"))
    with pytest.raises(TypeError):  # not listed: untouched
        fails(TypeError("y"))


def test_the_cocoi_command_is_a_cocoi_group():
    assert isinstance(main, CocoiGroup)


def test_cli_train_without_weights_is_a_user_error(tmp_path):
    """An error raised by cli.py itself: one line, exit 2 (as before issue 17)."""
    out = tmp_path / "c.pt"
    result = CliRunner().invoke(main, ["train", "--block", "features.3", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines == ["cocoi: error: a codec needs --weights (the trained base model) and --block"]


def test_cli_merge_of_missing_parts_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "o.h5"), str(tmp_path / "p.h5")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    (line,) = result.stderr.splitlines()
    assert line.startswith("cocoi: error: ") and "p.h5" in line


# --------------------------------------------------------------------------- the MPI job


class FakeWorld:
    """world.Abort as exit_code_for calls it (the real one never returns)."""

    def Abort(self, code: int) -> None:
        raise SystemExit(f"Abort({code})")


def job_error(found, module: str, name: str, *args):
    return found[(module, name)](*args)


@pytest.mark.parametrize(
    "module, name, message, rank, code, line",
    [
        (
            "cocoi_mpi.runtime.transport",
            "Interrupted",
            "stopped by SIGTERM",
            0,
            143,
            "cocoi: error: stopped by SIGTERM; the trace is closed as incomplete",
        ),
        (
            "cocoi_mpi.runtime.transport",
            "Interrupted",
            "stopped by SIGINT",
            0,
            130,
            "cocoi: error: stopped by SIGINT; the trace is closed as incomplete",
        ),
        (
            "cocoi_mpi.engine.rows",
            "RoundShortfall",
            "round 3 cannot decode",
            0,
            1,
            "cocoi: error: round 3 cannot decode (--on-shortfall error)",
        ),
        (
            "cocoi_mpi.runtime.transport",
            "WorkerError",
            "worker rank 2: fault drill",
            0,
            1,
            "cocoi: error: WorkerError: worker rank 2: fault drill",
        ),
        # A UserError met during the run: its message alone, but exit 1 (ranks started).
        ("cocoi_mpi.models", "WeightsError", "w.pt: not a PyTorch file", 0, 1, None),
        ("cocoi_mpi.models.inputs", "InputError", "x.npy: 1 NaN", 2, 1, None),
    ],
)
def test_run_exit_codes_during_the_job(found, capsys, module, name, message, rank, code, line):
    """cocoi_mpi.cli.run keeps its own rules after start-up (one line from rank 0, exit 1
    but for a stop by signal); the classes now carry the same codes."""
    from cocoi_mpi.cli.run import exit_code_for

    assert exit_code_for(job_error(found, module, name, message), FakeWorld(), rank) == code
    err = capsys.readouterr().err
    if line is not None:
        assert err == line + "\n"
    elif rank == 0:
        assert err == f"cocoi: error: {message}\n"
    else:
        assert err == f"cocoi: error on rank {rank}: {message}\n"


def test_run_other_exceptions_name_their_type(capsys):
    from cocoi_mpi.cli.run import exit_code_for

    assert exit_code_for(KeyError("x"), FakeWorld(), 0) == 1
    assert capsys.readouterr().err == "cocoi: error: KeyError: 'x'\n"


def test_run_shutdown_timeout_aborts_with_1(found, capsys):
    from cocoi_mpi.cli.run import exit_code_for

    stuck = job_error(found, "cocoi_mpi.runtime.ending", "ShutdownTimeout", "2 replies open")
    with pytest.raises(SystemExit, match=r"Abort\(1\)"):
        exit_code_for(stuck, FakeWorld(), 0)
    err = capsys.readouterr().err
    assert err == "cocoi: error: 2 replies open; the trace is written; aborting the job\n"
