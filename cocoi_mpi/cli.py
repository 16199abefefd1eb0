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


if __name__ == "__main__":
    main()
