#!/usr/bin/env bash
# Issue 18's map, measured: CoCoI-k° vs uncoded on the `pi` testbed preset, one
# interleaved sweep per jitter level x failure detection (n_f = 0, 1, 2) and per jitter
# level (lambda_tr = 0.5, 1), each planned with the profile calibrated at its jitter
# level, then each cell beside the simulator's prediction (cocoi predict).
# A profile that is missing is calibrated first (jobs/calibrate_testbed.sh, 50 s per
# level, fitted with $FIT_ARGS, by default --within-rounds), so from a fresh clone:
#   ./jobs/map.sh                 -> results/map/*.h5, *.md       (~21 min, docs/map.md)
#   JITTERS=paper DETECTIONS=timeout=1.5 LAMBDA_JITTERS=paper ./jobs/map.sh   (~6 min)
#   PROFILE_PREFIX=results/testbed_pi_profile FIT_ARGS= ./jobs/map.sh   (pooled fits)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT=${OUT:-results/map}
JITTERS=${JITTERS:-none builtin paper}
DETECTIONS=${DETECTIONS:-immediate timeout=1.5}
LAMBDA_JITTERS=${LAMBDA_JITTERS-none paper}
# The calibrated profiles: $PROFILE_PREFIX.json at no jitter, ${PROFILE_PREFIX}_<level>.json
# per level (cocoi fit of jobs/calibrate_testbed.sh's traces, docs/map.md).
PROFILE_PREFIX=${PROFILE_PREFIX:-results/testbed_pi_wr_profile}
export FIT_ARGS=${FIT_ARGS---within-rounds}
BASE_PROFILE=${BASE_PROFILE:-$PROFILE_PREFIX.json}
profile_for() {  # the calibrated profile of a jitter level (the level none: the base)
    if [[ "$1" == none ]]; then echo "$BASE_PROFILE"; else echo "${PROFILE_PREFIX}_$1.json"; fi
}
calibrate() {  # a jitter level whose profile is missing
    local p tag
    p="$(profile_for "$1")"
    [[ -s "$p" ]] && return 0
    tag=$([[ "$1" == none ]] && echo "" || echo "_$1")
    PRESET=pi JITTER="$1" OUT="$(dirname "$p")/testbed_pi_calibration$tag.h5" PROFILE="$p" \
        ./jobs/calibrate_testbed.sh
}
for j in none $JITTERS $LAMBDA_JITTERS; do calibrate "$j"; done
mkdir -p "$OUT"
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
