#!/usr/bin/env bash
# The reliability soak (issue 6): many requests under scenario 3 (n_f failures per
# round plus one slow worker) on 11 ranks with ULFM on, then the memory report.
#   ./jobs/soak.sh                            500 ResNet18 requests, n_f = 1
#   REQUESTS=50 MODEL=lenet5 ./jobs/soak.sh   a quick one
#   ./jobs/soak.sh --crash 4@100              ... and a worker really dies at request 100
# The trace goes to results/soak.h5; `cocoi report` prints RSS per rank (first vs last
# tenth of the run), the dead workers and open requests at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT=${OUT:-results/soak.h5}
mpirun --with-ft ulfm -np "${NP:-11}" --oversubscribe --bind-to none \
    python -m cocoi_mpi.run --model "${MODEL:-resnet18}" --requests "${REQUESTS:-500}" \
    --scenario 3 --failures "${FAILURES:-1}" --quiet --out "$OUT" "$@"
cocoi report "$OUT" | sed -n '/^Status/p;/^Failures/p;/^Latency/p;/^Memory/,$p'
