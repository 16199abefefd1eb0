"""The CPU emulation's cgroup handling: on a fake cgroup tree, and for real where writable."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cocoi_mpi.testbed.cgroups import (
    PERIOD_US,
    CgroupRoot,
    TestbedError,
    confine,
    find_cgroup_root,
    own_group,
    quota_files,
    sweep_leftovers,
)


def test_quota_files_v1_and_v2():
    assert quota_files(0.15, 1) == {
        "cpu.cfs_period_us": str(PERIOD_US),
        "cpu.cfs_quota_us": "15000",
        "cpu.shares": "10240",
    }
    assert quota_files(1.5, 2) == {"cpu.max": f"150000 {PERIOD_US}", "cpu.weight": "1000"}
    assert quota_files(0.001, 1)["cpu.cfs_quota_us"] == "1000"  # the kernel's minimum


@pytest.mark.parametrize("share", [0, -0.5, float("nan")])
def test_quota_refuses_non_positive_share(share):
    with pytest.raises(ValueError, match="cpu share"):
        quota_files(share, 1)


def test_find_root_prefers_v1_cpu_then_v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    assert find_cgroup_root(tmp_path) == CgroupRoot(tmp_path, 2)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert find_cgroup_root(tmp_path) == CgroupRoot(tmp_path / "cpu", 1)


def test_find_root_explains_what_is_missing(tmp_path):
    with pytest.raises(TestbedError, match="no cgroup CPU controller"):
        find_cgroup_root(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("memory io\n")
    with pytest.raises(TestbedError, match="without the cpu controller"):
        find_cgroup_root(tmp_path)


def test_own_group_reads_the_right_line(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/a/b\n1:cpu,cpuacct:/jobs/x\n0::/user.slice/y\n")
    assert own_group(CgroupRoot(tmp_path, 1), proc) == tmp_path / "jobs/x"
    assert own_group(CgroupRoot(tmp_path, 2), proc) == tmp_path / "user.slice/y"


def test_confine_writes_quota_and_pid_on_a_fake_tree(tmp_path):
    root = CgroupRoot(tmp_path, 2)
    (tmp_path / "cgroup.procs").write_text("")
    conf = confine(0.25, "job1", "rank3", root=root, pid=12345)
    group = tmp_path / "cocoi-job1" / "rank3"
    assert conf.group == group
    assert (group / "cpu.max").read_text() == f"25000 {PERIOD_US}"
    assert (group / "cgroup.procs").read_text() == "12345\n"
    assert (tmp_path / "cocoi-job1" / "cgroup.subtree_control").exists() is False


def test_confine_names_the_group_it_could_not_write(tmp_path):
    (tmp_path / "cocoi-job").write_text("a file where a directory must go")
    with pytest.raises(TestbedError, match="cannot confine to 0.5 cores in .*cocoi-job"):
        confine(0.5, "job", "rank1", root=CgroupRoot(tmp_path, 1), pid=1)


def writable_cgroup() -> CgroupRoot | None:
    try:
        root = find_cgroup_root()
    except (TestbedError, OSError):
        return None
    return root if os.access(root.path, os.W_OK) else None


REAL = writable_cgroup()


@pytest.mark.skipif(REAL is None, reason="no writable cgroup CPU controller here (not root?)")
def test_real_confinement_caps_cpu_and_cleans_up():
    """A busy loop in a 0.2-core group gets about 0.2 s of CPU per wall second."""
    tag = f"test{os.getpid()}"
    conf = confine(0.2, tag, "rank1", root=REAL)
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < 1.0:
            pass
        used = time.process_time() - cpu0
    finally:
        conf.release()
    assert used < 0.35, used  # unconfined it would be ~1.0 (or whatever the load allows)
    assert not conf.group.exists() and not conf.group.parent.exists()
    assert sweep_leftovers(REAL, tag) == []


@pytest.mark.skipif(REAL is None, reason="no writable cgroup CPU controller here (not root?)")
def test_sweep_leftovers_removes_a_dead_ranks_group():
    tag = f"test{os.getpid()}x"
    group = REAL.path / f"cocoi-{tag}" / "rank7"
    group.mkdir(parents=True)
    removed = sweep_leftovers(REAL, tag)
    assert removed == [group, group.parent]
    assert not Path(group.parent).exists()


# --------------------------------------------------------------------------- in a run


def test_shares_are_validated():
    from cocoi_mpi.experiment.config import ConfigError, build_config

    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError, match="cpu_share must be a number of cores"):
            build_config(None, {"cpu_share": bad}, 3)
    cfg = build_config(None, {"cpu_share": 0.2, "master_cpu_share": 1}, 3)
    assert (cfg.cpu_share, cfg.master_cpu_share) == (0.2, 1)


@pytest.mark.skipif(REAL is None, reason="no writable cgroup CPU controller here (not root?)")
def test_run_confines_workers_and_tears_down(tmp_path):
    from test_e2e import mpirun

    from cocoi_mpi.traces.reader import read_trace

    out = tmp_path / "tb.h5"
    proc = mpirun(
        3, "--model", "lenet5", "--requests", "2", "--cpu-share", "0.3", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert "testbed: 2 workers confined to 0.3 core each (cgroup v" in proc.stdout
    meta = read_trace(out).attrs["testbed"]
    assert meta["confined_ranks"] == [1, 2] and meta["not_confined"] == {}
    assert not (REAL.path / meta["tag"]).exists()  # every rank left and removed its group


def test_run_without_writable_cgroups_says_so_and_runs(tmp_path):
    from test_e2e import mpirun

    from cocoi_mpi.traces.reader import read_trace

    out = tmp_path / "tb.h5"
    empty = tmp_path / "no-cgroups"
    empty.mkdir()
    os.environ["COCOI_CGROUP_FS"] = str(empty)  # mpi_env() copies os.environ
    try:
        proc = mpirun(
            3, "--model", "lenet5", "--requests", "2", "--cpu-share", "0.3", "--out", str(out)
        )
    finally:
        del os.environ["COCOI_CGROUP_FS"]
    assert proc.returncode == 0, proc.stderr
    assert "NOT confined, running without CPU emulation: ranks [1, 2]" in proc.stdout
    assert "no cgroup CPU controller" in proc.stdout
    trace = read_trace(out)
    assert trace.complete and trace.attrs["testbed"]["confined_ranks"] == []
