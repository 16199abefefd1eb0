#!/usr/bin/env bash
# ssh stand-in for trying a multi-host hostfile (hostfiles/pis) on one machine.
#
# Open MPI starts one daemon per host of the hostfile with `ssh HOST COMMAND`; this
# script takes ssh's place and runs COMMAND here instead, so the launch goes through
# the same steps as on the real cluster (hostfile parsing, one prted per host, tree
# spawn, daemons wiring back over TCP) without the hosts. Use it through PRRTE's
# agent setting, leaving the mpirun command exactly as on the cluster:
#
#   PRTE_MCA_prte_ssh_agent=$PWD/jobs/local_ssh.sh \
#       mpirun -np 11 --hostfile hostfiles/pis --bind-to none -x PATH python -m cocoi_mpi.run
#
# COCOI_SSH_LOG=FILE appends "HOST" per launch to FILE, to see which hosts were used.
set -euo pipefail
while [ $# -gt 0 ]; do
    case "$1" in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;  # ssh options that take a value
        -*) shift ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "local_ssh.sh: usage: local_ssh.sh [ssh options] HOST COMMAND..." >&2; exit 255; }
host=$1
shift
[ -z "${COCOI_SSH_LOG:-}" ] || echo "$host" >> "$COCOI_SSH_LOG"
# A login over ssh starts with a fresh environment, not mpirun's: so does this.
exec env -i HOME="${HOME:-/root}" USER="${USER:-$(id -un)}" PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 bash -c "$*"
