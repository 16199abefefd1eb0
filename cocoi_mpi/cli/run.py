"""`mpirun -np N python -m cocoi_mpi.run [OPTIONS]`: the CoCoI batch job.

Every rank parses the same options; rank 0 alone prints. A user error ends every
rank with exit code 2 before any message is exchanged (with --resume, rank 0's verdict
on the old trace is the one message first); a failure during the run ends the job with
one error line from rank 0 and a non-zero exit, never a hang.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Many ranks share few cores: numpy's BLAS threads would fight the torch threads that
# set_threads() sizes, and made LT's small SVDs 50x slower. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from ..errors import RunError, UserError, error_line
from ..experiment.config import build_config, check_launch
from ..experiment.options import OPTIONS, Option


def error(rank: int, message: str) -> None:
    if rank == 0:
        click.echo(error_line(message), err=True)


def click_option(option: Option) -> Callable:
    """The click option of one run option of the table."""
    if option.switch:
        flag = f"{option.flag}/--no-{option.flag[2:]}"
        return click.option(flag, option.name, default=None, help=option.help_text)
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.bounds:
        kind = click.IntRange(*option.bounds)
    elif option.path:
        kind = click.Path(dir_okay=False)
    else:
        kind = option.cli_type
    return click.option(
        option.flag, option.name, type=kind, multiple=option.multiple, help=option.help_text
    )


def run_options(command: Callable) -> Callable:
    """Every command-line option of experiment.options.OPTIONS, in its order; not given,
    each is None (a switch too), so a config file's value or the default stands."""
    for option in reversed(OPTIONS):
        if option.cli:
            command = click_option(option)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@run_options
def main(config, **options) -> None:
    """Coded distributed CNN inference: rank 0 is the master, ranks 1..n the workers."""
    from ..runtime.start import init_world

    world = init_world()
    rank = world.Get_rank()
    try:
        check_launch(world.Get_size(), os.environ)
        for option in OPTIONS:  # a repeatable option not given: keep the file's value
            if option.multiple and not options[option.name]:
                options[option.name] = None
        cfg = build_config(config, options, world.Get_size())
    except UserError as exc:  # a ConfigError: every rank sees it, rank 0 says it
        error(rank, str(exc))
        sys.exit(exc.exit_code)
    if cfg.resume and (code := settle_resume(cfg, world, rank)) is not None:
        sys.exit(code)
    code, deaths_reported = launch(cfg, world, rank)
    from ..runtime.job import guard_finalize

    guard_finalize(code, deaths_reported)
    sys.exit(code)


def settle_resume(cfg, world, rank: int) -> int | None:
    """--resume: rank 0 looks at the old trace before any work and tells every rank (one
    bcast, as the file may exist on rank 0's host only) whether to run (None), that
    nothing is left to do (0), or that the trace is refused (2, one line)."""
    verdict = resume_verdict(cfg) if rank == 0 else None
    code, lines, message = world.bcast(verdict, root=0)
    for line in lines if rank == 0 else ():
        click.echo(line)
    if message:
        error(rank, message)
    return code


def resume_verdict(cfg) -> tuple[int | None, list[str], str]:
    """(exit code or None, lines to print, error message) for settle_resume."""
    from ..experiment.resume import ResumeError, check_resume
    from ..runtime.plans import run_cells
    from ..runtime.prepare import output_path

    try:
        code, lines = check_resume(cfg, output_path(cfg), run_cells(cfg))
    except (ResumeError, OSError) as exc:
        return ResumeError.exit_code, [], str(exc)
    except Exception as exc:  # every rank waits for the verdict: never leave them hanging
        return UserError.exit_code, [], f"--resume: {type(exc).__name__}: {exc}"
    return code, lines, ""


def launch(cfg, world, rank: int) -> tuple[int, bool]:
    """Run the job: (exit code, whether the master reported a dead rank)."""
    from ..runtime.job import run_job

    echo = click.echo if rank == 0 else (lambda *a, **k: None)
    try:
        return run_job(cfg, None, echo)
    except Exception as exc:
        return exit_code_for(exc, world, rank), False


def exit_code_for(exc: Exception, world, rank: int) -> int:
    """One line on rank 0 (a worker's own error: one line of its own) and the exit code.

    Exit 1 whatever the class (a UserError too: the ranks have started), except for a
    stop by signal (Interrupted: 130 or 143)."""
    from ..engine.rows import RoundShortfall
    from ..runtime.master import Interrupted, ShutdownTimeout

    if isinstance(exc, ShutdownTimeout):  # requests still open: only an abort ends every rank
        error(rank, f"{exc}; the trace is written; aborting the job")
        world.Abort(exc.exit_code)
    if isinstance(exc, Interrupted):
        error(rank, f"{exc}; the trace is closed as incomplete")
        return exc.exit_code
    if isinstance(exc, RoundShortfall):
        error(rank, f"{exc} (--on-shortfall error)")
        return exc.exit_code
    message = f"{type(exc).__name__}: {exc}" if not is_user_error(exc) else str(exc)
    if rank == 0:
        error(rank, message)
    else:  # a worker failing outside a task is rare and worth one line of its own
        click.echo(f"cocoi: error on rank {rank}: {message}", err=True)
    return RunError.exit_code


def is_user_error(exc: Exception) -> bool:
    """Errors whose message is the whole story (bad model, weights, input)."""
    return isinstance(exc, UserError | ValueError | FileNotFoundError)


if __name__ == "__main__":
    main()
