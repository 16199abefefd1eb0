"""``cocoi``: the command group, with every command it has. The commands are in the modules
beside this one: report and merge (trace_commands), plan, simulate, predict and fit
(latency_commands), codes, train and accuracy (code_commands), convert (file_commands),
info and testbed (machine_commands); what they share is in common."""

from __future__ import annotations

import click

from .code_commands import accuracy, codes, train
from .common import CocoiGroup
from .file_commands import convert
from .latency_commands import fit, plan, predict, simulate
from .machine_commands import info, testbed
from .trace_commands import merge, report


@click.group(cls=CocoiGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """CoCoI coded inference tools. The MPI job itself: mpirun ... python -m cocoi_mpi.run"""


for _command in (
    report,
    merge,
    testbed,
    info,
    codes,
    plan,
    simulate,
    predict,
    fit,
    train,
    accuracy,
    convert,
):
    main.add_command(_command)


if __name__ == "__main__":
    main()
