"""The liveness channel (runtime/liveness.py): deaths seen by the kernel, not a clock.

Real sockets and real processes, no MPI: a peer that exits (any status, any way) is
reported; one that says GOODBYE first, or is merely stopped (starved), is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cocoi_mpi.runtime.liveness import (
    Address,
    Exit,
    Listener,
    connect,
    local_addresses,
)

WAIT_S = 60.0  # the most any event may take to show up on a loaded machine


class Seen:
    """Collects Exit reports from the watcher thread."""

    def __init__(self) -> None:
        self.events: list[Exit] = []
        self.arrived = threading.Event()

    def __call__(self, event: Exit) -> None:
        self.events.append(event)
        self.arrived.set()


def open_link(workers: list[int], connectors, timeout: float = WAIT_S) -> tuple:
    """A listener, the connections made by ``connectors(address)``, the master link.
    The kernel completes a connection to a listening socket before accept, so the
    connectors finish first and accept only waits for the ones that never come."""
    listener = Listener()
    peers = connectors(listener.address)
    return listener.accept(workers, timeout=timeout), peers


def test_local_addresses_put_loopback_last():
    found = local_addresses()
    assert found
    loop = [i for i, a in enumerate(found) if a.startswith("127.")]
    assert all(i >= len(found) - len(loop) for i in loop)


def test_goodbye_then_close_is_no_death():
    link, workers = open_link([1, 2], lambda a: [connect(a, 1), connect(a, 2)])
    seen = Seen()
    link.on_setup_exit = None
    link.start()
    link.watcher.on_exit = seen
    for w in workers:
        w.close()  # GOODBYE, then close
    time.sleep(0.5)  # give a wrong report the chance to show up
    link.close()
    assert seen.events == [] and link.missing == []


def test_abrupt_close_is_reported_once_with_the_rank():
    link, workers = open_link([1, 2], lambda a: [connect(a, 1), connect(a, 2)])
    link.serving = True
    link.start()
    workers[1].sock.close()  # no GOODBYE: as if the process ended
    deadline = time.monotonic() + WAIT_S
    exits = []
    while not exits and time.monotonic() < deadline:
        exits = link.take_exits()
        time.sleep(0.01)
    assert [(e.rank, e.how) for e in exits] == [(2, "closed")]
    workers[0].close()
    link.close()
    assert link.take_exits() == []


def test_exit_during_setup_calls_the_setup_handler():
    seen = Seen()
    link, workers = open_link([1], lambda a: [connect(a, 1)])
    link.on_setup_exit = seen
    link.start()
    workers[0].sock.close()
    assert seen.arrived.wait(WAIT_S)
    assert seen.events[0].rank == 1
    link.close()


def test_a_worker_that_never_connects_is_listed_missing():
    link, _ = open_link([1, 2], lambda a: [connect(a, 1)], timeout=1.0)
    link.close()
    assert link.missing == [2]


def test_unreachable_master_gives_no_link():
    # a port nothing listens on: connection refused on every address
    probe = Listener()
    port = probe.address.port
    probe.sock.close()
    assert connect(Address(("127.0.0.1",), port), 1, timeout=2) is None


def test_worker_sees_master_vanish_but_not_a_goodbye():
    seen_abrupt, seen_polite = Seen(), Seen()
    for seen, polite in ((seen_abrupt, False), (seen_polite, True)):
        link, workers = open_link([1], lambda a: [connect(a, 1)])
        workers[0].watch(seen)
        if polite:
            link.close()
        else:
            for sock in link.peers.values():
                sock.close()
        if not polite:
            assert seen.arrived.wait(WAIT_S)
        time.sleep(0.3)
        workers[0].close()
    assert [e.rank for e in seen_abrupt.events] == [0]
    assert seen_polite.events == []


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from cocoi_mpi.runtime.liveness import Address, connect
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    link = connect(Address((host,), port), 7)
    print("connected", flush=True)
    sys.stdin.readline()  # the test says when
    if mode == "exit1":
        os._exit(1)
    if mode == "exit0":
        os._exit(0)
    if mode == "goodbye":
        link.close()
        os._exit(3)
    time.sleep(600)
    """
)


def child(address: Address, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, address.hosts[0], str(address.port), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc


@pytest.mark.parametrize("mode", ["exit1", "exit0", "sigkill"])
def test_a_process_that_ends_any_way_is_reported(mode):
    """Exit with a non-zero status (what PRRTE does not report under ULFM), exit 0,
    and SIGKILL: each is seen, and only once the process is gone."""
    listener = Listener()
    proc = child(listener.address, mode)
    link = listener.accept([7], timeout=WAIT_S)
    assert proc.stdout.readline().strip() == "connected"
    link.serving = True
    link.start()
    time.sleep(0.2)
    assert link.take_exits() == []  # alive: nothing reported
    if mode == "sigkill":
        proc.kill()
    else:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    proc.wait(timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    exits = []
    while not exits and time.monotonic() < deadline:
        exits = link.take_exits()
        time.sleep(0.01)
    link.close()
    assert [e.rank for e in exits] == [7]


def test_a_stopped_process_is_not_dead_and_its_goodbye_counts():
    """SIGSTOP is starvation taken to the limit: the process runs not at all. Its
    kernel keeps the connection; nothing is reported, and its later GOODBYE and exit
    (status 3) are a normal end."""
    listener = Listener()
    proc = child(listener.address, "goodbye")
    link = listener.accept([7], timeout=WAIT_S)
    assert proc.stdout.readline().strip() == "connected"
    link.serving = True
    link.start()
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(3)
    assert link.take_exits() == []
    os.kill(proc.pid, signal.SIGCONT)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.wait(timeout=WAIT_S) == 3
    time.sleep(0.5)
    link.close()
    assert link.take_exits() == []
