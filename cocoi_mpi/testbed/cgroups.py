"""Emulated devices on one machine: each rank confined to a fixed CPU share by cgroups.

Ten worker ranks on a 2-core machine share the CPU, so a scheme that does more total
work looks slower than it would on ten separate devices. Confining every worker to its
own cgroup with a CPU quota (e.g. 0.15 of a core) makes its compute time independent of
what the others do, as long as the quotas add up to less than the machine has. A high
CPU weight on those groups keeps unconfined processes (the master, other jobs) from
taking a worker's share.

Both cgroup versions: v1's ``cpu`` controller (``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``, ``cpu.shares``) and v2 (``cpu.max``, ``cpu.weight``). Each rank
makes ``<root>/cocoi-<tag>/rank<r>``, moves itself in, and on release moves back to the
group it came from and removes the directory; :func:`sweep_leftovers` removes what a
killed rank left. Only the filesystem: no MPI here, and the root is a parameter so the
tests use a temporary directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError

# The quota's period: the kernel's default 100 ms. Shorter periods make a smoother slow
# device (a small subtask cannot run at full speed inside one burst of quota) but isolate
# worse: 20 ms gave +15..+23 % busy-vs-idle, 50 ms up to +14 %, 100 ms within 7 %
# (docs/testbed.md).
PERIOD_US = 100_000
V1_SHARES = 10 * 1024  # ten times a plain process's weight (1024)
V2_WEIGHT = 1000  # ten times the default weight (100)
PREFIX = "cocoi-"
JOB_WEIGHT = {1: 262144, 2: 10000}  # the largest each interface accepts


def weight_file(version: int) -> str:
    return "cpu.shares" if version == 1 else "cpu.weight"


class TestbedError(RunError, RuntimeError):
    """The CPU emulation cannot be set up here; the message says why."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class CgroupRoot:
    """Where this machine's CPU controller lives and which interface it speaks."""

    path: Path
    version: int  # 1 or 2


def find_cgroup_root(fs: str | os.PathLike[str] | None = None) -> CgroupRoot:
    """v1's cpu hierarchy if mounted (cpu.cfs_quota_us), else v2 with the cpu controller.

    Looked for under $COCOI_CGROUP_FS, default /sys/fs/cgroup."""
    fs = Path(fs or os.environ.get("COCOI_CGROUP_FS", "/sys/fs/cgroup"))
    for v1 in (fs / "cpu", fs / "cpu,cpuacct"):
        if (v1 / "cpu.cfs_quota_us").exists():
            return CgroupRoot(v1, 1)
    controllers = fs / "cgroup.controllers"
    if controllers.exists():
        if "cpu" not in controllers.read_text().split():
            raise TestbedError(f"{fs}: cgroup v2 without the cpu controller")
        return CgroupRoot(fs, 2)
    raise TestbedError(f"{fs}: no cgroup CPU controller mounted (v1 cpu or v2)")


def quota_files(share: float, version: int) -> dict[str, str]:
    """The control files that give a group `share` cores (0 < share) and a high weight."""
    if not share > 0:
        raise ValueError(f"cpu share must be > 0 cores, got {share}")
    quota = max(1000, round(share * PERIOD_US))  # the kernel's minimum quota is 1 ms
    if version == 1:
        return {
            "cpu.cfs_period_us": str(PERIOD_US),
            "cpu.cfs_quota_us": str(quota),
            "cpu.shares": str(V1_SHARES),
        }
    return {"cpu.max": f"{quota} {PERIOD_US}", "cpu.weight": str(V2_WEIGHT)}


def own_group(root: CgroupRoot, proc: str | os.PathLike[str] = "/proc/self/cgroup") -> Path:
    """The group this process is in now (to return to), as a path under root."""
    for line in Path(proc).read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        wanted = "cpu" in controllers.split(",") if root.version == 1 else controllers == ""
        if wanted:
            return root.path / rel.lstrip("/")
    return root.path


@dataclass
class Confinement:
    """One rank's group; release() puts the process back and removes the group."""

    group: Path
    home: Path
    share: float
    pid: int

    def release(self) -> None:
        """Back to where we came from; the empty group goes (errors ignored: cleanup)."""
        for target in (self.home, self.group.parent.parent):
            try:
                (target / "cgroup.procs").write_text(f"{self.pid}\n")
                break
            except OSError:
                continue
        for path in (self.group, self.group.parent):
            try:
                path.rmdir()
            except OSError:
                pass  # not empty yet: another rank still uses the job's group


def confine(
    share: float, tag: str, name: str, root: CgroupRoot | None = None, pid: int | None = None
) -> Confinement:
    """Move `pid` (default: this process, all its threads) into a group of `share` cores."""
    root = root or find_cgroup_root()
    pid = pid or os.getpid()
    home = own_group(root)
    group = root.path / f"{PREFIX}{tag}" / name
    try:
        group.mkdir(parents=True, exist_ok=True)
        if root.version == 2:
            enable_cpu(group.parent)
        # The job's group competes with every other process as one entity: weigh it as
        # the sum of its ranks, or the ranks share one plain process's worth of CPU.
        (group.parent / weight_file(root.version)).write_text(str(JOB_WEIGHT[root.version]))
        for file, value in quota_files(share, root.version).items():
            (group / file).write_text(value)
        (group / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        raise TestbedError(f"cannot confine to {share} cores in {group}: {exc.strerror}") from None
    return Confinement(group, home, share, pid)


def enable_cpu(parent: Path) -> None:
    """v2: the cpu controller must be delegated to the children of the job's group."""
    control = parent / "cgroup.subtree_control"
    if control.exists() and "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def sweep_leftovers(root: CgroupRoot | None = None, tag: str | None = None) -> list[Path]:
    """Remove empty cocoi groups (a killed rank leaves its group); returns what went."""
    root = root or find_cgroup_root()
    removed = []
    pattern = f"{PREFIX}{tag}" if tag else f"{PREFIX}*"
    for job in sorted(root.path.glob(pattern)):
        for group in sorted(p for p in job.iterdir() if p.is_dir()):
            try:
                group.rmdir()
                removed.append(group)
            except OSError:
                pass  # still has a process in it
        try:
            job.rmdir()
            removed.append(job)
        except OSError:
            pass
    return removed
