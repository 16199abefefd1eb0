"""Progress bars for a person at a terminal, plain lines for everything else.

Multi-request runs, sweeps and training show one tqdm bar on stderr when it reaches a
terminal. A batch job's log (Slurm, nohup, a pipe) gets the plain per-item lines
instead: carriage-return redraws make a log file unreadable, and the lines are what
scripts grep. ``--quiet`` turns both off.

Under Open MPI's mpirun a rank's stdout is a pty and its stderr a pipe, whatever
mpirun's own output is, so ``isatty()`` says nothing there; the answer is mpirun's
(the parent's) descriptor, read from /proc. No mpi4py here: only the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

TTY_PREFIXES = ("/dev/pts/", "/dev/tty", "/dev/console")


def _launcher_fd(stream: TextIO) -> str | None:
    """/proc path of the launcher's descriptor a rank's stdout/stderr is forwarded to,
    or None when this process is not an Open MPI rank (its own isatty() holds)."""
    if "OMPI_COMM_WORLD_RANK" not in os.environ:
        return None
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # StringIO, a closed stream
        return None
    return f"/proc/{os.getppid()}/fd/{fd}" if fd in (1, 2) else None


def on_terminal(stream: TextIO) -> bool:
    """Whether what is written to ``stream`` lands on a terminal (see the module doc)."""
    path = _launcher_fd(stream)
    if path is not None:
        try:
            return os.readlink(path).startswith(TTY_PREFIXES)
        except OSError:  # not Linux, or the parent is not ours to look at
            return False
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _columns(stream: TextIO) -> int | None:
    """Width of the launcher's terminal under mpirun (tqdm cannot ask a pipe; without
    it a long postfix wraps and every redraw adds a line); None: tqdm asks the stream."""
    path = _launcher_fd(stream)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.get_terminal_size(fd).columns or None
    except OSError:
        return None
    finally:
        os.close(fd)


def progress(
    total: int,
    desc: str | None = None,
    quiet: bool = False,
    stream: TextIO | None = None,
    **options,
) -> tqdm:
    """A tqdm bar over ``total`` items on ``stream`` (default: sys.stderr when called).

    With ``quiet``, or when the stream does not reach a terminal, the bar is disabled:
    the same object and interface (update, set_postfix_str, close, with-block) doing
    nothing, so callers need no second code path. ``options`` go to tqdm (unit, initial).
    """
    stream = sys.stderr if stream is None else stream
    shown = not quiet and on_terminal(stream)
    ncols = _columns(stream) if shown else None
    return tqdm(total=total, desc=desc, file=stream, disable=not shown, ncols=ncols, **options)


def echo_line(bar: tqdm, echo: Callable[[str], object], line: str, stdout=None) -> None:
    """Print one per-item line beside ``bar``, without printing things twice.

    A disabled bar: the line as always (log files keep one line per item). A shown bar
    whose lines would land on the same screen (stdout a terminal too): the line is
    skipped, the bar's postfix carries the gist and the trace file has the rest. A shown
    bar with stdout going elsewhere (``> log``, ``| tee``): the line goes out with the
    bar cleared around it, so neither is broken.
    """
    if bar.disable:
        echo(line)
        return
    stdout = sys.stdout if stdout is None else stdout
    if on_terminal(stdout):
        return
    with tqdm.external_write_mode(file=stdout):
        echo(line)
