"""End to end: real worker deaths, hangs, exceptions and signals (issue 6).

Every test launches mpirun in a subprocess, as a user would. Deaths are real: a
worker SIGKILLs itself (``--crash RANK@REQUEST``) or this test SIGKILLs it from
outside. Under ``mpirun --with-ft ulfm`` the run must finish with the same logits as
a local forward; without ULFM, mpirun ends the job, and the trace must hold every
request finished before and say it is incomplete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_e2e import MPIRUN, assert_matches_local, error_lines, mpi_env

from cocoi_mpi.traces.reader import read_trace

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")


def marked_env(marker: str) -> dict:
    """mpirun's environment with a marker that lets a test find its ranks in /proc."""
    return mpi_env(COCOI_TEST_MARKER=marker)


# No heartbeat detector: it declared live but starved ranks dead on a loaded machine.
# Deaths are seen by PRRTE (signals, exit 0) and by the liveness channel (any exit);
# see docs/reliability.md.
def command(np_: int, *args: str, ulfm: bool = False) -> list[str]:
    ft = ["--with-ft", "ulfm"] if ulfm else []
    return [
        MPIRUN,
        *ft,
        "-np",
        str(np_),
        "--oversubscribe",
        "--bind-to",
        "none",
        sys.executable,
        "-m",
        "cocoi_mpi.run",
        *args,
    ]


def run(np_: int, *args: str, ulfm: bool = False, timeout: int = 300):
    """Run mpirun; a run past the timeout fails the test with the output it had so far."""
    cmd = command(np_, *args, ulfm=ulfm)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"mpirun ran past {timeout} s: {' '.join(cmd)}\n{_tails(hung)}")


def _tails(hung: subprocess.TimeoutExpired) -> str:
    """The last lines mpirun wrote before it was killed (a hang's only witness)."""
    parts = []
    for name, data in (("stdout", hung.stdout), ("stderr", hung.stderr)):
        text = data.decode(errors="replace") if isinstance(data, bytes) else data or ""
        parts.append(f"--- {name}:\n" + "\n".join(text.splitlines()[-40:]))
    return "\n".join(parts)


def lenet(out: Path, requests: int, *extra: str) -> list[str]:
    return ["--model", "lenet5", "--requests", str(requests), "--out", str(out), *extra]


def reliability(path: Path) -> dict:
    return read_trace(path).attrs["reliability"]


def statuses_of(path: Path, rank: int) -> list[str]:
    sub = read_trace(path).subtasks
    return [str(s) for s in sub["status"][sub["worker"] == rank]]


def assert_no_tracebacks(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------ ULFM: deaths survived


@pytest.mark.parametrize(
    "scheme, crash",
    [
        ("cocoi", "2@2"),  # one worker SIGKILLed
        ("cocoi", "2@1,4@3"),  # r = n - k workers SIGKILLed
        ("cocoi", "3@1:exit"),  # a crash that exits without a signal
        ("uncoded", "2@1"),  # needs every piece: the dead worker's is re-sent
        ("replication", "1@1,4@2"),
    ],
)
def test_worker_deaths_survived_under_ulfm(tmp_path, scheme, crash):
    out = tmp_path / "run.h5"
    args = lenet(out, 6, "--scheme", scheme, "--crash", crash, "--k", "2", "--seed", "4")
    proc = run(5, *args, ulfm=True)
    exited = crash.endswith(":exit")  # mpirun then reports the rank's exit status 1
    assert proc.returncode == (1 if exited else 0), proc.stderr[-3000:]
    assert_no_tracebacks(proc)
    assert_matches_local(out, "lenet5", 4, 6)
    ranks = sorted(int(entry.split("@")[0]) for entry in crash.split(","))
    rel = reliability(out)
    assert rel["fault_tolerance"] == "ulfm"
    assert rel["liveness_channel"] == {"on": True, "watched": [1, 2, 3, 4], "missing": []}
    assert sorted(d["rank"] for d in rel["dead_workers"]) == ranks
    assert rel["open_receives_at_end"] == 0 and rel["open_sends_at_end"] == 0
    rounds = read_trace(out).rounds
    seen = {d["rank"]: d["round"] for d in rel["dead_workers"]}
    for rank, detected in seen.items():  # once seen dead, never used again
        later = rounds["round"] > detected
        used = [set(map(int, str(u).split(","))) for u in rounds["used_workers"][later]]
        assert all(rank not in u for u in used)
        assert "dead" in statuses_of(out, rank)
    assert (
        "fault tolerance ulfm"
        in subprocess.run(
            [sys.executable, "-m", "cocoi_mpi.cli", "report", str(out)],
            capture_output=True,
            text=True,
            env=mpi_env(),
        ).stdout
    )


def signal_rank_mid_run(tmp_path, act) -> tuple:
    """Start 400 LeNet-5 requests under ULFM, and once request 20 is out call
    ``act(pid of rank 3)``; returns (mpirun's process, what act returned, its stderr,
    the trace path)."""
    out = tmp_path / "run.h5"
    marker = f"cocoi-{os.getpid()}-{time.time_ns()}"
    cmd = command(5, *lenet(out, 400, "--k", "2", "--seed", "2"), ulfm=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(marker)
    )
    try:
        wait_for_line(proc, "request 20/")
        acted = act(rank_pid(marker, 3))
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, acted, stderr, out


def kill_now(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.time()


def stop_for_a_while(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(STOP_S)
    os.kill(pid, signal.SIGCONT)


def test_external_sigkill_mid_run_is_survived(tmp_path):
    """SIGKILL from outside, while requests are in flight: the run goes on, and the
    trace records when the master saw the death (the detection time)."""
    proc, killed_at, stderr, out = signal_rank_mid_run(tmp_path, kill_now)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert_matches_local(out, "lenet5", 2, 400)
    dead = reliability(out)["dead_workers"]
    assert [d["rank"] for d in dead] == [3]
    detection = dead[0]["wall"] - killed_at
    assert 0 <= detection < 30, detection
    print(f"detection time {1e3 * detection:.1f} ms")


def test_stopped_worker_is_not_declared_dead(tmp_path):
    """SIGSTOP is CPU starvation taken to the limit: the worker runs not at all for a
    while. It must come back as a live worker: nobody is declared dead, the run ends
    with 0 and its logits are exact (the heartbeat detector failed exactly this)."""
    proc, _, stderr, out = signal_rank_mid_run(tmp_path, stop_for_a_while)
    assert proc.returncode == 0, stderr[-3000:]
    assert reliability(out)["dead_workers"] == []
    assert_matches_local(out, "lenet5", 2, 400)


STOP_S = 5.0  # far past the old heartbeat timeout (1 s); the run goes on without rank 3


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    """Read the job's stdout until a line contains ``text``."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if text in line:
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never saw {text!r}; stderr: {proc.stderr.read()[-2000:]}")


def rank_pid(marker: str, rank: int) -> int:
    """The pid of MPI rank ``rank`` of the job started with this marker (Linux /proc)."""
    want = {f"COCOI_TEST_MARKER={marker}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return int(entry.name)
    raise AssertionError(f"rank {rank} of {marker} not found in /proc")


# ------------------------------------------------------------------ without ULFM: job ends


def test_death_without_ulfm_keeps_finished_requests(tmp_path):
    """Plain mpirun aborts the job on a death; the trace keeps what was finished and
    says it is incomplete."""
    out = tmp_path / "run.h5"
    proc = run(5, *lenet(out, 200, "--crash", "2@5", "--quiet"))
    assert proc.returncode != 0
    trace = read_trace(out)
    assert not trace.complete
    assert trace.status.startswith(("interrupted", "running")), trace.status
    n = len(trace.requests["request"])
    assert n >= 5 and trace.logits.shape[0] == n
    assert np.isfinite(trace.requests["latency"]).all()


# ------------------------------------------------------------------ hangs and shortfalls


def test_hung_worker_times_out_and_run_stays_exact(tmp_path):
    """A worker that stops answering past --round-timeout counts as failed for the
    round; the run decodes from the others and records the subtask as 'timeout'."""
    out = tmp_path / "run.h5"
    args = lenet(out, 4, "--k", "4", "--round-timeout", "0.5", "--crash", "2@1:hang=2")
    proc = run(5, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches_local(out, "lenet5", 0, 4)
    assert "timeout" in statuses_of(out, 2)


def test_shortfall_falls_back_to_master_or_stops(tmp_path):
    """Every worker dead: rounds run on the master, flagged; with --on-shortfall error
    the run stops with one line and a non-zero exit."""
    out = tmp_path / "run.h5"
    crash = "1@1,2@1"
    proc = run(3, *lenet(out, 3, "--k", "1", "--crash", crash), ulfm=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches_local(out, "lenet5", 0, 3)
    rounds = read_trace(out).rounds
    assert rounds["fallback"][rounds["request"] >= 1].all()
    assert not rounds["fallback"][rounds["request"] == 0].any()

    out2 = tmp_path / "stop.h5"
    proc = run(
        3, *lenet(out2, 3, "--k", "1", "--crash", crash, "--on-shortfall", "error"), ulfm=True
    )
    assert proc.returncode == 1
    assert_no_tracebacks(proc)
    lines = error_lines(proc)
    assert len(lines) == 1 and "cannot decode" in lines[0], proc.stderr
    assert not read_trace(out2).complete


# ------------------------------------------------------------------ exceptions


def test_worker_exception_is_one_line_and_nonzero(tmp_path):
    # k = n: every round needs rank 2, so the master meets its error during the run;
    # with k < n the three quick requests could end first, and an error that arrives
    # during shutdown is only logged (reliability.worker_errors_at_shutdown).
    out = tmp_path / "run.h5"
    proc = run(4, *lenet(out, 3, "--k", "3", "--crash", "2@1:raise"), timeout=120)
    assert proc.returncode == 1
    assert_no_tracebacks(proc)
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "worker rank 2" in lines[0] and "fault drill" in lines[0]
    trace = read_trace(out)
    assert not trace.complete and trace.status.startswith("failed: WorkerError")


def test_master_exception_after_setup_ends_every_rank(tmp_path):
    """The output path is a folder: the master fails after the workers got their
    layers; the workers are stopped, one line is printed, the exit is non-zero."""
    proc = run(4, "--model", "lenet5", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 1
    assert_no_tracebacks(proc)
    assert len(error_lines(proc)) == 1, proc.stderr


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("target", ["master", "mpirun"])
def test_sigterm_closes_trace_as_incomplete(tmp_path, target):
    """SIGTERM to rank 0 (what srun and Slurm's time limit send) or to mpirun (which
    forwards it, then kills every rank ~0.2 s later): non-zero exit, a readable trace
    that says it is incomplete, every request before the signal kept."""
    out = tmp_path / "run.h5"
    marker = f"cocoi-{os.getpid()}-{time.time_ns()}"
    cmd = command(4, *lenet(out, 5000))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=marked_env(marker)
    )
    try:
        wait_for_line(proc, "request 10/")
        pid = rank_pid(marker, 0) if target == "master" else proc.pid
        os.kill(pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    trace = read_trace(out)
    assert not trace.complete
    n = len(trace.requests["request"])
    assert 10 <= n < 5000 and trace.logits.shape[0] == n
    if target == "master":
        assert proc.returncode == 143, stderr[-2000:]
        assert trace.status == "interrupted: stopped by SIGTERM"
        assert "Traceback" not in stderr
        assert "stopped by SIGTERM" in stderr
    else:
        assert trace.status in ("running", "interrupted: stopped by SIGTERM")


def test_worker_exception_brings_its_stack_once(tmp_path):
    """The worker's stack comes under the one error line, naming its rank and host,
    printed once (rank 0 alone prints it), and the trace keeps it. k = n, as above."""
    out = tmp_path / "run.h5"
    proc = run(3, *lenet(out, 3, "--k", "2", "--crash", "2@1:raise"), timeout=120)
    assert proc.returncode == 1
    assert_no_tracebacks(proc)  # a reported stack is not an uncaught Python traceback
    trace = read_trace(out)
    host = trace.attrs["hostnames"][2]
    stderr = proc.stderr.splitlines()
    assert len(error_lines(proc)) == 1, proc.stderr
    at = stderr.index(error_lines(proc)[0])
    assert stderr[at + 1] == f"  worker rank 2 on host {host} (most recent call last):"
    stack = stderr[at + 1 : at + 5]
    assert 'raise RuntimeError("fault drill: --crash raise")' in stack[2], proc.stderr
    assert stack[3] == "  RuntimeError: fault drill: --crash raise"
    assert proc.stderr.count("(most recent call last):") == 1, proc.stderr
    error = trace.attrs["reliability"]["worker_error"]
    assert trace.status == f"failed: WorkerError: {error['message']}"
    assert error["traceback"].startswith(f"worker rank 2 on host {host} (most recent")
    assert error["traceback"].endswith("\nRuntimeError: fault drill: --crash raise")


def test_rank_lost_before_mpi_init_ends_the_start(tmp_path):
    """Under ULFM a rank that exits before MPI_Init leaves the others in Open MPI's
    start-up fence for ever; the start-up watchdog (COCOI_INIT_TIMEOUT_S) ends them,
    saying where they waited."""
    launch = (
        'if [ "$OMPI_COMM_WORLD_RANK" = 2 ]; then exit 1; fi; '
        f'exec "{sys.executable}" -m cocoi_mpi.run --model lenet5 --requests 2 --k 1 '
        f'--out "{tmp_path / "run.h5"}"'
    )
    cmd = [MPIRUN, "--with-ft", "ulfm", "-x", "COCOI_INIT_TIMEOUT_S", "-np", "3",
           "--oversubscribe", "--bind-to", "none", "sh", "-c", launch]  # fmt: skip
    env = {**mpi_env(), "COCOI_INIT_TIMEOUT_S": "10"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "Timeout (0:00:10)!" in proc.stderr, proc.stderr[-2000:]
    assert "cocoi_mpi/cli/run.py" in proc.stderr
    assert not (tmp_path / "run.h5").exists()
