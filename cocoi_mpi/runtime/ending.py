"""The end of a run on the master: stop the workers, wait for their open replies and
sends, take their logs, and say the last word (whether any rank died).

:class:`Ending` is one part of :class:`~cocoi_mpi.runtime.master.MasterEngine`; it
uses the transport's polling (:class:`~.transport.Transport`) and the engine's
``late``, ``sends``, ``errors``, ``dead`` and ``link``.
"""

from __future__ import annotations

import time

from mpi4py import MPI

from ..errors import RunError
from .protocol import FAREWELL, LOG, Stop
from .transport import mark_late
from .ulfm import POLL_MAX_SLEEP, cancel, failed_ranks, peer_may_die


class ShutdownTimeout(RunError, RuntimeError):
    """Workers did not close their open replies in time at the end of the run."""


class Ending:
    """Shutdown, farewell and the workers' logs (a part of MasterEngine)."""

    def shutdown(self, timeout: float = 60.0) -> list[dict]:
        """Stop the live workers, wait for every open reply and send, collect their logs.

        Workers that never close their replies within ``timeout`` are listed in
        ``unresponsive`` and ShutdownTimeout is raised: only an abort ends them."""
        self.stopping = True
        for rank in self.live_workers():
            self.post_control(Stop(), rank)
        deadline = time.monotonic() + timeout
        logs: dict[int, dict] = {}
        while self.late or self.sends or len(logs) < len(self.live_workers()):
            self.poll_late()
            self.reap_sends()
            self.receive_logs(logs)  # a worker ships its last batch before its log
            if time.monotonic() > deadline:
                owing = {p.rank for p in self.late} | (set(self.live_workers()) - set(logs))
                self.unresponsive = sorted(owing - set(self.dead))
                self.close_unresolved()
                raise ShutdownTimeout(
                    f"worker rank(s) {self.unresponsive} still owed {len(self.late)} replies "
                    f"or their log {timeout:.0f} s after the run ended"
                )
            time.sleep(POLL_MAX_SLEEP)
        for channel in self.errors.values():  # still posted: no error came from it
            cancel(channel.request)
        self.errors = {}
        self.shut_down = True
        return [logs[r] for r in sorted(logs)]

    def say_farewell(self) -> None:
        """Tell each live worker whether any rank died: the master's last word, sent
        after the summary so that no worker leaves while the master still prints.

        ULFM never hears of a worker that exits with a non-zero status (only the
        master's liveness channel does); a worker would find its own failed group empty,
        call MPI_Finalize and hang there (guard_finalize). The liveness channel's
        GOODBYE goes first, so no worker takes the master's exit for a death. Without a
        completed shutdown the workers are not waiting for it (the job is aborted)."""
        if not self.shut_down:
            return
        if self.link is not None:  # GOODBYE first: the workers' watchers stand down
            self.link.close()
        deaths = bool(self.dead or failed_ranks(MPI.COMM_WORLD))
        for rank in self.live_workers():
            with peer_may_die(lambda rank=rank: self.mark_dead(rank)):
                self.comm.send(deaths, dest=rank, tag=FAREWELL)

    def receive_logs(self, logs: dict[int, dict]) -> None:
        """Take each live worker's end-of-run log once it has sent it."""
        for rank in self.live_workers():
            if rank in logs:
                continue
            with peer_may_die(lambda rank=rank: self.mark_dead(rank)):
                if self.comm.Iprobe(source=rank, tag=LOG):
                    logs[rank] = self.comm.recv(source=rank, tag=LOG)

    def close_unresolved(self) -> None:
        """At a shutdown timeout, keep the rows of replies that never came."""
        for p in self.late:
            p.row.setdefault("status", "timeout")
            self.resolved.append(mark_late(p.row))
        self.subtasks.extend(self.take_resolved())
