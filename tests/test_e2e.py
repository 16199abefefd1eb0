"""End to end: launch mpirun in a subprocess, check exit codes, output and the .h5.

These are the commands users type. Each run has a timeout, so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoi_mpi.models import build_model, input_shape
from cocoi_mpi.models.inputs import seeded_inputs
from cocoi_mpi.traces.reader import read_trace

HERE = Path(__file__).resolve().parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")

pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found next to python")


def mpi_env(**extra: str) -> dict:
    """This environment, plus what mpirun needs here (tests on PYTHONPATH, root, no ofi)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.setdefault("OMPI_MCA_btl", "^ofi")
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return {**env, **extra}


def mpirun(np_: int, *args: str, timeout: int = 300, cwd: Path | None = None):
    """Run `mpirun -np N python -m cocoi_mpi.run ARGS`; returns the CompletedProcess."""
    env = mpi_env()
    cmd = [
        MPIRUN,
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
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def local_logits(model: str, seed: int, requests: int) -> torch.Tensor:
    """The reference: the same seeded model and inputs, forward in this process."""
    net = build_model(model, seed=seed)
    x = seeded_inputs(input_shape(model, net), seed, requests)
    with torch.no_grad():
        return torch.cat([net(x[i : i + 1]) for i in range(requests)])


def assert_matches_local(path: Path, model: str, seed: int, requests: int) -> None:
    trace = read_trace(path)
    assert trace.complete
    ref = local_logits(model, seed, requests).numpy()
    got = trace.logits
    assert got.shape == ref.shape
    scale = np.abs(ref).max(axis=1)
    assert (np.abs(got - ref).max(axis=1) <= 1e-4 * scale).all()
    assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()


def assert_sane_tables(path: Path, n: int) -> None:
    """Each round used k replies, durations positive, statuses known."""
    trace = read_trace(path)
    rounds, subtasks = trace.rounds, trace.subtasks
    assert len(rounds["round"]) > 0
    assert (rounds["n_used"] == rounds["k"]).all()
    assert (rounds["n"] == n).all()
    assert (rounds["total_s"] > 0).all() and (rounds["wait_s"] > 0).all()
    assert len(subtasks["round"]) == n * len(rounds["round"])
    used = subtasks["status"] == "used"
    assert used.sum() == rounds["k"].sum()
    assert (subtasks["worker_compute_s"][used] > 0).all()
    assert (subtasks["arrival_t"][used] > subtasks["sent_t"][used]).all()
    assert (trace.requests["latency"] > 0).all()


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("cocoi: error:")]


def test_lenet5_on_three_ranks(tmp_path):
    out = tmp_path / "lenet.h5"
    proc = mpirun(3, "--model", "lenet5", "--requests", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "top-1 identical 3/3: OK" in proc.stdout
    assert_matches_local(out, "lenet5", 0, 3)
    assert_sane_tables(out, n=2)
    versions = read_trace(out).attrs["versions"]
    for key in ("python", "torch", "mpi4py", "mpi_library", "h5py", "hdf5", "ulfm"):
        assert versions[key], key
    assert versions["ulfm"].startswith(("available", "not available", "unknown"))


def test_info_names_versions_and_ulfm():
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("cocoi")), "info"],
        capture_output=True,
        text=True,
        timeout=120,
        env=mpi_env(),
    )
    assert proc.returncode == 0, proc.stderr
    keys = [line.split()[0] for line in proc.stdout.splitlines()]
    assert keys == [
        "cocoi_mpi",
        "python",
        "torch",
        "numpy",
        "mpi4py",
        "mpi_library",
        "h5py",
        "hdf5",
        "ulfm",
    ]


def test_srun_singletons_are_named(tmp_path):
    """srun without --mpi starts N world-size-1 processes; say that, not just 'size 1'."""
    out = tmp_path / "never.h5"
    env = mpi_env(SLURM_NTASKS="11", SLURM_PROCID="0", SLURM_JOB_ID="42")
    cmd = [sys.executable, "-m", "cocoi_mpi.run", "--model", "lenet5", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "SLURM_NTASKS=11" in line and "mpirun" in line and "singleton" in line
    assert not out.exists()


def test_user_cnn_with_silent_workers(tmp_path):
    """Odd geometry from an import path; two workers never reply (n=5, k=3)."""
    out = tmp_path / "odd.h5"
    proc = mpirun(
        6,
        "--model",
        "zoo:odd_cnn",
        "--k",
        "3",
        "--silent",
        "2,4",
        "--requests",
        "2",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert_matches_local(out, "zoo:odd_cnn", 5, 2)
    rounds = read_trace(out).rounds
    assert (rounds["n_failed"] == 2).all()
    for used in rounds["used_workers"]:
        assert not {2, 4} & {int(w) for w in used.split(",")}


def test_vandermonde_code_runs(tmp_path):
    """The paper's code is available; its float32 error is reported, not hidden."""
    out = tmp_path / "vdm.h5"
    proc = mpirun(4, "--model", "lenet5", "--code", "vandermonde", "--k", "2", "--out", str(out))
    assert proc.returncode in (0, 3), proc.stderr
    assert "check against local forward" in proc.stdout
    assert read_trace(out).complete


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vgg16", "resnet18"])
def test_eleven_ranks(tmp_path, model):
    """The issue's command: 11 ranks, 3 requests, logits equal to a local forward."""
    out = tmp_path / f"{model}.h5"
    proc = mpirun(11, "--model", model, "--requests", "3", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_matches_local(out, model, 0, 3)
    assert_sane_tables(out, n=10)
    report = subprocess.run(
        [sys.executable, "-m", "cocoi_mpi", "report", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0 and "Status      complete" in report.stdout


@pytest.mark.slow
def test_default_job_writes_results(tmp_path):
    """No options: VGG16 on seeded input, results/<name>.h5 under the working dir."""
    proc = mpirun(11, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "results").glob("*.h5"))
    assert len(files) == 1
    assert_matches_local(files[0], "vgg16", 0, 1)


@pytest.mark.slow
def test_thirty_three_ranks_grouped_code_survives_silent_and_killed_workers(tmp_path):
    """Issue 19: 32 workers under the grouped stable code (4 groups of 8/6 at k = 24),
    two silent and one killed mid-run (ULFM): exact, the death on record, a clean end."""
    out = tmp_path / "wide.h5"
    cmd = [MPIRUN, "--with-ft", "ulfm", "-np", "33", "--oversubscribe", "--bind-to", "none"]
    cmd += [sys.executable, "-m", "cocoi_mpi.run", "--model", "zoo:wide_cnn", "--k", "24"]
    cmd += ["--requests", "3", "--silent", "3,17", "--crash", "9@1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=mpi_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "top-1 identical 3/3: OK" in proc.stdout
    assert_matches_local(out, "zoo:wide_cnn", 0, 3)
    trace = read_trace(out)
    assert set(trace.rounds["n"]) == {32} and max(trace.rounds["k"]) <= 24
    statuses = {str(s) for s in trace.subtasks["status"]}
    assert {"failed", "dead"} <= statuses, statuses


PIS = HERE.parent / "hostfiles" / "pis"
LOCAL_SSH = HERE.parent / "jobs" / "local_ssh.sh"


def hostfile_hosts(path: Path) -> list[str]:
    """Host names of an Open MPI hostfile, in order (comments and slots dropped)."""
    lines = (line.split("#", 1)[0].split() for line in path.read_text().splitlines())
    return [words[0] for words in lines if words]


def pi_launch(tmp_path: Path, *mpirun_args: str):
    """README's Pi command with jobs/local_ssh.sh standing in for ssh to every host."""
    log = tmp_path / "hosts.log"
    env = mpi_env(PRTE_MCA_prte_ssh_agent=str(LOCAL_SSH), COCOI_SSH_LOG=str(log))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [MPIRUN, "-np", "11", "--hostfile", str(PIS), "--bind-to", "none", *mpirun_args]
    cmd += ["python", "-m", "cocoi_mpi.run", "--model", "lenet5", "--out", str(tmp_path / "pi.h5")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    hosts = log.read_text().split() if log.exists() else []
    return proc, hosts


@pytest.mark.slow
def test_pi_hostfile_launches_one_daemon_per_host(tmp_path):
    """The Pi command as README writes it, every host's daemon started through 'ssh'."""
    proc, hosts = pi_launch(tmp_path, "-x", "PATH")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "top-1 identical 1/1: OK" in proc.stdout
    assert sorted(hosts) == sorted(hostfile_hosts(PIS))
    assert len(hosts) == 11 and read_trace(tmp_path / "pi.h5").complete


@pytest.mark.slow
def test_pi_hostfile_without_path_export_cannot_find_python(tmp_path):
    """Why README's Pi command has -x PATH: an ssh login lacks the venv's python."""
    proc, hosts = pi_launch(tmp_path)
    assert proc.returncode != 0
    assert "python" in proc.stdout + proc.stderr and hosts
    assert not (tmp_path / "pi.h5").exists()


def bad_run(tmp_path, np_: int, *args: str):
    out = tmp_path / "bad.h5"
    proc = mpirun(np_, *args, "--out", str(out), timeout=180)
    return proc, out


def assert_clean_failure(proc, out: Path, expect: str) -> None:
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert expect in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not read_trace(out).complete


@pytest.mark.parametrize(
    "np_, args, expect",
    [
        (3, ["--model", "alexnet"], "unknown model"),
        (3, ["--model", "lenet5", "--k", "3"], "k must satisfy"),
        (3, ["--model", "lenet5", "--k", "0"], "k must satisfy"),
        (1, ["--model", "lenet5"], "world size is 1"),
        (3, ["--model", "lenet5", "--weights", "/nonexistent/w.pt"], "not found"),
        (3, ["--model", "lenet5", "--n", "5"], "n=5"),
        (3, ["--model", "zoo:failing_cnn"], "failing_cnn"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, np_, args, expect):
    proc, out = bad_run(tmp_path, np_, *args)
    assert_clean_failure(proc, out, expect)


def test_mismatched_weights_fail_cleanly(tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    proc, out = bad_run(tmp_path, 3, "--model", "lenet5", "--weights", str(path))
    assert_clean_failure(proc, out, str(path))


def test_wrong_input_shape_fails_cleanly(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 32, 32), dtype=np.float32))
    proc, out = bad_run(tmp_path, 3, "--model", "lenet5", "--input", str(path))
    assert_clean_failure(proc, out, "does not match")


def test_user_weights_and_input_are_used(tmp_path):
    """--weights and --input: the run's logits equal this process's forward of them."""
    net = build_model("lenet5", seed=42)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "user.h5"
    proc = mpirun(
        3,
        "--model",
        "lenet5",
        "--weights",
        str(tmp_path / "w.pt"),
        "--input",
        str(tmp_path / "x.npy"),
        "--requests",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(read_trace(out).logits, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_config_file_and_cli_precedence(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "lenet5"\nk = 1\nrequests = 2\n')
    out = tmp_path / "cfg.h5"
    proc = mpirun(3, "--config", str(cfg), "--k", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    trace = read_trace(out)
    assert trace.config["k"] == 2 and trace.config["requests"] == 2
    assert (trace.rounds["k"] == 2).all()


def test_same_seed_same_injected_faults(tmp_path):
    """Two runs with one seed: the same failed subtasks and injected delays, row by row,
    device jitter included; failures noticed after a heartbeat (issue 18)."""
    args = [
        "--jitter",
        "0.5/0.5",
        "--detection",
        "after=0.05",
        "--model",
        "lenet5",
        "--scheme",
        "uncoded",
        "--scenario",
        "3",
        "--failures",
        "1",
        "--link-mbps",
        "50",
        "--requests",
        "3",
        "--seed",
        "11",
        "--quiet",
    ]
    faults = []
    for name in ("a.h5", "b.h5"):
        proc = mpirun(4, *args, "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        sub = read_trace(tmp_path / name).subtasks
        failed = sorted(
            (int(r), int(w))
            for r, w, s in zip(sub["round"], sub["worker"], sub["status"], strict=True)
            if s == "failed"
        )
        first_try = sub["worker"] == sub["code_row"] + 1  # re-send targets depend on timing
        delays = sorted(
            (int(r), int(c), int(w), round(float(d), 12), float(f))
            for r, c, w, d, f, keep in zip(
                sub["round"],
                sub["code_row"],
                sub["worker"],
                sub["injected_delay_s"],
                sub["slowdown"],
                first_try,
                strict=True,
            )
            if keep
        )
        faults.append((failed, delays))
    assert faults[0][0], "scenario 3 with one failure per round produced no failure"
    assert faults[0] == faults[1]
    assert len({f for *_, f in faults[0][1]}) > len(faults[0][1]) // 2  # jitter per subtask
    trace = read_trace(tmp_path / "a.h5")
    assert (trace.config["jitter"], trace.config["detection"]) == ("0.5/0.5", "after=0.05")
    report = subprocess.run(
        [sys.executable, "-m", "cocoi_mpi.cli", "report", str(tmp_path / "a.h5")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Injected    jitter 0.5/0.5, detection after=0.05" in report.stdout, report.stdout


def test_sweep_config_runs_every_cell(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'model = "lenet5"\nrequests = 1\nlink_mbps = 100\n[sweep]\n'
        'schemes = ["cocoi", "uncoded", "replication", "lt-kl", "lt-ks"]\nrepetitions = 2\n'
        "scenarios = [{scenario = 2, failures = 1}, {scenario = 1, lambda_tr = 0.5}]\n"
    )
    out = tmp_path / "sweep.h5"
    proc = mpirun(5, "--config", str(cfg), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    req = read_trace(out).requests
    cells = set(
        zip(
            req["scheme"].tolist(),
            req["scenario"].tolist(),
            req["level"].tolist(),
            req["repetition"].tolist(),
            strict=False,
        )
    )
    assert len(cells) == 5 * 2 * 2 == len(req["request"])
    report = subprocess.run(
        [sys.executable, "-m", "cocoi_mpi", "report", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "vs uncoded" in report.stdout
    assert "Per-layer split" in report.stdout
    plots = subprocess.run(
        [sys.executable, "-m", "cocoi_mpi", "report", str(out), "--plots", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plots.returncode == 0, plots.stderr
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == [
        "latency_scenario1.png",
        "latency_scenario2.png",
        "layers.png",
    ]


def test_sweep_parts_merge_into_the_whole_sweep(tmp_path):
    """--part I/N (a job array's tasks) then cocoi merge: every cell once, exact."""
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'model = "lenet5"\nrequests = 1\n[sweep]\nschemes = ["cocoi", "uncoded", "lt-ks"]\n'
        "repetitions = 2\nscenarios = [{scenario = 2, failures = 1}]\n"
    )
    parts = [tmp_path / f"part{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        proc = mpirun(4, "--config", str(cfg), "--part", f"{i}/2", "--out", str(part), "--quiet")
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "all.h5"
    cocoi = str(Path(sys.executable).with_name("cocoi"))
    proc = subprocess.run(
        [cocoi, "merge", str(out), *map(str, parts[::-1])], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    req = read_trace(out).requests
    cells = sorted(zip(req["scheme"].tolist(), req["repetition"].tolist(), strict=True))
    assert cells == sorted((s, r) for s in ("cocoi", "uncoded", "lt-ks") for r in range(2))
    assert req["request"].tolist() == list(range(6))
    assert (req["rel_err"] <= 1e-4).all()
    report = subprocess.run([cocoi, "report", str(out)], capture_output=True, text=True)
    assert report.returncode == 0 and "lt-ks" in report.stdout, report.stderr
    bad = mpirun(4, "--config", str(cfg), "--part", "6/6", "--out", str(tmp_path / "x.h5"))
    assert bad.returncode == 2 and "need 0 <= I < N" in bad.stderr


def test_k_auto_plans_and_records(tmp_path):
    """--k auto: the latency model picks k per conv and the plan is in the trace."""
    out = tmp_path / "auto.h5"
    proc = mpirun(11, "--model", "resnet18", "--k", "auto", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "plan (k=auto" in proc.stdout
    trace = read_trace(out)
    plan = {p["name"]: p for p in trace.attrs["plan"]}
    distributed = {name for name, p in plan.items() if p["distribute"]}
    assert distributed and set(trace.rounds["layer"]) == distributed
    for row_layer, row_k in zip(trace.rounds["layer"], trace.rounds["k"], strict=True):
        assert row_k <= plan[row_layer]["k"]
    assert_matches_local(out, "resnet18", 0, 1)


def test_sweep_compares_planned_and_fixed_k(tmp_path):
    """cocoi:auto and cocoi:star use the plan's k per layer; cocoi:2 a fixed k."""
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(
        'model = "resnet18"\nrequests = 1\n[sweep]\n'
        'schemes = ["cocoi:auto", "cocoi:star", "cocoi:2"]\n'
    )
    out = tmp_path / "planned.h5"
    proc = mpirun(11, "--config", str(cfg), "--out", str(out), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr
    trace = read_trace(out)
    req, rounds = trace.requests, trace.rounds
    assert sorted(req["scheme"]) == ["cocoi:2", "cocoi:auto", "cocoi:star"]
    plans = trace.attrs["plans"]
    for method in ("auto", "star"):
        plan = {p["name"]: p for p in plans[f"{method}:m=1"]}  # the stable code: m = 1
        (request,) = req["request"][req["scheme"] == f"cocoi:{method}"]
        mine = rounds["request"] == request
        assert set(rounds["layer"][mine]) == {n for n, p in plan.items() if p["distribute"]}
        for layer, k in zip(rounds["layer"][mine], rounds["k"][mine], strict=True):
            assert k <= plan[layer]["k"]
    (fixed,) = req["request"][req["scheme"] == "cocoi:2"]
    assert (rounds["k"][rounds["request"] == fixed] <= 2).all()
    assert (req["rel_err"] <= 1e-4).all()


# --------------------------------------------------------------------------- learned codes


@pytest.fixture(scope="module")
def learned_files(tmp_path_factory):
    """A LeNet-5 trained briefly on digits and codecs for both of its blocks."""
    from cocoi_mpi.learned.checkpoint import new_state, save_codec
    from cocoi_mpi.learned.coded_block import make_coded_block
    from cocoi_mpi.learned.training import CodecTraining, train_codec
    from cocoi_mpi.models.data import load_dataset
    from cocoi_mpi.models.training import save_base, train_base

    root = tmp_path_factory.mktemp("learned")
    train = load_dataset("digits", "train").subset(400)
    model = build_model("lenet5", seed=0)
    log = train_base(model, train, None, epochs=2, seed=0)
    save_base(root / "lenet5.pt", model, "lenet5", "digits", log)
    files = {"weights": root / "lenet5.pt"}
    for block, k, r in [("features.3", 1, 1), ("features.3", 4, 2), ("features.0", 2, 1)]:
        cb = make_coded_block(model, block, (1, 32, 32), k, r, "sparsemlp")
        state = new_state("lenet5", "digits", (1, 32, 32), cb, model)
        train_codec(model, cb, train, CodecTraining(epochs=1), state)
        files[(block, k, r)] = root / f"{block}_k{k}_r{r}.pt"
        save_codec(files[(block, k, r)], cb, state)
    return files


def offline_logits(files, codecs, lost, count) -> torch.Tensor:
    from cocoi_mpi.learned.accuracy import coded_predictions
    from cocoi_mpi.learned.checkpoint import load_codec
    from cocoi_mpi.models import load_weights
    from cocoi_mpi.models.data import load_dataset

    model = load_weights(build_model("lenet5"), files["weights"]).eval()
    entries = [load_codec(files[c], model, "lenet5", (1, 32, 32))[0] for c in codecs]
    images = load_dataset("digits", "test").images[:count]
    return coded_predictions(model, entries, images, lost)


@pytest.mark.parametrize(
    "np_, codec, silent, lost",
    [(3, ("features.3", 1, 1), "1", [0]), (7, ("features.3", 4, 2), "1,3", [0, 2])],
)
def test_learned_scheme_over_mpi_equals_offline(tmp_path, learned_files, np_, codec, silent, lost):
    """With the silent workers' rows lost, the run decodes exactly what offline does."""
    out = tmp_path / "learned.h5"
    count = 60
    proc = mpirun(
        np_,
        *("--model", "lenet5", "--weights", str(learned_files["weights"])),
        *("--scheme", "learned", "--codec", str(learned_files[codec])),
        *("--data", "digits", "--requests", str(count), "--silent", silent, "--quiet"),
        *("--out", str(out)),
    )
    assert proc.returncode == 0, proc.stderr
    trace = read_trace(out)
    ref = offline_logits(learned_files, [codec], lost, count).numpy()
    assert np.abs(trace.logits - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (trace.logits.argmax(1) == ref.argmax(1)).all()
    req = trace.requests
    offline_acc = 100.0 * (ref.argmax(1) == req["label"]).mean()
    assert f"accuracy [learned]: {offline_acc:.2f}%" in proc.stdout
    rows = trace.rounds
    assert set(rows["layer"].tolist()) == {"features.3"}
    kept = [i for i in range(codec[1] + codec[2]) if i not in lost]
    used = {tuple(sorted(int(i) for i in u.split(","))) for u in rows["used_rows"].tolist()}
    assert used == {tuple(kept)}  # in arrival order in the file


def test_learned_hybrid_keeps_last_block_on_master(tmp_path, learned_files):
    """--hybrid: the codec of the last block is not used; features.0 still is."""
    out = tmp_path / "hybrid.h5"
    proc = mpirun(
        4,
        *("--model", "lenet5", "--weights", str(learned_files["weights"])),
        *("--scheme", "learned", "--hybrid", "--data", "digits", "--requests", "5"),
        *("--codec", str(learned_files[("features.0", 2, 1)])),
        *("--codec", str(learned_files[("features.3", 1, 1)])),
        *("--out", str(out), "--quiet"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "learned codes on features.0" in proc.stdout
    assert set(read_trace(out).rounds["layer"].tolist()) == {"features.0"}


def test_sweep_mixes_learned_and_exact_schemes(tmp_path, learned_files):
    """One run compares learned codes with CoCoI: conv proxies live inside the blocks."""
    cfg = tmp_path / "mix.toml"
    codec = learned_files[("features.3", 1, 1)]
    cfg.write_text(
        f'model = "lenet5"\nweights = "{learned_files["weights"]}"\ncodec = ["{codec}"]\n'
        'data = "digits"\nrequests = 3\n[sweep]\nschemes = ["learned", "cocoi", "uncoded"]\n'
    )
    out = tmp_path / "mix.h5"
    proc = mpirun(3, "--config", str(cfg), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "check against local forward" in proc.stdout and ": OK" in proc.stdout
    req = read_trace(out).requests
    assert sorted(set(req["scheme"].tolist())) == ["cocoi", "learned", "uncoded"]


def test_sweep_interleaves_learned_and_its_hybrid_form(tmp_path, learned_files):
    """learned:hybrid cells keep the last block on the master, learned cells code both."""
    cfg = tmp_path / "hybrid.toml"
    codecs = [learned_files[("features.0", 2, 1)], learned_files[("features.3", 1, 1)]]
    cfg.write_text(
        f'model = "lenet5"\nweights = "{learned_files["weights"]}"\n'
        f"codec = {[str(c) for c in codecs]!r}\n".replace("'", '"')
        + 'data = "digits"\nrequests = 2\n'
        '[sweep]\nschemes = ["learned", "learned:hybrid"]\nrepetitions = 2\n'
    )
    out = tmp_path / "hybrid.h5"
    proc = mpirun(4, "--config", str(cfg), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    trace = read_trace(out)
    scheme_of = dict(zip(trace.requests["request"], trace.requests["scheme"], strict=True))
    layers = {"learned": set(), "learned:hybrid": set()}
    for request, layer in zip(trace.rounds["request"], trace.rounds["layer"], strict=True):
        layers[scheme_of[request]].add(layer)
    assert layers == {"learned": {"features.0", "features.3"}, "learned:hybrid": {"features.0"}}


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--scheme", "learned"], "needs --codec"),
        (["--codec", "x.pt"], "only by --scheme learned"),
        (["--scheme", "learned", "--codec", "/nonexistent/c.pt"], "not found"),
    ],
)
def test_learned_bad_settings_fail_cleanly(tmp_path, args, expect):
    proc, out = bad_run(tmp_path, 3, "--model", "lenet5", *args)
    assert_clean_failure(proc, out, expect)


def test_codec_for_another_model_is_refused(tmp_path, learned_files):
    codec = learned_files[("features.3", 1, 1)]
    proc, out = bad_run(
        tmp_path, 3, "--model", "vgg16", "--scheme", "learned", "--codec", str(codec)
    )
    assert_clean_failure(proc, out, "trained for model 'lenet5'")
