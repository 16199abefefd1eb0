"""Waiting without spinning, collections only between requests, CPU accounting.

The unit tests run serially and never time anything: the back-off's sleeps go to an
injected function, the collector's clock is injected. The end-to-end test runs a
small job under mpirun and checks what the trace records (no wall-clock thresholds:
the suite runs on loaded machines).
"""

from __future__ import annotations

import gc

import pytest
from test_e2e import MPIRUN, mpirun

from cocoi_mpi.runtime.idle import CAP_S, GROWTH, START_S, Backoff, GcWatch, Usage, poll
from cocoi_mpi.traces.reader import read_trace


def recorded(**kwargs) -> tuple[Backoff, list[float]]:
    sleeps: list[float] = []
    return Backoff(sleep=sleeps.append, **kwargs), sleeps


def test_backoff_grows_geometrically_up_to_the_cap():
    backoff, sleeps = recorded(start=1.0, cap=8.0, growth=2.0)
    for _ in range(6):
        backoff.sleep()
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.slept == sum(sleeps) and backoff.sleeps == 6


def test_backoff_reset_starts_over():
    backoff, sleeps = recorded(start=1.0, cap=8.0, growth=2.0)
    for _ in range(3):
        backoff.sleep()
    backoff.reset()
    assert (backoff.slept, backoff.sleeps, backoff.pause) == (0.0, 0, 1.0)
    backoff.sleep()
    assert sleeps == [1.0, 2.0, 4.0, 1.0]


def test_default_backoff_reacts_within_a_quarter_of_the_wait():
    """Each sleep is at most start + (growth - 1) x the time already slept: a message
    arriving after a wait of t is seen at most ~t/4 later; the cap is reached only
    after several milliseconds of waiting."""
    backoff, sleeps = recorded()
    for _ in range(200):
        before = backoff.slept
        backoff.sleep()
        assert sleeps[-1] <= START_S + (GROWTH - 1) * before + 1e-15
        assert sleeps[-1] <= CAP_S
    assert sleeps[0] == START_S
    assert sleeps[-1] == CAP_S
    first_cap = sleeps.index(CAP_S)
    assert sum(sleeps[:first_cap]) > 5e-3  # idle for milliseconds before the cap
    assert all(a <= b for a, b in zip(sleeps, sleeps[1:], strict=False))


def test_backoff_rejects_bad_settings():
    with pytest.raises(ValueError):
        Backoff(start=0.0)
    with pytest.raises(ValueError):
        Backoff(start=2.0, cap=1.0)
    with pytest.raises(ValueError):
        Backoff(growth=0.5)


def test_poll_sleeps_between_tries_and_returns_the_value():
    answers = iter([None, False, 0, "message"])
    backoff, sleeps = recorded(start=1.0, cap=3.0, growth=2.0)
    assert poll(lambda: next(answers), backoff) == "message"
    assert sleeps == [1.0, 2.0, 3.0]


def test_poll_does_not_sleep_when_ready_at_once():
    backoff, sleeps = recorded()
    assert poll(lambda: True, backoff) is True
    assert sleeps == []


def test_usage_measures_from_its_start():
    cpu, wall = iter([1.0, 3.5]), iter([10.0, 14.0])
    usage = Usage(cpu=lambda: next(cpu), wall=lambda: next(wall))
    assert usage.cpu_s() == 2.5
    assert usage.wall_s() == 4.0


def test_usage_counts_this_process_cpu():
    usage = Usage()
    sum(i * i for i in range(200_000))
    assert usage.cpu_s() >= 0.0 and usage.wall_s() >= 0.0


class FakeCollector:
    """Records freeze/collect; callbacks and enable state like the gc module's."""

    def __init__(self):
        self.callbacks: list = []
        self.enabled = True
        self.collected: list[int] = []  # generations, in order
        self.frozen = 0
        self.counts = (0, 0, 0)

    def collect(self, generation=2):
        for cb in list(self.callbacks):
            cb("start", {"generation": generation})
        self.collected.append(generation)
        for cb in list(self.callbacks):
            cb("stop", {"generation": generation})

    def get_count(self):
        return self.counts

    def get_threshold(self):
        return (700, 10, 10)

    def freeze(self):
        self.frozen = 123

    def get_freeze_count(self):
        return self.frozen

    def isenabled(self):
        return self.enabled

    def enable(self):
        self.enabled = True

    def disable(self):
        self.enabled = False


def test_gc_watch_collects_between_requests_only():
    """end() runs the collection that is due (as gc's thresholds say), none if none."""
    ticks = iter(float(t) for t in range(100))
    fake = FakeCollector()
    watch = GcWatch(clock=lambda: next(ticks), collector=fake)
    watch.freeze()
    assert fake.collected == [2] and watch.frozen == 123
    with watch.serving():
        assert not fake.enabled and fake.callbacks
        for counts in [(701, 0, 0), (10, 0, 0), (701, 11, 0), (701, 11, 11)]:
            watch.begin()
            assert watch.busy and not fake.enabled
            fake.counts = counts  # what the request allocated
            watch.end()
            assert not watch.busy
    assert fake.enabled and not fake.callbacks
    assert fake.collected == [2, 0, 1, 2]
    assert watch.collections == 3
    assert watch.total_s == 3.0 and watch.max_pause_s == 1.0
    assert watch.inside == 0
    meta = watch.meta()
    assert meta["gc_in_request"] == 0 and meta["gc_collections"] == 3


def test_gc_watch_counts_a_collection_forced_inside_a_request():
    """With the real collector: gc.collect() inside begin/end is counted."""
    watch = GcWatch()
    was_enabled = gc.isenabled()
    with watch.serving():
        watch.begin()
        gc.collect()
        watch.end(collect=False)
        gc.collect()  # between requests: not counted as inside
    assert watch.inside == 1 and watch.inside_s >= 0.0
    assert watch.collections == 0
    assert gc.isenabled() == was_enabled
    assert watch._callback not in gc.callbacks


def test_gc_watch_restores_a_disabled_collector():
    fake = FakeCollector()
    fake.enabled = False
    with GcWatch(collector=fake).serving():
        pass
    assert not fake.enabled


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")
def test_job_records_cpu_and_no_collection_inside_requests(tmp_path):
    out = tmp_path / "idle.h5"
    proc = mpirun(4, "--model", "lenet5", "--requests", "4", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    attrs = read_trace(out).attrs
    workers = attrs["workers"]
    assert sorted(w["rank"] for w in workers) == [1, 2, 3]
    for log in workers:
        for key in ("cpu_s", "compute_s", "wall_s"):
            assert isinstance(log[key], float), (key, log)
        assert 0.0 <= log["compute_s"] <= log["wall_s"]
        assert 0.0 <= log["compute_cpu_s"] <= log["cpu_s"]
        assert log["gc_in_request"] == 0
    master = attrs["master"]
    assert master["cpu_s"] >= 0.0 and master["wall_s"] > 0.0
    assert attrs["gc_in_request"] == 0
    assert attrs["gc_collections"] <= 4  # at most one after each request
    assert 0.0 <= attrs["gc_max_pause_s"] <= attrs["gc_total_s"]
    assert attrs["gc_frozen_objects"] > 0
