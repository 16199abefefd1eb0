"""The Slurm batch scripts, submitted for real to a one-node Slurm on this machine.

jobs/slurm/local_cluster.sh starts munged, slurmctld and slurmd in a private state
directory, on ports of its own. Where that cannot happen (Slurm not installed, not
root, daemons that do not come up) every test here is skipped with the reason, which
`pytest -rs` (./jobs/test.sh) prints. CI installs Slurm from Debian's packages first
(`jobs/slurm/local_cluster.sh install`), so there these tests run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e import mpi_env

from cocoi_mpi.traces.reader import read_trace

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "jobs" / "slurm" / "local_cluster.sh"
COCOI = str(Path(sys.executable).with_name("cocoi"))
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol")

pytestmark = pytest.mark.slow


def why_no_slurm() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (
            f"Slurm is not installed here (missing {', '.join(missing)}); "
            "`jobs/slurm/local_cluster.sh install` (root, Debian/Ubuntu) installs it"
        )
    if os.geteuid() != 0:
        return "a local Slurm needs root to start slurmd; run the tests as root or in CI"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster; yields the environment to submit with."""
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    port = str(20000 + 2 * (os.getpid() % 5000))  # two test runs at once must not meet
    env = mpi_env(
        COCOI_SLURM_DIR=str(state), SLURM_CONF=str(state / "slurm.conf"), COCOI_SLURM_PORT=port
    )
    up = subprocess.run([str(CLUSTER), "start"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        pytest.skip(f"the local Slurm did not start: {(up.stderr or up.stdout).strip()[-600:]}")
    yield env
    subprocess.run([str(CLUSTER), "stop"], env=env, capture_output=True, text=True)


def sbatch(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """sbatch --wait from the repository root (the scripts expect to be submitted there)."""
    return subprocess.run(
        ["sbatch", "--wait", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_default_job_script_writes_a_trace(slurm, tmp_path):
    out, log = tmp_path / "job.h5", tmp_path / "job.out"
    env = {**slurm, "OUT": str(out)}
    proc = sbatch(
        env,
        "--ntasks=4",
        f"--output={log}",
        "jobs/slurm/cocoi.sbatch",
        "--model",
        "lenet5",
        "--requests",
        "3",
    )
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, proc.stderr + text
    assert "top-1 identical 3/3: OK" in text and "Status      complete" in text
    trace = read_trace(out)
    assert trace.complete and trace.attrs["world_size"] == 4
    assert trace.attrs["slurm"]["SLURM_NTASKS"] == "4"
    report = subprocess.run([COCOI, "report", str(out)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert f"Slurm       job {trace.attrs['slurm']['SLURM_JOB_ID']}" in report.stdout


def test_sweep_array_and_merge(slurm, tmp_path):
    """submit_sweep.sh: a 2-task array, then the merge job once both succeeded."""
    name = f"slurmtest_{os.getpid()}"
    config = ROOT / "results" / f"{name}.toml"
    config.write_text(
        'model = "lenet5"\nrequests = 1\n[sweep]\nschemes = ["cocoi", "uncoded"]\n'
        "repetitions = 2\nscenarios = [{scenario = 2, failures = 1}]\n"
    )
    made = [config, *(ROOT / "results").glob(f"{name}*")]
    try:
        submit = subprocess.run(
            [
                "jobs/slurm/submit_sweep.sh",
                str(config),
                "2",
                "--ntasks=3",
                f"--output={tmp_path}/%x-%A_%a.out",
            ],
            cwd=ROOT,
            env=slurm,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submit.returncode == 0, submit.stderr
        merge_job = submit.stdout.split("merge job ")[1].split()[0]
        wait = subprocess.run(
            ["srun", f"--dependency=afterany:{merge_job}", "--ntasks=1", "true"],
            env=slurm,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert wait.returncode == 0, wait.stderr
        merged = ROOT / "results" / f"{name}.h5"
        logs = "".join(p.read_text() for p in tmp_path.glob("*.out"))
        assert merged.exists(), logs
        trace = read_trace(merged)
        assert trace.complete and trace.n_rows("requests") == 4
        assert sorted(p["part"] for p in trace.attrs["merged_from"]) == ["0/2", "1/2"]
        assert (trace.requests["rel_err"] <= 1e-4).all()
        assert "Merged      2 parts (4 requests)" in logs
    finally:
        made = set(made) | set((ROOT / "results").glob(f"{name}*"))
        for path in made:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def test_srun_singletons_are_caught(slurm, tmp_path):
    """The classic mistake: srun without PMI starts N processes of world size 1."""
    out = tmp_path / "never.h5"
    proc = subprocess.run(
        [
            "srun",
            "--ntasks=3",
            "--mpi=none",
            sys.executable,
            "-m",
            "cocoi_mpi.run",
            "--model",
            "lenet5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "SLURM_NTASKS=3: srun started 3 singleton" in proc.stderr
    assert not out.exists()
