#!/usr/bin/env bash
# The emulated testbed on one machine: 1 master + 10 workers, each worker confined to
# its own CPU share by cgroups (default 0.15 core, the master 0.4), every transfer over
# an emulated link, so each worker behaves like its own slow device. Two presets:
#   PRESET=today (default): a 100 Mbit/s link, a Pi's WiFi, beside workers ~13x faster
#     per FLOP than a Pi: transfers weigh ~13x more against compute than on the paper's
#     testbed.
#   PRESET=pi: the paper's proportions. `cocoi testbed scale` times a conv on one
#     confined device (a few seconds) and the link becomes 100 Mbit/s x how many times
#     faster than a Pi 4B the device computes; every time is then that many times
#     shorter than on the Pis. The derivation goes into the trace (--preset). It is
#     measured once per machine and kept in $SCALE_FILE (default
#     results/testbed_pi_scale.txt), so every run of a study has the same link;
#     remove the file to measure again.
#   ./jobs/testbed.sh --model lenet5 --requests 5
#   PRESET=pi ./jobs/testbed.sh --config jobs/map_pi.toml --out results/map.h5
#   SHARE=0.1 MASTER_SHARE=0.5 MBPS=50 ./jobs/testbed.sh ...
# Needs root (or a delegated cgroup) to confine; where cgroups are not writable the run
# says so and goes on unconfined. Groups killed ranks leave are removed at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
trap 'cocoi testbed cleanup >/dev/null 2>&1 || true' EXIT
SHARE="${SHARE:-0.15}"
MASTER_SHARE="${MASTER_SHARE:-0.4}"
case "${PRESET:-today}" in
    today)
        MBPS="${MBPS:-100}"
        NOTE="today: ${SHARE}-core workers, a ${MASTER_SHARE}-core master, ${MBPS} Mbit/s per transfer"
        ;;
    pi)
        SCALE_FILE="${SCALE_FILE:-results/testbed_pi_scale.txt}"
        if [[ ! -s "$SCALE_FILE" ]]; then
            mkdir -p "$(dirname "$SCALE_FILE")"
            cocoi testbed scale --share "$SHARE" > "$SCALE_FILE.tmp"
            mv "$SCALE_FILE.tmp" "$SCALE_FILE"
        fi
        SCALE="$(cat "$SCALE_FILE")"
        MBPS="${MBPS:-$(sed -n 's/^link_mbps //p' <<<"$SCALE")}"
        NOTE="$(tail -n 1 <<<"$SCALE"); ${SHARE}-core workers, a ${MASTER_SHARE}-core master, ${MBPS} Mbit/s per transfer"
        ;;
    *)
        echo "jobs/testbed.sh: PRESET must be today or pi, got '${PRESET}'" >&2
        exit 2
        ;;
esac
echo "testbed preset: $NOTE" >&2
mpirun -np "${NP:-11}" --oversubscribe --bind-to none python -m cocoi_mpi.run \
    --cpu-share "$SHARE" --master-cpu-share "$MASTER_SHARE" \
    --link-mbps "$MBPS" --preset "$NOTE" "$@"
