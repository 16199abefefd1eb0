"""What a rank does while it waits: poll and sleep, never spin; and no GC in a request.

Open MPI's blocking calls (Recv, Send, Wait, a pickled recv) poll the network in a
loop that keeps a core busy for as long as they wait. A worker waits most of its life,
and on the emulated testbed (a 0.15-core quota per worker) that spinning used the
whole quota. So every wait of a worker is a test followed by a short sleep that
grows while nothing comes (:class:`Backoff`, like mpi4py.futures' back-off), and the
master's wait polls the same way (runtime.transport.Transport.wait_some).

The cyclic garbage collector is the other source of pauses no request asked for: a
generation-2 collection scans every object alive, the model's included. Each rank
freezes its heap once set-up is done (``gc.freeze``: the weights and the rest of the
long-lived heap are never scanned again) and runs collections only where they cannot
delay a round (:class:`GcWatch`: between requests on the master, when idle on a
worker). CPU seconds are measured with :class:`Usage`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

START_S = 20e-6  # the first sleep of a wait
GROWTH = 1.25  # each sleep this many times the one before ...
CAP_S = 2e-3  # ... up to this (reached after ~8 ms without a message)


class Backoff:
    """The sleeps of a poll loop: ``start``, then ``growth`` times the previous one,
    never more than ``cap``; :meth:`reset` when something arrived.

    Since the sleeps grow geometrically, the next one is about (growth - 1) times
    the time already slept: a message that comes after a wait of t is seen at most
    ~max(start, 0.25 t) later (with the default growth, plus the timer's slack), and
    never more than ``cap`` later. A worker fed a stream of tasks therefore reacts
    within a quarter of the gap between them, and one idle for long wakes up
    1/cap = 500 times a second: a few thousandths of a core.
    """

    def __init__(
        self,
        start: float = START_S,
        cap: float = CAP_S,
        growth: float = GROWTH,
        sleep: Callable[[float], object] = time.sleep,
    ):
        if not 0 < start <= cap:
            raise ValueError(f"need 0 < start <= cap, got start={start}, cap={cap}")
        if growth < 1:
            raise ValueError(f"growth must be >= 1, got {growth}")
        self.start, self.cap, self.growth = start, cap, growth
        self._sleep = sleep
        self.pause = start  # the next sleep
        self.slept = 0.0  # seconds slept since the last reset
        self.sleeps = 0  # sleeps since the last reset

    def reset(self) -> None:
        self.pause, self.slept, self.sleeps = self.start, 0.0, 0

    def sleep(self) -> None:
        self._sleep(self.pause)
        self.slept += self.pause
        self.sleeps += 1
        self.pause = min(self.cap, self.pause * self.growth)


def poll(ready: Callable[[], T], backoff: Backoff | None = None) -> T:
    """Call ``ready`` until it returns something true, sleeping in between; that value.

    E.g. ``poll(request.Test)`` instead of ``request.Wait()`` (which spins)."""
    backoff = Backoff() if backoff is None else backoff
    while not (result := ready()):
        backoff.sleep()
    return result


class Usage:
    """CPU seconds (user + system, every thread of this process) and wall seconds
    since it was made."""

    def __init__(
        self,
        cpu: Callable[[], float] = time.process_time,
        wall: Callable[[], float] = time.perf_counter,
    ):
        self._cpu, self._wall = cpu, wall
        self.cpu0, self.wall0 = cpu(), wall()

    def cpu_s(self) -> float:
        return self._cpu() - self.cpu0

    def wall_s(self) -> float:
        return self._wall() - self.wall0


class GcWatch:
    """Collect only where no request waits for it, and prove it with gc.callbacks.

    :meth:`freeze` after set-up; :meth:`serving` around the request loop (automatic
    collection off, restored at the end); :meth:`begin` / :meth:`end` around each
    request. ``end`` runs, timed, the collection the automatic collector would have
    run by now (:meth:`due`: the oldest generation whose count passed its
    threshold), so collections keep their usual pace, only moved out of requests: a
    full collection after every 1 ms LeNet request would cost more than the request.
    A collection that starts between ``begin`` and ``end`` anyway (something called
    gc.collect) is counted in ``inside`` and timed in ``inside_s``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, collector=gc):
        self.clock, self.gc = clock, collector
        self.busy = False  # between begin and end
        self.collections = 0  # our own timed collections (between requests / idle)
        self.total_s = 0.0
        self.max_pause_s = 0.0
        self.inside = 0  # collections that started while busy
        self.inside_s = 0.0
        self.frozen = 0  # objects gc.freeze moved to the permanent generation
        self._t_inside: float | None = None
        self._was_enabled = True

    def freeze(self) -> None:
        """Collect once, then move every object alive to the permanent generation."""
        self.gc.collect()
        self.gc.freeze()
        self.frozen = self.gc.get_freeze_count()

    @contextmanager
    def serving(self) -> Iterator[GcWatch]:
        self._was_enabled = self.gc.isenabled()
        self.gc.disable()
        self.gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            self.busy = False
            self.gc.callbacks.remove(self._callback)
            if self._was_enabled:
                self.gc.enable()

    def begin(self) -> None:
        self.gc.disable()
        self.busy = True

    def end(self, collect: bool = True) -> None:
        self.busy = False
        if collect and (generation := self.due()) is not None:
            self.collect(generation)

    def due(self) -> int | None:
        """The generation the automatic collector would collect now, if any."""
        counts, thresholds = self.gc.get_count(), self.gc.get_threshold()
        over = [g for g in range(3) if thresholds[g] and counts[g] > thresholds[g]]
        return max(over) if over else None

    def collect(self, generation: int = 2) -> float:
        """One collection (full by default), timed; its duration."""
        t0 = self.clock()
        self.gc.collect(generation)
        pause = self.clock() - t0
        self.collections += 1
        self.total_s += pause
        self.max_pause_s = max(self.max_pause_s, pause)
        return pause

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start" and self.busy:
            self.inside += 1
            self._t_inside = self.clock()
        elif phase == "stop" and self._t_inside is not None:
            self.inside_s += self.clock() - self._t_inside
            self._t_inside = None

    def meta(self, prefix: str = "gc_") -> dict:
        return {
            f"{prefix}collections": self.collections,
            f"{prefix}total_s": self.total_s,
            f"{prefix}max_pause_s": self.max_pause_s,
            f"{prefix}in_request": self.inside,
            f"{prefix}in_request_s": self.inside_s,
            f"{prefix}frozen_objects": self.frozen,
        }
