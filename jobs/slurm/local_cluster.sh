#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying and testing the batch scripts.
#   jobs/slurm/local_cluster.sh install   apt-get slurmctld, slurmd, slurm-client, munge (root)
#   jobs/slurm/local_cluster.sh start     munged + slurmctld + slurmd, private state dir
#   jobs/slurm/local_cluster.sh env       print `export SLURM_CONF=...` for this shell
#   jobs/slurm/local_cluster.sh stop      stop the daemons, remove the state dir
# Everything lives in $COCOI_SLURM_DIR (default /tmp/cocoi-slurm): config, munge socket,
# spool, logs. Ports $COCOI_SLURM_PORT and the next (default 16817/16818) keep it apart
# from a real Slurm and from another test cluster. The node claims
# $COCOI_SLURM_CPUS CPUs (default 16) whatever the hardware has, so an 11-rank job fits
# on a 2-core machine. Daemons run as the calling user; start needs root (slurmd must
# be able to switch to the job's user), as in any Slurm.
set -euo pipefail
DIR=${COCOI_SLURM_DIR:-/tmp/cocoi-slurm}
CPUS=${COCOI_SLURM_CPUS:-16}
PORT=${COCOI_SLURM_PORT:-16817}  # slurmctld; slurmd listens on PORT + 1
HOST=$(hostname -s)
NEED=(munged slurmctld slurmd sbatch scontrol)

missing() {
    local m=()
    for b in "${NEED[@]}"; do command -v "$b" >/dev/null 2>&1 || m+=("$b"); done
    echo "${m[*]}"
}

install() {
    [ -z "$(missing)" ] && { echo "slurm: already installed ($(slurmctld -V))"; return; }
    [ "$(id -u)" = 0 ] || { echo "slurm: install needs root (apt-get)" >&2; exit 1; }
    command -v apt-get >/dev/null || { echo "slurm: no apt-get; install Slurm and munge with your package manager" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
    echo "slurm: installed $(slurmctld -V)"
}

write_config() {
    mkdir -p "$DIR"/{munge,ctld,spool,log}
    chmod 700 "$DIR/munge"
    [ -f "$DIR/munge/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    local mem
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat >"$DIR/slurm.conf" <<CONF
# One-node test cluster written by jobs/slurm/local_cluster.sh
ClusterName=cocoi
SlurmctldHost=$HOST
SlurmUser=$(id -un)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
InactiveLimit=0
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    local m; m=$(missing)
    [ -z "$m" ] || { echo "slurm: not installed (missing: $m); run: $0 install" >&2; exit 3; }
    [ "$(id -u)" = 0 ] || { echo "slurm: start needs root (slurmd switches to the job's user)" >&2; exit 3; }
    stop quiet
    write_config
    export SLURM_CONF=$DIR/slurm.conf
    munged --force --socket "$DIR/munge/munge.socket" --key-file "$DIR/munge/munge.key" \
        --pid-file "$DIR/munge/munged.pid" --log-file "$DIR/log/munged.log" \
        --seed-file "$DIR/munge/munge.seed"
    slurmctld -i
    slurmd
    for _ in $(seq 60); do
        if scontrol show node "$HOST" 2>/dev/null | grep -q "State=IDLE"; then
            echo "slurm: one-node cluster up on $HOST ($CPUS CPUs); export SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 0.5
    done
    echo "slurm: the node did not become idle in 30 s; logs in $DIR/log:" >&2
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 3
}

stop() {
    for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    sleep 1
    for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
        [ -f "$pid" ] && kill -9 "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$DIR"
    [ "${1:-}" = quiet ] || echo "slurm: stopped, $DIR removed"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) echo "usage: $0 install|start|env|stop" >&2; exit 2 ;;
esac
