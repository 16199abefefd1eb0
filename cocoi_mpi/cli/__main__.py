"""``python -m cocoi_mpi.cli``: the ``cocoi`` command."""

from .commands import main

main()
