"""What the master writes into the trace besides its rows, at the end of a run: the
workers' send durations (:class:`SendTimes`), the master's CPU and collector figures,
and what the run survived (``reliability``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..traces.writer import TraceWriter
from .master import MasterEngine, WorkerError
from .protocol import split_report
from .ulfm import ulfm_enabled

if TYPE_CHECKING:
    from .prepare import MasterJob


@dataclass
class SendTimes:
    """Workers' send durations (protocol.SENDS) on their way into the trace. One whose
    subtask row is not written yet (a late reply's row comes with a later request) is
    tried again after the next append, at most MAX_TRIES times, so none piles up."""

    MAX_TRIES = 100
    waiting: list[tuple[tuple[int, int, float], int]] = field(default_factory=list)

    def write(self, writer: TraceWriter, entries: list, last: bool = False) -> None:
        todo = [(e, 0) for e in entries] + self.waiting
        unmatched = iter(writer.set_worker_send(e for e, _ in todo))
        nxt = next(unmatched, None)
        self.waiting = []
        for entry, tries in todo:
            if entry == nxt:
                if not last and tries < self.MAX_TRIES:
                    self.waiting.append((entry, tries + 1))
                nxt = next(unmatched, None)


def master_meta(job: MasterJob) -> dict:
    """The master's CPU and wall seconds since set-up, and its collector's figures:
    the collections run between requests (count, total, longest) and those that
    started inside a request anyway (gc_in_request, 0 unless something forced one)."""
    usage = dict(rank=0, cpu_s=job.usage.cpu_s(), wall_s=job.usage.wall_s())
    return {"master": usage, **job.gc.meta()}


def reliability_meta(engine: MasterEngine, failure: BaseException | None = None) -> dict:
    """What the run survived: dead workers and when they were seen, stuck ones, leaks;
    and the worker error that ended it, if one did (see worker_error)."""
    return dict(
        fault_tolerance="ulfm" if ulfm_enabled() else "none",
        liveness_channel=engine.liveness_meta(),
        dead_workers=sorted(engine.dead.values(), key=lambda d: d["t"]),
        unresponsive_workers=engine.unresponsive,
        worker_error=worker_error(failure),
        worker_errors_at_shutdown=engine.later_errors,
        open_receives_at_end=len(engine.late),
        open_sends_at_end=len(engine.sends),
    )


def worker_error(failure: BaseException | None) -> dict | None:
    """A WorkerError as the trace keeps it: its one line, and the worker's stack (with
    its rank and host) that rank 0 printed once under it. None for any other end."""
    if not isinstance(failure, WorkerError):
        return None
    message, stack = split_report(str(failure))
    return dict(message=message, traceback=stack)
