#!/usr/bin/env bash
# Submit a sweep as a Slurm job array of PARTS tasks plus a merge job that runs after
# all of them succeeded. From the repository root:
#   jobs/slurm/submit_sweep.sh jobs/fig7_vgg16.toml           8 parts (default)
#   jobs/slurm/submit_sweep.sh jobs/fig6_resnet18.toml 4
#   jobs/slurm/submit_sweep.sh jobs/fig7_vgg16.toml 8 --ntasks=11 --partition=short
# Extra arguments go to both sbatch calls. Prints the two job ids; the merged trace is
# results/<name>.h5, name = SWEEP_NAME or the config's name. Refuses, before submitting
# anything, when results/<name>.h5 or its parts exist already (the merge would refuse),
# unless RESUME=1: then the parts of an earlier, cut-off submission go on where they
# stopped (every task runs with --resume; finished parts end at once) and are merged.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:?usage: jobs/slurm/submit_sweep.sh CONFIG.toml [PARTS] [SBATCH OPTIONS]}
PARTS=${2:-8}
shift $(($# >= 2 ? 2 : 1))
NAME=${SWEEP_NAME:-$(basename "$CONFIG" .toml)}
[ -f "$CONFIG" ] || { echo "cocoi: error: no such config $CONFIG" >&2; exit 2; }
if [ -e "results/${NAME}.h5" ]; then
    echo "cocoi: error: results/${NAME}.h5 already exists; remove it or set SWEEP_NAME" >&2
    exit 2
fi
old=$(compgen -G "results/${NAME}_part*.h5" || true)
if [ -n "$old" ] && [ "${RESUME:-0}" != 1 ]; then
    echo "cocoi: error: $(echo $old) already exist(s); RESUME=1 goes on with them," \
        "or remove them or set SWEEP_NAME" >&2
    exit 2
fi
array=$(sbatch --parsable --array="0-$((PARTS - 1))" "$@" jobs/slurm/sweep_array.sbatch "$CONFIG" "$NAME")
array=${array%%;*}
merge=$(sbatch --parsable --dependency="afterok:$array" --kill-on-invalid-dep=yes "$@" \
    jobs/slurm/merge.sbatch "$NAME")
merge=${merge%%;*}
echo "cocoi: sweep $NAME: array job $array ($PARTS parts), merge job $merge -> results/$NAME.h5"
