"""How fast deaths are seen, and how long a starved worker survives (docs/reliability.md).

Each case is one real LeNet-5 job under ``mpirun --with-ft ulfm`` (5 ranks, k = 2):

- ``sigkill``: rank 3 SIGKILLed from outside mid-run; detection = the master's wall
  time of the death (trace ``reliability.dead_workers``) minus the kill's.
- ``exit``: rank 3 exits with status 1 at its first task of request 2 (``--crash
  3@2:exit``, no signal); detection = the death's time minus the send of that task
  (an upper bound: it includes the task's delivery).
- ``hang``: rank 2 sleeps 30 s in a task (``--crash 2@2:hang=30``) with
  ``--round-timeout 2`` and k = n = 4 (every reply needed): the round counts it
  failed at its deadline and falls back; the worker is not dead, its late reply is
  recorded at the end.
- ``stop S``: rank 3 SIGSTOPped for S seconds mid-run, then SIGCONT: starvation taken
  to the limit. Survived = exit code 0, nobody declared dead, logits exact.
- ``stop S heartbeat``: the same with Open MPI's heartbeat detector as the tests used
  to run it (period 0.2 s, timeout 1 s).

    python benchmarks/bench_detection.py [--stops 5,20,50] [--hogs 0]

Prints a markdown table. Run it alone: it loads the machine (and --hogs N adds N busy
processes for the whole run).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cocoi_mpi.traces.reader import read_trace

HEARTBEAT = [
    "--mca", "mpi_ft_detector", "true",
    "--mca", "mpi_ft_detector_period", "0.2",
    "--mca", "mpi_ft_detector_timeout", "1",
]  # fmt: skip


def mpirun() -> str:
    return str(Path(sys.executable).with_name("mpirun"))


def job(out: Path, requests: int, *extra: str, heartbeat: bool = False) -> list[str]:
    ft = ["--with-ft", "ulfm", *(HEARTBEAT if heartbeat else [])]
    return [
        mpirun(), *ft, "-np", "5", "--oversubscribe", "--bind-to", "none",
        sys.executable, "-m", "cocoi_mpi.run", "--model", "lenet5", "--k", "2",
        "--requests", str(requests), "--seed", "2", "--out", str(out), *extra,
    ]  # fmt: skip


def env(marker: str) -> dict:
    e = dict(os.environ, COCOI_TEST_MARKER=marker)
    e.setdefault("OMPI_MCA_btl", "^ofi")
    return e


def rank_pid(marker: str, rank: int, timeout: float = 120) -> int:
    want = {f"COCOI_TEST_MARKER={marker}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if want <= set((entry / "environ").read_bytes().split(b"\0")):
                        return int(entry.name)
                except OSError:
                    continue
        time.sleep(0.2)
    raise RuntimeError(f"rank {rank} not found")


def start(cmd: list[str], marker: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(marker)
    )


def wait_for(proc: subprocess.Popen, text: str) -> None:
    """Read stdout up to a line with ``text``, then keep draining it in a thread (a
    full pipe would stall the master while we wait)."""
    for line in proc.stdout:
        if text in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return
    raise RuntimeError(f"never saw {text!r}: {proc.stderr.read()[-1500:]}")


def outcome(proc: subprocess.Popen, out: Path) -> dict:
    stderr = proc.stderr.read()
    proc.wait(timeout=900)
    row = dict(rc=proc.returncode, dead=[], exact="-", stderr=stderr)
    if out.exists():
        trace = read_trace(out)
        rel = trace.attrs.get("reliability", {})
        row["dead"] = rel.get("dead_workers", [])
        row["trace"] = trace
    return row


def case_sigkill(tmp: Path) -> dict:
    out, marker = tmp / "kill.h5", f"det-{time.time_ns()}"
    proc = start(job(out, 600), marker)
    wait_for(proc, "request 20/")  # serving (a death inside MPI_Init hangs Open MPI)
    pid = rank_pid(marker, 3)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    row = outcome(proc, out)
    row["detect_s"] = row["dead"][0]["wall"] - killed if row["dead"] else None
    return row


def case_exit(tmp: Path) -> dict:
    out = tmp / "exit.h5"
    proc = start(job(out, 20, "--quiet", "--crash", "3@2:exit"), f"det-{time.time_ns()}")
    row = outcome(proc, out)
    if row["dead"]:
        dead = row["dead"][0]
        sub = row["trace"].subtasks
        fatal = (sub["worker"] == 3) & (sub["request"] >= 2)  # its first task from request 2
        row["detect_s"] = dead["t"] - float(np.min(sub["sent_t"][fatal]))
    return row


def case_hang(tmp: Path) -> dict:
    out = tmp / "hang.h5"
    args = ("--quiet", "--crash", "2@2:hang=30", "--round-timeout", "2", "--k", "4")
    proc = start(job(out, 20, *args), f"det-{time.time_ns()}")
    row = outcome(proc, out)
    if "trace" in row:
        sub = row["trace"].subtasks
        timeout = sub["status"].astype(str) == "timeout"
        row["timeouts"] = int(np.sum((sub["worker"] == 2) & timeout))
    return row


def case_stop(tmp: Path, seconds: float, heartbeat: bool) -> dict:
    out, marker = tmp / f"stop{seconds}{heartbeat}.h5", f"det-{time.time_ns()}"
    proc = start(job(out, 600, heartbeat=heartbeat), marker)
    try:
        wait_for(proc, "request 20/")
    except RuntimeError as exc:  # the job ended before serving: say how
        proc.wait(timeout=900)
        failed = sorted(set(re.findall(r"error on rank (\d+)", str(exc))))
        return dict(rc=proc.returncode, dead=[], note=f"ended in set-up, ranks {failed}: {exc}")
    pid = rank_pid(marker, 3)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(seconds)
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass  # the job already ended it
    return outcome(proc, out)


def describe(name: str, row: dict) -> str:
    dead = ", ".join(f"rank {d['rank']} ({d.get('seen_by', 'ulfm')})" for d in row["dead"])
    detect = row.get("detect_s")
    detect = f"{1e3 * detect:.0f} ms" if detect is not None else "-"
    extra = f"{row['timeouts']} subtasks 'timeout'" if "timeouts" in row else ""
    if "note" in row:
        extra = row["note"].splitlines()[0][:160]
    return f"| {name} | {row['rc']} | {dead or 'none'} | {detect} | {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stops", default="5,20,50", help="SIGSTOP durations, seconds")
    parser.add_argument("--hogs", type=int, default=0, help="busy processes meanwhile")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            print(f"load {os.getloadavg()[0]:.1f}, {args.hogs} hogs")
            print("| case | exit code | declared dead | detection | |")
            print("|---|---|---|---|---|")
            print(describe("SIGKILL", case_sigkill(tmp)), flush=True)
            print(describe("exit 1, no signal", case_exit(tmp)), flush=True)
            print(describe("hung 30 s, --round-timeout 2", case_hang(tmp)), flush=True)
            for s in (float(x) for x in args.stops.split(",")):
                print(describe(f"SIGSTOP {s:g} s", case_stop(tmp, s, False)), flush=True)
            print(describe("SIGSTOP 3 s, heartbeat 0.2/1 s", case_stop(tmp, 3, True)), flush=True)
    finally:
        for hog in hogs:
            hog.kill()


if __name__ == "__main__":
    main()
