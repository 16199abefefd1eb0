#!/usr/bin/env bash
# The emulated testbed on one machine: 1 master + 10 workers, each worker confined to
# its own CPU share by cgroups (default 0.15 core, the master 0.4), every transfer over
# an emulated 100 Mbit/s link, so each worker behaves like its own slow device.
#   ./jobs/testbed.sh --model lenet5 --requests 5
#   ./jobs/testbed.sh --config jobs/fig7_vgg16.toml --out results/fig7_vgg16_testbed.h5
#   SHARE=0.1 MASTER_SHARE=0.5 MBPS=50 ./jobs/testbed.sh ...
# Needs root (or a delegated cgroup) to confine; where cgroups are not writable the run
# says so and goes on unconfined. Groups killed ranks leave are removed at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
trap 'cocoi testbed cleanup >/dev/null 2>&1 || true' EXIT
mpirun -np "${NP:-11}" --oversubscribe --bind-to none python -m cocoi_mpi.run \
    --cpu-share "${SHARE:-0.15}" --master-cpu-share "${MASTER_SHARE:-0.4}" \
    --link-mbps "${MBPS:-100}" "$@"
