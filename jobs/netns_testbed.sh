#!/usr/bin/env bash
# Emulate a WiFi-like network between the MPI ranks on this one machine.
# Rank i runs in its own network namespace cocoi-ns<i>; every namespace is joined by a
# veth pair to one Linux bridge (cocoi-br0), and both ends of each veth are shaped with tc
# (MBPS bandwidth, DELAY_MS one-way delay per hop when the kernel has sch_netem).
# Open MPI talks TCP only (--mca btl tcp,self) over the bridge subnet; the PMIx server
# of mpirun listens on the bridge address so that ranks in other namespaces reach it.
# Everything is local: no default route in the namespaces, no NAT, no forwarding changes.
# All namespaces, veths and the bridge are removed on exit, also on failure or Ctrl-C.
#
#   sudo ./jobs/netns_testbed.sh --model lenet5 --requests 3        (NP=3: master + 2 workers)
#   NP=5 MBPS=54 DELAY_MS=3 ./jobs/netns_testbed.sh --model resnet18
#   ./jobs/netns_testbed.sh -- python my_mpi_script.py               (any command after --)
#
# Env: NP (ranks = namespaces, 2..16, default 3), MBPS (default 100; 0 = no shaping),
#      DELAY_MS (default 2; 0 = none), SUBNET (first three octets, default 10.231.0),
#      MPIRUN_ARGS (extra mpirun options).
set -euo pipefail

NP=${NP:-3}
MBPS=${MBPS:-100}
DELAY_MS=${DELAY_MS:-2}
SUBNET=${SUBNET:-10.231.0}
BR=cocoi-br0
MAX_NS=16
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "netns_testbed: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, veth, bridge and tc need CAP_NET_ADMIN)"
command -v ip >/dev/null || die "'ip' (iproute2) not found"
command -v tc >/dev/null || die "'tc' (iproute2) not found"
[[ "$NP" =~ ^[0-9]+$ ]] && [ "$NP" -ge 2 ] && [ "$NP" -le "$MAX_NS" ] || die "NP=$NP: need 2..$MAX_NS ranks"
[[ "$MBPS" =~ ^[0-9]+$ ]] || die "MBPS=$MBPS: need a whole number of Mbit/s"
[[ "$DELAY_MS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DELAY_MS=$DELAY_MS: need a number of milliseconds"
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SUBNET=$SUBNET: need three octets, e.g. 10.231.0"
if ip -o addr show | grep -v " $BR " | grep -q "inet $SUBNET\."; then
    die "subnet $SUBNET.0/24 is already used on this host; pick another SUBNET"
fi
if ip link show "$BR" >/dev/null 2>&1 || ip netns list | grep -q '^cocoi-ns'; then
    die "$BR or cocoi-ns* already exist (another testbed running, or a stale one: remove with
  ip link del $BR; for n in \$(ip netns list | awk '/^cocoi-ns/{print \$1}'); do ip netns del \$n; done)"
fi

source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"

MPIRUN_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$MPIRUN_PID" ] && kill -0 "$MPIRUN_PID" 2>/dev/null; then
        kill -TERM "$MPIRUN_PID" 2>/dev/null || true     # mpirun forwards it to the ranks
        for _ in $(seq 1 20); do kill -0 "$MPIRUN_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$MPIRUN_PID" 2>/dev/null || true
        wait "$MPIRUN_PID" 2>/dev/null || true
    fi
    for ((i = 0; i < NP; i++)); do
        ip netns del "cocoi-ns$i" 2>/dev/null || true   # also removes the veth peer inside
        ip link del "cocoi-h$i" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
    echo "netns_testbed: removed $BR, cocoi-h*, cocoi-ns0..$((NP - 1))" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The probe doubles as the first namespace: if `ip netns add` is refused we stop here.
ip netns add cocoi-ns0 2>/tmp/cocoi-netns-err.$$ || {
    cat /tmp/cocoi-netns-err.$$ >&2; rm -f /tmp/cocoi-netns-err.$$
    die "'ip netns add' failed (no CAP_SYS_ADMIN / netns support in this container?)"
}
rm -f /tmp/cocoi-netns-err.$$

# netem gives delay + rate; this kernel may lack sch_netem, then tbf gives the rate only.
probe_netem() {
    ip netns exec cocoi-ns0 tc qdisc add dev lo root netem delay 1ms 2>/dev/null || return 1
    ip netns exec cocoi-ns0 tc qdisc del dev lo root 2>/dev/null || true
}
HAVE_NETEM=0; probe_netem && HAVE_NETEM=1
qdisc_args() {  # tc arguments for one direction of one link
    if [ "$HAVE_NETEM" = 1 ] && [ "$DELAY_MS" != 0 ]; then
        local rate=""; [ "$MBPS" != 0 ] && rate="rate ${MBPS}mbit"
        echo "netem delay ${DELAY_MS}ms $rate limit 10000"
    elif [ "$MBPS" != 0 ]; then
        # burst 32 KiB: ~2.6 ms at 100 Mbit/s; latency = how long a packet may queue
        echo "tbf rate ${MBPS}mbit burst 32kb latency 200ms"
    fi
}
QDISC=$(qdisc_args)
if [ "$DELAY_MS" != 0 ] && [ "$HAVE_NETEM" = 0 ]; then
    echo "netns_testbed: WARNING: the kernel has no sch_netem ('tc qdisc add ... netem' fails:" \
         "Specified qdisc kind is unknown); DELAY_MS=$DELAY_MS is NOT emulated, bandwidth only" >&2
fi

ip link add "$BR" type bridge
ip addr add "$SUBNET.1/24" dev "$BR"
ip link set "$BR" up
for ((i = 0; i < NP; i++)); do
    ns=cocoi-ns$i
    [ "$i" = 0 ] || ip netns add "$ns"
    ip link add "cocoi-h$i" type veth peer name eth0 netns "$ns"
    ip link set "cocoi-h$i" master "$BR" up
    ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    if [ -n "$QDISC" ]; then
        tc qdisc add dev "cocoi-h$i" root $QDISC                 # towards the rank
        ip netns exec "$ns" tc qdisc add dev eth0 root $QDISC    # from the rank
    fi
done

echo "netns_testbed: bridge $BR $SUBNET.1/24 (root namespace; mpirun's PMIx server listens here)"
for ((i = 0; i < NP; i++)); do
    echo "netns_testbed:   rank $i  netns cocoi-ns$i  eth0 $SUBNET.$((10 + i))/24  <-> cocoi-h$i"
done
echo "netns_testbed: shaping each direction of each link: ${QDISC:-none}"
echo "netns_testbed: routes in the namespaces: $(ip -n cocoi-ns0 route | tr '\n' ';') (no default route)"

if [ "${1:-}" = "--" ]; then
    shift; CMD=("$@")
    [ "${#CMD[@]}" -gt 0 ] || die "nothing to run after --"
else
    CMD=(python -m cocoi_mpi.run "$@")
fi
MPIRUN_FLAGS=(--oversubscribe --bind-to none
    --pmixmca ptl_base_if_include "$SUBNET.0/24"          # PMIx server on the bridge, not 127.0.0.1
    --mca btl tcp,self --mca btl_tcp_if_include "$SUBNET.0/24")   # MPI traffic over the veths only
MPMD=()
for ((i = 0; i < NP; i++)); do
    [ "$i" = 0 ] || MPMD+=(:)
    MPMD+=(-np 1 ip netns exec "cocoi-ns$i" "${CMD[@]}")
done
# mpirun runs in the background and we `wait`: a signal to this script then interrupts the
# wait at once, the trap stops mpirun (which stops the ranks) and removes the network.
echo "+ mpirun ${MPIRUN_FLAGS[*]} ${MPIRUN_ARGS:-} ${MPMD[*]}" >&2
mpirun "${MPIRUN_FLAGS[@]}" ${MPIRUN_ARGS:-} "${MPMD[@]}" &
MPIRUN_PID=$!
wait "$MPIRUN_PID" && rc=0 || rc=$?
MPIRUN_PID=
exit "$rc"
