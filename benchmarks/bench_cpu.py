"""CPU seconds per rank against useful compute seconds, and the collector's pauses.

    python benchmarks/bench_cpu.py                        # vgg16, 20 requests, 11 ranks
    python benchmarks/bench_cpu.py --idle                 # workers with nothing to do
    python benchmarks/bench_cpu.py --before /tmp/before   # interleaved before/after
    python benchmarks/bench_cpu.py --wait 5               # one wait: blocking vs back-off

Each run is ``mpirun -np NP python -m cocoi_mpi.run --model M --requests R --n N``
(plus --job-args). The table, per rank, comes from the trace's meta: ``workers``
(each worker's log: cpu_s, compute_s, compute_cpu_s and wall_s of its serve loop)
and ``master`` (CPU and wall seconds from set-up to the end), with the collector's
figures (gc_max_pause_s, gc_total_s, gc_collections, gc_in_request). The idle CPU
fraction is (CPU s - compute CPU s) / (wall s - compute s): the share of a core a
worker uses while it is not computing. Compute is counted in both clocks because
with more ranks than cores a conv's wall time includes waiting for a core.

``--idle`` serves lenet5 with ``--k auto``: the built-in profile finds no conv worth
distributing, so every worker waits for the whole run without a single task, and
its CPU over its wall time is what waiting costs.

``--wait S`` isolates the wait itself: 3 ranks; the master sends nothing for S
seconds, twice; the two workers wait for a control message first in a blocking
``comm.recv`` (what a worker did before), then in ``WorkerLoop.drain(block=True)``
(the back-off poll), and report the CPU share each wait cost.

``--before DIR`` compares another checkout of the code (e.g. ``git archive HEAD |
tar -x -C /tmp/before`` made before a change): runs alternate before, after, before,
after (``--reps`` pairs), each started with PYTHONPATH=DIR or this checkout. An old
checkout's trace has no CPU meta, so in this mode every rank measures itself through
a probe (this file, run by mpirun in front of cocoi_mpi.cli.run): it wraps the worker's
serve loop (CPU, wall), the worker's compute() (wall and CPU) and the master's
request loop, identically for both checkouts, times every collection that runs
inside those loops (gc.callbacks), and writes one JSON per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --- the probe: runs on every rank, in front of cocoi_mpi.cli.run -----------------------


def probe(outdir: str, argv: list[str]) -> None:
    """Measure this rank's serve loop (worker) or request loop (master), then run the
    job as ``python -m cocoi_mpi.run ARGV`` would."""
    import atexit
    import gc
    import runpy

    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
    record = dict(rank=rank, cpu_s=None, wall_s=None, compute_s=0.0, compute_cpu_s=0.0)
    record.update(gc_count=0, gc_s=0.0, gc_max_s=0.0)  # collections during the loop
    state = {"in_loop": False, "t": None}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start" and state["in_loop"]:
            state["t"] = time.perf_counter()
        elif phase == "stop" and state["t"] is not None:
            pause = time.perf_counter() - state["t"]
            record["gc_count"] += 1
            record["gc_s"] += pause
            record["gc_max_s"] = max(record["gc_max_s"], pause)
            state["t"] = None

    gc.callbacks.append(on_gc)

    def timed(fn, on_end, loop: bool = False):
        def wrapper(*args, **kwargs):
            c0, w0 = time.process_time(), time.perf_counter()
            state["in_loop"] |= loop
            try:
                return fn(*args, **kwargs)
            finally:
                state["in_loop"] &= not loop
                on_end(time.process_time() - c0, time.perf_counter() - w0)

        return wrapper

    def loop_done(cpu: float, wall: float) -> None:
        record.update(cpu_s=cpu, wall_s=wall)

    def computed(cpu: float, wall: float) -> None:
        record["compute_s"] += wall
        record["compute_cpu_s"] += cpu

    from cocoi_mpi.runtime import worker

    worker.WorkerLoop.serve = timed(worker.WorkerLoop.serve, loop_done, loop=True)
    worker.compute = timed(worker.compute, computed)
    try:  # the master's request loop, runtime/serving.py's Serving since job.py's split
        from cocoi_mpi.runtime.serving import Serving

        Serving.serve = timed(Serving.serve, loop_done, loop=True)
    except ImportError:  # a --before checkout from before the split
        from cocoi_mpi.runtime import job

        job.serve = timed(job.serve, loop_done, loop=True)
    record["code"] = str(Path(worker.__file__).resolve().parents[2])

    def dump() -> None:
        record["process_cpu_s"] = time.process_time()
        Path(outdir, f"rank{rank}.json").write_text(json.dumps(record))

    atexit.register(dump)
    sys.argv = ["cocoi_mpi.run", *argv]
    runpy.run_module("cocoi_mpi.run", run_name="__main__", alter_sys=True)


def wait_cost(seconds: float) -> None:
    """Run by mpirun -np 3: the CPU share of one idle wait, blocking vs back-off."""
    from mpi4py import MPI

    from cocoi_mpi.runtime.protocol import CTRL, Stop
    from cocoi_mpi.runtime.worker import WorkerLoop

    comm = MPI.COMM_WORLD
    for method in ("blocking comm.recv", "WorkerLoop.drain (back-off)"):
        comm.Barrier()
        if comm.Get_rank() == 0:
            time.sleep(seconds)
            for rank in range(1, comm.Get_size()):
                comm.send(Stop(), dest=rank, tag=CTRL)
            shares = comm.gather(None, root=0)[1:]
            print(
                f"{method:28s}: waiting {seconds:g} s cost "
                + ", ".join(f"{100 * s:.1f}%" for s in shares)
                + " of a core (one figure per worker)",
                flush=True,
            )
        else:
            c0, w0 = time.process_time(), time.perf_counter()
            if method.startswith("blocking"):
                comm.recv(source=0, tag=CTRL)
            else:
                WorkerLoop(comm, {}).drain(block=True)
            comm.gather((time.process_time() - c0) / (time.perf_counter() - w0), root=0)


# --- the driver ----------------------------------------------------------------------


def mpirun_path() -> str:
    return shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"


def run_job(args, job_args: list[str], out: Path, code: Path, probe_dir: Path | None):
    """One mpirun of the cocoi_mpi found in ``code``; returns (CompletedProcess, seconds)."""
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_btl", "^ofi")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    launcher = [sys.executable, "-m", "cocoi_mpi.run"]
    if probe_dir is not None:
        launcher = [sys.executable, str(Path(__file__).resolve()), "--probe", str(probe_dir), "--"]
    cmd = [mpirun_path(), "-np", str(args.np), "--oversubscribe", "--bind-to", "none"]
    cmd += [*launcher, *job_args, "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        sys.exit(f"bench_cpu: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - t0


def job_args_of(args) -> list[str]:
    if args.idle:
        return ["--model", "lenet5", "--k", "auto", "--requests", str(args.requests or 2000)]
    base = ["--model", args.model, "--requests", str(args.requests or 20)]
    return [*base, "--n", str(args.n), *args.job_args.split()]


def latencies(path: Path) -> list[float]:
    from cocoi_mpi.traces.reader import read_trace

    return [float(v) for v in read_trace(path).requests["latency"]]


def meta_rows(path: Path) -> tuple[list[dict], dict]:
    """Per-rank rows from the trace meta (master first), and the GC figures."""
    from cocoi_mpi.traces.reader import read_trace

    attrs = read_trace(path).attrs
    rows = []
    if "master" in attrs:
        rows.append({**attrs["master"], "compute_s": None, "compute_cpu_s": None})
    rows += [dict(w) for w in attrs.get("workers", []) if "cpu_s" in w]
    gc = {k: v for k, v in attrs.items() if k.startswith("gc_")}
    return rows, gc


def probe_rows(probe_dir: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in probe_dir.glob("rank*.json")]
    rows = [r for r in rows if r["cpu_s"] is not None]
    for r in rows:
        if r["rank"] == 0:
            r["compute_s"] = r["compute_cpu_s"] = None
    return sorted(rows, key=lambda r: r["rank"])


def idle_fraction(row: dict) -> float | None:
    """CPU seconds used outside compute per wall second outside compute: the share
    of a core that waiting (and receiving, sending, bookkeeping) costs."""
    compute, compute_cpu = row.get("compute_s"), row.get("compute_cpu_s")
    if compute is None or compute_cpu is None or row["wall_s"] - compute <= 0:
        return None
    return (row["cpu_s"] - compute_cpu) / (row["wall_s"] - compute)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = [
        "| rank | wall s | CPU s | compute s (wall) | compute CPU s | CPU / compute CPU "
        "| idle CPU fraction |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compute_cpu = r.get("compute_cpu_s")
        idle = idle_fraction(r)
        lines.append(
            f"| {r['rank']}{' (master)' if r['rank'] == 0 else ''} | {r['wall_s']:.2f} "
            f"| {r['cpu_s']:.2f} | {fmt(r.get('compute_s'))} | {fmt(compute_cpu)} "
            f"| {fmt(r['cpu_s'] / compute_cpu if compute_cpu else None)} "
            f"| {'-' if idle is None else f'{100 * idle:.1f}%'} |"
        )
    workers = [r for r in rows if r["rank"] != 0]
    if workers:
        fractions = [f for r in workers if (f := idle_fraction(r)) is not None]
        cpu = sum(r["cpu_s"] for r in workers)
        compute = sum(r.get("compute_s") or 0.0 for r in workers)
        compute_cpu = sum(r.get("compute_cpu_s") or 0.0 for r in workers)
        median = f"median {100 * statistics.median(fractions):.1f}%" if fractions else ""
        lines.append(
            f"| workers (sum) | | {cpu:.2f} | {compute:.2f} | {compute_cpu:.2f} "
            f"| {fmt(cpu / compute_cpu if compute_cpu else None)} | {median} |"
        )
    return "\n".join(lines)


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Per rank, the median of each column over runs."""
    ranks = sorted({r["rank"] for run in runs for r in run})
    out = []
    for rank in ranks:
        mine = [r for run in runs for r in run if r["rank"] == rank]
        row = {"rank": rank}
        for key in ("wall_s", "cpu_s", "compute_s", "compute_cpu_s"):
            values = [r[key] for r in mine if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


def gc_line(gc: dict) -> str:
    return (
        f"GC: {gc.get('gc_collections', 0)} collections between requests, longest "
        f"{1e3 * gc.get('gc_max_pause_s', 0.0):.2f} ms, total {1e3 * gc.get('gc_total_s', 0.0):.1f}"
        f" ms; collections inside a request: {gc.get('gc_in_request', '?')}; "
        f"{gc.get('gc_frozen_objects', '?')} objects frozen after set-up"
    )


def single(args, job_args: list[str], work: Path) -> None:
    out = work / "run.h5"
    proc, seconds = run_job(args, job_args, out, Path(args.after).resolve(), None)
    rows, gc = meta_rows(out)
    lat = latencies(out)
    print(f"$ mpirun -np {args.np} python -m cocoi_mpi.run {' '.join(job_args)}")
    print(f"run {seconds:.1f} s; request latency median {statistics.median(lat):.3f} s")
    print(table(rows))
    if gc:
        print(gc_line(gc))
    if args.keep:
        shutil.copy(out, args.keep)


def compare(args, job_args: list[str], work: Path) -> None:
    before = Path(args.before).resolve()
    versions = {"before": before, "after": Path(args.after).resolve()}
    runs: dict[str, list] = {name: [] for name in versions}
    lats: dict[str, list] = {name: [] for name in versions}
    print(f"$ mpirun -np {args.np} python -m cocoi_mpi.run {' '.join(job_args)}")
    for rep in range(args.reps):
        for name, code in versions.items():
            probe_dir = work / f"{name}{rep}"
            probe_dir.mkdir()
            out = probe_dir / "run.h5"
            _, seconds = run_job(args, job_args, out, code, probe_dir)
            rows = probe_rows(probe_dir)
            used = {r.get("code") for r in rows}
            if used != {str(code)}:
                sys.exit(f"bench_cpu: {name} ran code from {used}, not {code}")
            lat = latencies(out)
            runs[name].append(rows)
            lats[name].append(statistics.median(lat))
            idle = [f for r in rows if r["rank"] and (f := idle_fraction(r)) is not None]
            print(
                f"run {rep + 1} {name:6s}: {seconds:5.1f} s, median latency "
                f"{statistics.median(lat):.4g} s, worker idle CPU fraction median "
                f"{100 * statistics.median(idle):.1f}%"
            )
            master = next((r for r in rows if r["rank"] == 0), None)
            if master is not None:
                print(
                    f"  master: {master['gc_count']} collections during the request loop, "
                    f"longest {1e3 * master['gc_max_s']:.2f} ms, "
                    f"total {1e3 * master['gc_s']:.1f} ms"
                )
            if name == "after":
                _, gc = meta_rows(out)
                if gc:
                    print(f"  {gc_line(gc)}")
    for name in versions:
        print(
            f"\n{name} ({versions[name]}): median over {args.reps} runs per rank; "
            f"median request latency per run {', '.join(f'{v:.4g}' for v in lats[name])} s"
        )
        print(table(median_rows(runs[name])))


def wait_driver(args) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(args.after).resolve()))
    env.setdefault("OMPI_MCA_btl", "^ofi")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [mpirun_path(), "-np", "3", "--oversubscribe", "--bind-to", "none", sys.executable]
    cmd += [str(Path(__file__).resolve()), "--wait-rank", str(args.wait)]
    print(f"$ mpirun -np 3 python benchmarks/bench_cpu.py --wait-rank {args.wait:g}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        rest = sys.argv[3:]
        return probe(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    if len(sys.argv) > 2 and sys.argv[1] == "--wait-rank":
        return wait_cost(float(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--requests", type=int, help="[20; 2000 with --idle]")
    parser.add_argument("--n", type=int, default=10, help="workers [10]")
    parser.add_argument("--np", type=int, default=11, help="MPI ranks [11]")
    parser.add_argument("--job-args", default="", help="more cocoi_mpi.cli.run options, quoted")
    parser.add_argument("--idle", action="store_true", help="lenet5 --k auto: no task at all")
    parser.add_argument("--wait", type=float, help="seconds: the cost of one idle wait")
    parser.add_argument("--before", help="another checkout to compare with, interleaved")
    parser.add_argument("--after", default=str(ROOT), help="the checkout to compare [this one]")
    parser.add_argument("--reps", type=int, default=2, help="before/after pairs [2]")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--keep", help="copy the trace here (single run)")
    args = parser.parse_args()
    if args.wait:
        return wait_driver(args)
    job_args = job_args_of(args)
    with tempfile.TemporaryDirectory(prefix="bench_cpu.") as tmp:
        if args.before:
            compare(args, job_args, Path(tmp))
        else:
            single(args, job_args, Path(tmp))


if __name__ == "__main__":
    main()
