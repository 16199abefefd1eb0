#!/usr/bin/env bash
# Run every test: serial units and end-to-end mpirun tests, then the in-process MPI
# tests (pytest-mpi) under mpirun. Arguments go to the serial pytest run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
ruff check cocoi_mpi tests
python -m pytest -rs "$@"
mpirun -np "${MPI_TEST_NP:-4}" --oversubscribe --bind-to none \
    python -m pytest --with-mpi -m mpi -q -p no:cacheprovider tests/test_mpi_runtime.py
