"""`cocoi`: the commands around a run (report now; plan, simulate, train later)."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CoCoI coded inference tools. The MPI job itself: mpirun ... python -m cocoi_mpi.run"""


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False),
    help="Also write requests.csv, rounds.csv, subtasks.csv into this folder.",
)
def report(path: str, csv_dir: str | None) -> None:
    """Summarise an HDF5 trace (also one from a killed job)."""
    from .report import TraceError, report_main

    try:
        report_main(path, csv_dir)
    except TraceError as exc:
        click.echo(f"cocoi: error: {exc}", err=True)
        sys.exit(1)


@main.command()
def info() -> None:
    """Versions of python, torch, mpi4py, the MPI library, h5py and HDF5."""
    from .runtime.job import versions

    for key, value in versions().items():
        click.echo(f"{key:12s} {value}")


@main.command()
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of subtasks (workers) the code spreads a layer over.",
)
@click.option(
    "--k",
    "ks",
    type=click.IntRange(min=1),
    multiple=True,
    help="Sources per layer; repeat for several. [default: every k in 1..n]",
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    help="Code to measure (rotation, vandermonde); repeat for several. [default: all]",
)
@click.option(
    "--systematic/--no-systematic",
    default=False,
    show_default=True,
    help="Measure the systematic variant (first k subtasks carry the sources).",
)
@click.option("--markdown", is_flag=True, help="Print a markdown table (for docs/).")
def codes(
    n: int, ks: tuple[int, ...], codes: tuple[str, ...], systematic: bool, markdown: bool
) -> None:
    """Worst-case decode error over all k-subsets of n subtasks, float32 and float64."""
    from .codes import CODES
    from .codes.analysis import error_table, format_table
    from .config import RunConfig

    if any(k > n for k in ks):
        raise click.BadParameter(f"every k must be at most n={n}", param_hint="--k")
    unknown = sorted(set(codes) - set(CODES))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {CODES}", param_hint="--code")
    rows = error_table(n, sorted(set(ks)) or range(1, n + 1), codes or CODES, systematic=systematic)
    click.echo(format_table(rows, RunConfig.tolerance, markdown=markdown))


if __name__ == "__main__":
    main()
