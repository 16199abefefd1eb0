#!/usr/bin/env bash
# Run every test: serial units and end-to-end mpirun tests, the reliability tests with
# CPU hogs beside them, then the in-process MPI tests (pytest-mpi) under mpirun.
# Arguments go to both serial pytest runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
ruff check cocoi_mpi tests
python -m pytest -rs --ignore=tests/test_reliability.py "$@"
# Deaths, hangs and signals on a loaded machine, as users' shared nodes are: the
# reliability tests run with RELIABILITY_HOGS (default 2) busy processes beside them.
python -m pytest -rs --hogs "${RELIABILITY_HOGS:-2}" tests/test_reliability.py "$@"
mpirun -np "${MPI_TEST_NP:-4}" --oversubscribe --bind-to none \
    python -m pytest --with-mpi -m mpi -q -p no:cacheprovider tests/test_mpi_runtime.py
