"""`mpirun -np N python -m cocoi_mpi.run [OPTIONS]`: the CoCoI batch job.

Every rank parses the same options; rank 0 alone prints. A user error ends every
rank with exit code 2 before any message is exchanged (with --resume, rank 0's verdict
on the old trace is the one message first); a failure during the run ends the job with
one error line from rank 0 and a non-zero exit, never a hang.
"""

from __future__ import annotations

import os
import sys

# Many ranks share few cores: numpy's BLAS threads would fight the torch threads that
# set_threads() sizes, and made LT's small SVDs 50x slower. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from ..codes import CODES, RUN_SCHEMES
from ..errors import RunError, UserError, error_line
from ..experiment.config import build_config, check_launch


def error(rank: int, message: str) -> None:
    if rank == 0:
        click.echo(error_line(message), err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of settings (keys as the long options, e.g. k = 4); CLI wins.",
)
@click.option("--model", help="vgg16, resnet18, lenet5, or package.module:factory. [vgg16]")
@click.option("--weights", help="state_dict file (.pt) to load into the model.")
@click.option("--input", "input_", help=".npy/.pt tensor C×H×W or N×C×H×W; default: seeded.")
@click.option("--requests", type=int, help="Inference requests to serve. [1]")
@click.option("--n", type=int, help="Workers to use. [world size - 1]")
@click.option(
    "--k",
    help="Source pieces per layer (any k of n decode): an integer, 'auto' (k° of the "
    "latency model per layer) or 'star' (k* by Monte Carlo). With auto/star a layer is "
    "distributed only if predicted faster than on the master. [n - 2]",
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False),
    help="Latency profile JSON (cocoi fit) for --k auto/star. [built-in Pi 4B + WiFi]",
)
@click.option(
    "--scheme",
    type=click.Choice(RUN_SCHEMES),
    help="cocoi (MDS-coded), uncoded (n pieces, failed ones re-sent), replication "
    "(n/2 pieces x 2 copies), lt-kl/lt-ks (LT codes) or learned (conv blocks with "
    "trained codecs, --codec). [cocoi]",
)
@click.option(
    "--scenario",
    type=click.IntRange(0, 3),
    help="0 none, 1 straggling, 2 failures, 3 failures + one slow worker (paper VI). [0]",
)
@click.option(
    "--lambda-tr",
    "lambda_tr",
    type=float,
    help="Scenario 1: extra delay ~ Exp(lambda_tr x transmission time). [0]",
)
@click.option("--failures", type=int, help="Scenarios 2-3: workers failing per round. [0]")
@click.option(
    "--straggler-factor",
    "straggler_factor",
    type=float,
    help="Scenario 3: compute slowdown of the straggler. [85.2/50.8]",
)
@click.option(
    "--straggler-prob",
    "straggler_prob",
    type=float,
    help="Scenario 3: chance the straggler is slow in a round. [0.8]",
)
@click.option(
    "--link-mbps",
    "link_mbps",
    type=float,
    help="Emulate a link of this bandwidth on every transfer; 0 = off. [0]",
)
@click.option(
    "--code",
    type=click.Choice(CODES),
    help="Generator: stable (systematic, searched for conditioning; one piece per "
    "subtask), rotation (complex roots of unity as 2x2 rotations, two half pieces) or "
    "vandermonde (the paper's eq. 3). [stable]",
)
@click.option(
    "--systematic/--no-systematic",
    default=None,
    help="Systematic generator: skip decoding when the first k arrive first.",
)
@click.option("--seed", type=int, help="Seed of the random weights and inputs. [0]")
@click.option("--out", help="HDF5 file to write (overwritten). [results/<name>.h5]")
@click.option("--name", help="Run name for the default output path.")
@click.option(
    "--check/--no-check",
    default=None,
    help="Compare with a local forward pass on the master (exit 3 if it differs).",
)
@click.option("--tolerance", type=float, help="Max |coded - local| / max|logit|. [1e-4]")
@click.option("--threads", type=int, help="Torch threads per rank; 0 = cores / local ranks.")
@click.option("--silent", help="Worker ranks that never reply, e.g. 2,5 (testing k-of-n).")
@click.option(
    "--codec",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Learned-code checkpoint (cocoi train) for --scheme learned; repeat, one per block.",
)
@click.option(
    "--hybrid/--no-hybrid",
    default=None,
    help="Learned scheme: run the model's last conv block on the master (Non-linear*).",
)
@click.option(
    "--data",
    help="Serve a dataset's test split (digits, mnist:DIR, cifar10:DIR) and report accuracy.",
)
@click.option(
    "--round-timeout",
    "round_timeout",
    help="Seconds a round waits before its missing workers count as failed; 'auto' "
    "(max(60 s, 20x the plan's prediction)) or 'off'. [auto]",
)
@click.option(
    "--on-shortfall",
    "on_shortfall",
    type=click.Choice(["local", "error"]),
    help="When too few live workers can answer a round: compute it on the master "
    "(flagged in the trace) or stop with an error. [local]",
)
@click.option(
    "--crash",
    help="Fault drill: RANK@REQUEST[:kill|exit|raise|hang=S], comma-separated; the "
    "worker really dies (SIGKILL / exit), raises, or hangs S seconds. Survive deaths "
    "with mpirun --with-ft ulfm.",
)
@click.option(
    "--part",
    help="I/N: serve only every N-th cell of the sweep, from cell I (0-based); one "
    "Slurm array task each, then cocoi merge. See jobs/slurm/sweep_array.sbatch.",
)
@click.option(
    "--cpu-share",
    type=float,
    help="Emulated testbed: confine each worker to this many cores (cgroups, e.g. 0.15), "
    "so its speed does not depend on the others. 0: off. [0]",
)
@click.option(
    "--master-cpu-share",
    type=float,
    help="Emulated testbed: confine the master too (cores). 0: unconfined. [0]",
)
@click.option(
    "--resume/--no-resume",
    default=None,
    help="Go on with the trace at --out that a cut-off run of the same config left: its "
    "complete cells are kept, the rest served (nothing to do if it is complete).",
)
@click.option("--quiet/--no-quiet", default=None, help="Only the summary lines.")
def main(config_file, input_, **options) -> None:
    """Coded distributed CNN inference: rank 0 is the master, ranks 1..n the workers."""
    from ..runtime.start import init_world

    world = init_world()
    rank = world.Get_rank()
    try:
        check_launch(world.Get_size(), os.environ)
        options["codec"] = options["codec"] or None  # not given: keep the file's value
        cfg = build_config(config_file, {**options, "input": input_}, world.Get_size())
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
    from ..engine.core import RoundShortfall
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
