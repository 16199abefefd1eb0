"""What every ``cocoi`` command module shares: the group class that ends a command on an error
with one line and its exit code, ``reported_as`` for errors from outside the package, and
parsing a comma-separated list of integers."""

from __future__ import annotations

import contextlib
import sys

import click

from ..errors import CocoiError, error_line


class CocoiGroup(click.Group):
    """The one place where an error ends a command. A CocoiError with an exit code that
    a command (or a sub-group's command) lets out prints one ``cocoi: error: MESSAGE``
    line on stderr, and the command exits with the error's code (cocoi_mpi.errors: 2 for
    a UserError, 1 for a ResultError or RunError). Internal errors and any other
    exception go on as a traceback: a bug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CocoiError as exc:
            if exc.exit_code is None:
                raise
            click.echo(error_line(exc), err=True)
            sys.exit(exc.exit_code)


@contextlib.contextmanager
def reported_as(error: type[CocoiError], *types: type[BaseException]):
    """Exceptions of ``types`` from outside the package (torch's ValueError, a missing
    matplotlib) end the command as an ``error``: the same message, that class's exit
    code. A CocoiError among them that has a code of its own keeps it."""
    try:
        yield
    except types as exc:
        if isinstance(exc, CocoiError) and exc.exit_code is not None:
            raise
        raise error(str(exc)) from exc


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        msg = f"expected integers like 3,224,224, got {text!r}"
        raise click.BadParameter(msg, param_hint=what) from None
