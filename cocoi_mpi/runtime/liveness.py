"""Deaths the kernel sees: one TCP connection from each worker to the master.

Why not only Open MPI's fault tolerance: under ``mpirun --with-ft ulfm`` a rank learns
of another's death from PRRTE, which notifies on a signal (SIGKILL, SIGSEGV, the OOM
killer) and on an exit with status 0 before MPI_Finalize, but not on an exit with a
non-zero status: PRRTE counts that as a normal end in a recoverable job, and no
runtime option changes it (Open MPI 5.0.11, measured; docs/reliability.md). ULFM's
other source is its heartbeat detector, which declares a rank dead when its heartbeats
stop for a timeout, and a rank starved of CPU stops sending them: live ranks were
declared dead on a loaded machine.

A TCP connection ends when its process ends, however it ends: the kernel closes the
socket and the peer reads end-of-file at once, without a clock. TCP keepalive, answered
by the peer's kernel and not by the (possibly starved) process, finds a node that is
gone altogether. A normal end is announced first (GOODBYE), so the connection closing
after it is not a death.

Only sockets and threads here; the address travels in the set-up broadcast (master.py,
worker.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

GOODBYE = b"\x01"  # "I am ending normally": the connection's close is then no death
HELLO = struct.Struct("!i")  # a worker's first bytes: its rank
ACCEPT_TIMEOUT_S = 60.0  # how long the master waits for every worker to connect
CONNECT_TIMEOUT_S = 5.0  # per address a worker tries
# Keepalive: probe a silent connection after 10 s, every 5 s, give up after 6 misses:
# a node that is gone (power, cable) is found within ~40 s; a starved process is not
# involved (its kernel answers).
KEEPALIVE = dict(idle=10, interval=5, count=6)
SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


@dataclass(frozen=True)
class Address:
    """Where the master listens: every IPv4 address it has (workers try them in order)
    and one port."""

    hosts: tuple[str, ...]
    port: int


@dataclass(frozen=True)
class Exit:
    """A peer whose connection ended without GOODBYE: it exited (or its node is gone)."""

    rank: int
    t: float  # time.monotonic() when it was seen
    how: str  # "closed" (end-of-file), or the socket error (e.g. keepalive timeout)


def local_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback last: a worker on another host (or in
    another network namespace) reaches the master only through a non-loopback one."""
    found = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            packed = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, packed)
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(socket.inet_ntoa(reply[20:24]))
    finally:
        probe.close()
    found = list(dict.fromkeys(found))
    return [a for a in found if not a.startswith("127.")] + [
        a for a in found if a.startswith("127.")
    ] or ["127.0.0.1"]


def keep_alive(sock: socket.socket) -> None:
    """Ask the kernel to probe an idle connection (where the platform lets us tune it)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE["idle"]),
        ("TCP_KEEPINTVL", KEEPALIVE["interval"]),
        ("TCP_KEEPCNT", KEEPALIVE["count"]),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class Watcher:
    """A thread that blocks in select() on connections and reports each one that ends
    without GOODBYE. Costs no CPU while nothing happens."""

    def __init__(self, peers: dict[int, socket.socket], on_exit: Callable[[Exit], None]):
        self.peers = dict(peers)
        self.on_exit = on_exit
        self.leaving: set[int] = set()  # said GOODBYE: their close is a normal end
        self.stopped = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="cocoi-liveness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for rank, sock in self.peers.items():
                sel.register(sock, selectors.EVENT_READ, rank)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self.stopped.is_set() and len(sel.get_map()) > 1:
                for key, _ in sel.select():
                    if key.data is None:
                        return  # stop() woke us
                    if self._read(key.data, key.fileobj):
                        sel.unregister(key.fileobj)

    def _read(self, rank: int, sock: socket.socket) -> bool:
        """One readable connection; True once it is finished (closed or failed)."""
        try:
            data = sock.recv(64)
        except OSError as exc:  # e.g. ETIMEDOUT after the keepalive probes
            return self._ended(rank, exc.strerror or type(exc).__name__)
        if not data:
            return self._ended(rank, "closed")
        if GOODBYE in data:
            self.leaving.add(rank)
        return False

    def _ended(self, rank: int, how: str) -> bool:
        if rank not in self.leaving and not self.stopped.is_set():
            self.on_exit(Exit(rank, time.monotonic(), how))
        return True

    def stop(self) -> None:
        """No more reports (the run is ending normally); the thread leaves."""
        self.stopped.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class MasterLink:
    """The master's end: the workers' connections, who exited, who has none.

    During set-up (the weight broadcast) an exit cannot be handled (every rank sits in
    a collective), so ``on_setup_exit`` is called from the watcher thread (the job
    ends it); once serving, exits queue up for :meth:`take_exits`."""

    peers: dict[int, socket.socket]
    missing: list[int]  # workers that did not connect in time: ULFM only for them
    on_setup_exit: Callable[[Exit], None] | None = None
    exits: deque = field(default_factory=deque)
    serving: bool = False
    watcher: Watcher | None = None

    def start(self) -> None:
        self.watcher = Watcher(self.peers, self._on_exit)

    def _on_exit(self, event: Exit) -> None:
        if not self.serving and self.on_setup_exit is not None:
            self.on_setup_exit(event)
        self.exits.append(event)  # deque.append: safe across threads

    def take_exits(self) -> list[Exit]:
        """The exits seen since the last call (the master's loop polls this)."""
        out = []
        while self.exits:
            out.append(self.exits.popleft())
        return out

    def close(self) -> None:
        """The normal end: say GOODBYE to every worker, stop watching, close."""
        for sock in self.peers.values():
            with contextlib.suppress(OSError):
                sock.sendall(GOODBYE)
        if self.watcher is not None:
            self.watcher.stop()
        for sock in self.peers.values():
            with contextlib.suppress(OSError):
                sock.close()


class Listener:
    """The master's listening socket, opened before the set-up broadcast."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(1024)
        self.address = Address(tuple(local_addresses()), self.sock.getsockname()[1])

    def accept(self, workers: list[int], timeout: float = ACCEPT_TIMEOUT_S) -> MasterLink:
        """Take each worker's connection (it names its rank) until all came or the
        timeout; a worker that could not connect is listed, not an error."""
        peers: dict[int, socket.socket] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(peers) < len(workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    break
                rank = read_hello(conn)
                if rank in workers and rank not in peers:
                    conn.settimeout(None)
                    keep_alive(conn)
                    peers[rank] = conn
                else:
                    conn.close()
        finally:
            self.sock.close()
        return MasterLink(peers, [r for r in workers if r not in peers])


def read_hello(conn: socket.socket) -> int | None:
    """A connecting worker's rank, or None for anything else that connected."""
    conn.settimeout(CONNECT_TIMEOUT_S)
    data = b""
    try:
        while len(data) < HELLO.size:
            chunk = conn.recv(HELLO.size - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return HELLO.unpack(data)[0]


@dataclass
class WorkerLink:
    """A worker's end: its connection to the master and the thread watching it."""

    sock: socket.socket
    watcher: Watcher | None = None

    def watch(self, on_master_exit: Callable[[Exit], None]) -> None:
        self.watcher = Watcher({0: self.sock}, on_master_exit)

    def close(self) -> None:
        """The normal end: GOODBYE, then stop watching the master and close."""
        with contextlib.suppress(OSError):
            self.sock.sendall(GOODBYE)
        if self.watcher is not None:
            self.watcher.stop()
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(address: Address, rank: int, timeout: float = CONNECT_TIMEOUT_S) -> WorkerLink | None:
    """Connect to the master through the first of its addresses that answers; None if
    none does (the worker then relies on ULFM alone; the master lists it)."""
    for host in address.hosts:
        try:
            sock = socket.create_connection((host, address.port), timeout=timeout)
        except OSError:
            continue
        sock.settimeout(None)
        keep_alive(sock)
        sock.sendall(HELLO.pack(rank))
        return WorkerLink(sock)
    return None
