"""--resume end to end: a small LeNet-5 sweep on 4 ranks is cut off by SIGTERM (what
Slurm sends at a time limit) or by SIGKILL of mpirun, then resumed; the finished
trace must hold the cells of an uninterrupted run, each request once, with the same
logits and the same injected faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_e2e import MPIRUN, error_lines, mpi_env, mpirun

from cocoi_mpi.traces.reader import read_trace

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")

# 6 cells x 2 requests; the emulated link makes a request take ~0.2-0.5 s, so a signal
# sent when a request's line appears lands inside the next one.
SWEEP = """\
model = "lenet5"
requests = 2
[sweep]
schemes = ["cocoi", "uncoded", "replication"]
repetitions = 1
scenarios = [{scenario = 2, failures = 0, link_mbps = 0.2},
             {scenario = 2, failures = 1, link_mbps = 0.2}]
"""
NP = 4
TOTAL = 12


@pytest.fixture(scope="module")
def sweep_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "sweep.toml"
    path.write_text(SWEEP)
    return path


@pytest.fixture(scope="module")
def uninterrupted(sweep_toml) -> Path:
    """The same sweep, never cut off: what a resumed trace must equal."""
    out = sweep_toml.with_name("whole.h5")
    proc = mpirun(NP, "--config", str(sweep_toml), "--out", str(out), "--quiet", timeout=180)
    assert proc.returncode == 0, proc.stderr
    return out


def cut_off(toml: Path, out: Path, sig: signal.Signals, after: int, *extra: str) -> int:
    """Start the sweep, send ``sig`` to mpirun once request ``after`` is written, and
    wait until every rank is gone: after a SIGKILL of mpirun alone its ranks live on
    for a moment (the master may even write another request), as they would not under
    Slurm, which kills the whole job."""
    cmd = [MPIRUN, "-np", str(NP), "--oversubscribe", "--bind-to", "none", sys.executable]
    cmd += ["-m", "cocoi_mpi.run", "--config", str(toml), "--out", str(out), *extra]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=mpi_env(), start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith(f"request {after}/{TOTAL} "):
                proc.send_signal(sig)
                break
        proc.stdout.read()
        return proc.wait(timeout=60)
    finally:
        reap(proc.pid)


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (mpirun's: each rank has a process group of its own)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def reap(sid: int, patience: float = 30.0) -> None:
    """Wait for mpirun's session to empty; SIGKILL what is left after ``patience``."""
    deadline = time.monotonic() + patience
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def resume(toml: Path, out: Path):
    return mpirun(NP, "--config", str(toml), "--out", str(out), "--resume", timeout=180)


def cell_keys(trace) -> list[tuple]:
    req = trace.requests
    return list(zip(req["scheme"], req["level"], req["repetition"], strict=True))


def assert_same_as_uninterrupted(out: Path, whole: Path) -> None:
    """Same cells in the same order, each request once, bit-identical logits, the same
    faults (the failed workers of every round), round ids as an uninterrupted run's."""
    got, want = read_trace(out), read_trace(whole)
    assert got.complete and got.status == "complete"
    assert list(got.requests["request"]) == list(range(TOTAL))
    assert cell_keys(got) == cell_keys(want)
    assert len(set(cell_keys(got))) == TOTAL // 2  # 6 cells of 2 requests, none twice
    np.testing.assert_array_equal(got.logits, want.logits)
    assert list(got.rounds["round"]) == list(want.rounds["round"])
    for trace in (got, want):
        assert set(trace.rounds["request"]) == set(range(TOTAL))
        assert set(trace.subtasks["request"]) == set(range(TOTAL))
    assert failed_workers(got) == failed_workers(want)
    assert (got.requests["rel_err"] <= 1e-4).all()


def failed_workers(trace) -> dict[int, list]:
    """Per round, the workers the injected faults failed."""
    sub = trace.subtasks
    out: dict[int, list] = {}
    for rnd, worker, status in zip(sub["round"], sub["worker"], sub["status"], strict=True):
        if status == "failed":
            out.setdefault(int(rnd), []).append(int(worker))
    return {rnd: sorted(workers) for rnd, workers in out.items()}


def test_a_sweep_cut_off_twice_resumes_to_the_uninterrupted_trace(sweep_toml, uninterrupted):
    """SIGTERM in the 2nd cell; resumed, SIGKILL of mpirun in the 5th; resumed again."""
    out = sweep_toml.with_name("cut.h5")
    assert cut_off(sweep_toml, out, signal.SIGTERM, 3) != 0
    first = read_trace(out)
    assert not first.complete and 3 <= first.n_rows("requests") < TOTAL
    assert cut_off(sweep_toml, out, signal.SIGKILL, 9, "--resume") != 0
    second = read_trace(out)
    assert not second.complete and 9 <= second.n_rows("requests") < TOTAL
    proc = resume(sweep_toml, out)
    assert proc.returncode == 0, proc.stderr
    kept = second.n_rows("requests") // 2
    assert f"resuming {out}: {kept} complete cells kept" in proc.stdout
    served = [line for line in proc.stdout.splitlines() if line.startswith("request ")]
    assert served[0].startswith(f"request {2 * kept + 1}/{TOTAL} ")
    assert_same_as_uninterrupted(out, uninterrupted)
    resumed = read_trace(out).attrs["resumed"]
    assert [r["kept_cells"] for r in resumed] == [first.n_rows("requests") // 2, kept]
    # "interrupted: stopped by SIGTERM", or "failed: OSError ..." when the master lost
    # its stdout (mpirun gone) before it saw the signal
    assert resumed[0]["previous_status"].startswith(("interrupted", "failed"))


def test_resume_refuses_a_trace_from_another_config(sweep_toml, uninterrupted, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(SWEEP.replace('model = "lenet5"', 'model = "lenet5"\nseed = 7'))
    before = uninterrupted.read_bytes()
    proc = resume(other, uninterrupted)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "another config (seed differ)" in line
    assert uninterrupted.read_bytes() == before
