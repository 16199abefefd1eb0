"""``python -m cocoi_mpi.run``: the MPI job's entry point, kept at the path every hostfile,
Slurm script and paper command uses. The code is in :mod:`cocoi_mpi.cli.run`."""

from .cli.run import main

if __name__ == "__main__":
    main()
