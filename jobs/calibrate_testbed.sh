#!/usr/bin/env bash
# Measure the emulated device (jobs/testbed.sh): run VGG16 layers with several k on the
# testbed, then fit the shift-exponential latency model to the trace (cocoi fit):
# computation time per FLOP (master and workers) and transfer time per byte over the
# emulated link. The profile feeds planning: cocoi plan --profile, run --k auto.
#   ./jobs/calibrate_testbed.sh            -> results/testbed_profile.json (+ CDF plot)
#   SHARE=0.1 ./jobs/calibrate_testbed.sh  (the testbed settings of jobs/testbed.sh)
#   PRESET=pi OUT=results/testbed_pi_calibration.h5 PROFILE=results/testbed_pi_profile.json \
#       ./jobs/calibrate_testbed.sh        (the pi preset; JITTER=paper calibrates a level;
#                                           FIT_ARGS=--within-rounds is passed to cocoi fit)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT=${OUT:-results/testbed_calibration.h5}
PROFILE=${PROFILE:-results/testbed_profile.json}
./jobs/testbed.sh --config jobs/calibrate_testbed.toml --out "$OUT" --quiet \
    --jitter "${JITTER:-none}"
cocoi fit "$OUT" --out "$PROFILE" --plot "${PROFILE%.json}_cdf.png" ${FIT_ARGS:-}
cocoi plan --model vgg16 --n 10 --m 1 --profile "$PROFILE"
