# Sourced by the sweep batch scripts: run_resumable_sweep CMD... runs a sweep command
# (an `mpirun ... python -m cocoi_mpi.run ... --resume`) so that a job Slurm cuts off
# goes on where it stopped instead of starting over.
#
# - The scripts ask for `#SBATCH --requeue` (a job on a lost node is requeued) and
#   `#SBATCH --signal=B:USR1@180` (this shell hears USR1 three minutes before the
#   time limit). On USR1 the sweep gets SIGTERM: the master stops after the request
#   in flight and closes the trace; then the job requeues itself (`scontrol requeue`).
# - The requeued job keeps its job id, so it writes the same file; --resume keeps the
#   complete cells and serves the rest (docs/experiments.md, "Resuming a sweep").
# - At most MAX_REQUEUES self-requeues (default 5; Slurm counts them in
#   SLURM_RESTART_COUNT), so a cell longer than the time limit cannot loop forever;
#   REQUEUE=0 turns self-requeueing off (the job then just ends at its time limit,
#   and a later `sbatch` of the same script with the same output goes on).

COCOI_SWEEP_PID=""
COCOI_TIME_UP=""

cocoi_time_up() {
    COCOI_TIME_UP=1
    echo "cocoi: the time limit is near: stopping the sweep, its trace keeps the complete cells"
    [ -z "$COCOI_SWEEP_PID" ] || kill -TERM "$COCOI_SWEEP_PID" 2>/dev/null || true
}

cocoi_requeue() {
    local restarts=${SLURM_RESTART_COUNT:-0}
    if [ "${REQUEUE:-1}" = 0 ]; then
        echo "cocoi: REQUEUE=0: not requeueing; submit the job again to go on" >&2
        return 1
    fi
    if [ "$restarts" -ge "${MAX_REQUEUES:-5}" ]; then
        echo "cocoi: error: requeued $restarts times already (MAX_REQUEUES); submit the" \
            "job again to go on" >&2
        return 1
    fi
    echo "cocoi: requeueing job ${SLURM_JOB_ID:?} (restart $((restarts + 1)))"
    scontrol requeue "$SLURM_JOB_ID"
}

run_resumable_sweep() {
    trap cocoi_time_up USR1
    "$@" &
    COCOI_SWEEP_PID=$!
    local rc=0
    wait "$COCOI_SWEEP_PID" || rc=$?
    if [ -n "$COCOI_TIME_UP" ]; then
        wait "$COCOI_SWEEP_PID" || true # the first wait ended when USR1 came
        trap '' USR1
        cocoi_requeue
        exit $? # requeued: this run is over (Slurm ends it anyway)
    fi
    trap '' USR1 # a notice after the sweep ended must not kill the report that follows
    return "$rc"
}
