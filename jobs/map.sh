#!/usr/bin/env bash
# Issue 18's map, measured: CoCoI-k° vs uncoded on the `pi` testbed preset, one
# interleaved sweep per jitter level x failure detection (n_f = 0, 1, 2) and per jitter
# level (lambda_tr = 0.5, 1), each planned with the profile calibrated at its jitter
# level, then each cell beside the simulator's prediction (cocoi predict).
#   ./jobs/calibrate_testbed.sh with PRESET=pi (and JITTER=<level>) first, see docs/testbed.md
#   ./jobs/map.sh                 -> results/map/*.h5, results/map/*.md
#   JITTERS="paper" DETECTIONS="timeout=1.5" LAMBDA_JITTERS= ./jobs/map.sh   (a part of it)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT=${OUT:-results/map}
JITTERS=${JITTERS:-none builtin paper}
DETECTIONS=${DETECTIONS:-immediate timeout=1.5}
LAMBDA_JITTERS=${LAMBDA_JITTERS:-none paper}
# The calibrated profiles: $PROFILE_PREFIX.json at no jitter, ${PROFILE_PREFIX}_<level>.json
# per level (cocoi fit of jobs/calibrate_testbed.sh's traces; --within-rounds for the
# results/testbed_pi_wr_profile* ones, docs/map.md).
PROFILE_PREFIX=${PROFILE_PREFIX:-results/testbed_pi_profile}
BASE_PROFILE=${BASE_PROFILE:-$PROFILE_PREFIX.json}
mkdir -p "$OUT"
profile_for() {  # the calibrated profile of a jitter level (the level none: the base)
    local p="${PROFILE_PREFIX}_$1.json"
    [[ "$1" == none || ! -f "$p" ]] && p="$BASE_PROFILE"
    echo "$p"
}
run_cell() {  # config, name, jitter, detection
    local h5="$OUT/$2.h5"
    PRESET=pi ./jobs/testbed.sh --config "$1" --out "$h5" --quiet --jitter "$3" \
        --detection "$4" --profile "$(profile_for "$3")"
    cocoi predict "$h5" --profile "$BASE_PROFILE" --markdown | tee "$OUT/$2.md"
}
for j in $JITTERS; do
    for d in $DETECTIONS; do
        run_cell jobs/map_failures.toml "failures_${j}_${d/=/}" "$j" "$d"
    done
done
for j in $LAMBDA_JITTERS; do
    run_cell jobs/map_straggling.toml "straggling_${j}" "$j" immediate
done
