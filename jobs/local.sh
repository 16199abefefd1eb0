#!/usr/bin/env bash
# Run the CoCoI job on this machine: 1 master + 10 workers (11 ranks) by default.
#   ./jobs/local.sh                         VGG16, seeded weights and input
#   ./jobs/local.sh --model resnet18 --requests 5
#   NP=3 ./jobs/local.sh --model lenet5     a smaller world
# More ranks than cores is fine here (--oversubscribe); --bind-to none keeps ranks
# from being pinned to the same core.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec mpirun -np "${NP:-11}" --oversubscribe --bind-to none python -m cocoi_mpi.run "$@"
