"""In-process MPI tests of the master/worker runtime (pytest-mpi).

Run: mpirun -np 4 --oversubscribe python -m pytest --with-mpi -m mpi tests/test_mpi_runtime.py
Every test runs on all ranks: rank 0 drives a MasterEngine, the others serve as
workers through the same run_worker the job uses. Rank 0 always shuts the workers
down in a finally block, so a failing assertion never leaves the others waiting.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

mpi4py = pytest.importorskip("mpi4py")
from mpi4py import MPI  # noqa: E402

from cocoi_mpi.engine.proxies import install  # noqa: E402
from cocoi_mpi.engine.rows import RoundShortfall  # noqa: E402
from cocoi_mpi.runtime.master import MasterEngine, WorkerError  # noqa: E402
from cocoi_mpi.runtime.transport import elements_received  # noqa: E402
from cocoi_mpi.runtime.worker import run_worker  # noqa: E402

pytestmark = pytest.mark.mpi(min_size=3)


def odd_cnn() -> nn.Module:
    """Kernel 5 / stride 2 / dilation 2, 'same' padding, groups, no-bias: odd geometry."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 5, stride=2, padding=3, dilation=2),
        nn.BatchNorm2d(8).eval(),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", groups=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


def run_coded(comm, k: int, silent=(), requests: int = 2, extra=None):
    """Rank 0: run ``requests`` forwards through the workers; others: serve. Returns
    (max relative error, engine) on rank 0, None elsewhere."""
    if comm.Get_rank() != 0:
        run_worker(comm)
        return None
    workers = range(1, comm.Get_size())
    engine = MasterEngine(comm, workers, k, "rotation", silent=silent)
    model = odd_cnn()
    x = torch.randn(1, 3, 21, 43, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    try:
        engine.setup(install(model, engine))
        worst = 0.0
        for req in range(requests):
            engine.request = req
            with torch.no_grad():
                out = model(x)
            worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
        if extra is not None:
            extra(engine, model)
    finally:
        engine.logs = engine.shutdown()
        engine.say_farewell()
    return worst, engine


@pytest.fixture
def comm():
    comm = MPI.COMM_WORLD.Dup()
    yield comm
    comm.Free()


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_elements_received_counts_a_short_reply(dtype):
    """A reply shorter than the posted buffer is measured in the buffer's elements
    (the master tells a trailer-only notice from a result this way)."""
    sent = np.arange(7, dtype=dtype)
    buffer = np.zeros(16, dtype=dtype)
    request = MPI.COMM_SELF.Irecv(buffer, source=0, tag=9)
    MPI.COMM_SELF.Send(sent, dest=0, tag=9)
    status = MPI.Status()
    request.Wait(status)
    assert elements_received(status, buffer) == 7
    assert (buffer[:7] == sent).all()


def test_coded_forward_matches_local(comm):
    n = comm.Get_size() - 1
    result = run_coded(comm, k=max(1, n - 1))
    if result is not None:
        worst, engine = result
        assert worst < 1e-5
        rounds, subtasks = engine.take_rows()
        assert len(rounds) == 3 * 2  # three type-1 convs, two requests
        assert all(r["n_used"] == r["k"] for r in rounds)


def test_every_silent_pattern_decodes_exactly(comm):
    """Every set of up to n-k workers that never reply still gives exact logits."""
    n = comm.Get_size() - 1
    k = max(1, n - 2)
    for r in range(n - k + 1):
        for silent in itertools.combinations(range(1, n + 1), r):
            result = run_coded(comm, k=k, silent=silent, requests=1)
            if result is not None:
                worst, engine = result
                assert worst < 1e-5, f"silent={silent}"
                rounds, subtasks = engine.take_rows()
                for row in rounds:
                    used = {int(w) for w in row["used_workers"].split(",")}
                    assert not used & set(silent)
                    assert row["n_failed"] == len(silent)
                failed = {s["worker"] for s in subtasks if s["status"] == "failed"}
                assert failed == set(silent)
            comm.Barrier()


def test_late_replies_are_drained_and_recorded(comm):
    """With k=1 most replies arrive after decoding; all are received by shutdown."""
    result = run_coded(comm, k=1, requests=3)
    if result is not None:
        worst, engine = result
        assert worst < 1e-5
        assert engine.late == [] and engine.sends == []
        rounds, subtasks = engine.take_rows()
        n = comm.Get_size() - 1
        statuses = {s["status"] for s in subtasks}
        assert statuses <= {"used", "late", "skipped"}
        assert len(subtasks) == n * len(rounds)  # one row per subtask, none lost
        assert sum(s["status"] == "used" for s in subtasks) == len(rounds)
        assert len(engine.logs) == n


def test_worker_exception_reaches_master(comm):
    """A worker that fails sends the error as data; the master raises WorkerError."""

    def unknown_layer(engine, model):
        spec = next(m.spec for m in model.modules() if hasattr(m, "spec"))
        bogus = type(spec)(
            99,
            "bogus",
            spec.weight,
            spec.stride,
            spec.dilation,
            spec.groups,
            spec.pad_h,
            spec.pad_w,
        )
        x = torch.randn(1, 8, 11, 22)
        with pytest.raises(WorkerError, match="layer 99"):
            engine.run_conv(bogus, x)

    run_coded(comm, k=1, requests=1, extra=unknown_layer)


def test_round_fails_cleanly_when_nobody_can_reply(comm):
    """With every worker silent a round cannot decode: an error under
    on_shortfall="error", the master's own conv (flagged as a fallback) otherwise."""
    n = comm.Get_size() - 1

    def all_silent(engine, model):
        engine.silent = frozenset(range(1, n + 1))
        x = torch.randn(1, 3, 21, 43)
        engine.on_shortfall = "error"
        with pytest.raises(RoundShortfall, match="cannot decode"):
            with torch.no_grad():
                model(x)
        engine.take_rows()
        engine.on_shortfall = "local"
        with torch.no_grad():
            out = model(x)
            with engine.local_only():
                ref = model(x)
        assert torch.allclose(out, ref, atol=1e-5)
        rounds, subtasks = engine.take_rows()
        assert rounds and all(r["fallback"] for r in rounds)
        assert {s["status"] for s in subtasks} == {"failed"}

    run_coded(comm, k=1, requests=1, extra=all_silent)


def test_round_deadline_counts_stuck_workers_as_failed(comm):
    """A worker that hangs past the round's deadline counts as failed for that round:
    uncoded re-sends its piece to another worker; when every worker hangs nobody is
    left to ask and the master computes the round itself. Both stay exact; the hung
    subtasks are recorded as 'timeout'."""
    from cocoi_mpi.experiment.scenarios import Crash

    n = comm.Get_size() - 1
    x = torch.randn(1, 3, 21, 43, generator=torch.Generator().manual_seed(4))

    def hang(engine, model):
        engine.round_timeout = 0.3
        for req, scheme in enumerate(["uncoded", "cocoi"]):
            engine.use(scheme, n)
            hung = [1] if scheme == "uncoded" else range(1, n + 1)
            engine.crashes = [Crash(rank, req, "hang", 1.0) for rank in hung]
            engine.begin_request(req)
            with torch.no_grad():
                out = model(x)
                with engine.local_only():
                    ref = model(x)
            assert torch.allclose(out, ref, atol=1e-4), scheme
        engine.kept = engine.take_rows()

    result = run_coded(comm, k=n, requests=0, extra=hang)
    if result is not None:
        _, engine = result
        rounds, subtasks = engine.kept
        subtasks = subtasks + engine.subtasks  # late rows resolved at shutdown
        first = {req: min(r["round"] for r in rounds if r["request"] == req) for req in (0, 1)}
        for req in (0, 1):
            row = next(r for r in rounds if r["round"] == first[req])
            mine = [s for s in subtasks if s["round"] == first[req]]
            timed_out = sorted(s["worker"] for s in mine if s["status"] == "timeout")
            assert timed_out == ([1] if req == 0 else list(range(1, n + 1)))
            assert row["fallback"] == (req == 1)


@pytest.mark.parametrize("scheme", ["cocoi", "uncoded", "replication", "lt-kl", "lt-ks"])
def test_every_scheme_is_exact_under_failures_and_straggling(comm, scheme):
    """Scenario 3 (one failure per round + a straggler), then scenario 1: exact logits."""
    from cocoi_mpi.experiment.scenarios import Scenario

    n = comm.Get_size() - 1

    def scenarios(engine, model):
        x = torch.randn(1, 3, 21, 43, generator=torch.Generator().manual_seed(1))
        for scenario in (
            Scenario(3, failures=min(1, n - 1), straggler_factor=1.5),
            Scenario(1, lambda_tr=0.5, link_mbps=1000),
        ):
            engine.use(scheme, max(1, n - 1))
            engine.set_scenario(scenario, seed=5)
            for req in range(2):
                engine.begin_request(req)
                with torch.no_grad():
                    out = model(x)
                with torch.no_grad(), engine.local_only():
                    ref = model(x)
                tol = 1e-4 if scheme.startswith("lt") else 1e-5
                assert float((out - ref).abs().max() / ref.abs().max()) < tol
        rounds, subtasks = engine.take_rows()
        if scenario.kind == 3 and n > 1:
            assert any(s["status"] == "failed" for s in subtasks)

    run_coded(comm, k=max(1, n - 1), requests=0, extra=scenarios)


@pytest.mark.parametrize("detection, wait", [("after=0.3", 0.3), ("never", 0.4)])
def test_uncoded_resends_a_failed_piece_only_once_the_failure_is_noticed(comm, detection, wait):
    """Scenario 2 with a detection delay (issue 18): the worker's notice comes at once,
    but the master acts on it only when the detection would have: after 0.3 s, or at
    the round's 0.4 s deadline. The re-sent piece leaves no earlier; the run is exact,
    also under jitter."""
    from cocoi_mpi.experiment.scenarios import Scenario

    n = comm.Get_size() - 1
    if n < 2:
        pytest.skip("needs a live worker beside the failed one")

    def failing(engine, model):
        x = torch.randn(1, 3, 21, 43, generator=torch.Generator().manual_seed(2))
        engine.use("uncoded", n)
        engine.round_timeout = 0.4
        scenario = Scenario(2, failures=1, detection=detection, jitter="0.3/0.3")
        engine.set_scenario(scenario, seed=3)
        engine.begin_request(0)
        with torch.no_grad():
            out = model(x)
            with engine.local_only():
                ref = model(x)
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
        engine.kept = engine.take_rows()

    result = run_coded(comm, k=n, requests=0, extra=failing)
    if result is not None:
        _, engine = result
        _, subtasks = engine.kept
        failed = [s for s in subtasks if s["status"] == "failed"]
        assert failed
        for f in failed:
            again = [
                s for s in subtasks
                if s["round"] == f["round"] and s["code_row"] == f["code_row"] and s is not f
            ]  # fmt: skip
            assert again, f"round {f['round']}: piece {f['code_row']} was never re-sent"
            assert min(s["sent_t"] for s in again) >= f["sent_t"] + wait - 1e-3
