"""The emulated testbed on the ranks: every worker confined to its CPU share.

A collective at start-up (before any other message): rank 0 picks the job's cgroup tag,
every rank confines itself (workers to ``cpu_share`` cores, the master to
``master_cpu_share`` if set), and rank 0 learns who could and who could not. A rank
that cannot (cgroups not writable: not root, a read-only cgroupfs, no cpu controller)
runs unconfined; rank 0 says so once and the trace records it (``testbed``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from mpi4py import MPI

from ..experiment.config import RunConfig
from ..testbed.cgroups import Confinement, TestbedError, confine, find_cgroup_root


@dataclass
class Devices:
    """This rank's confinement (None: unconfined) and, on rank 0, the job's summary."""

    confinement: Confinement | None = None
    meta: dict = field(default_factory=dict)

    def release(self) -> None:
        if self.confinement is not None:
            self.confinement.release()
            self.confinement = None


def emulate_devices(cfg: RunConfig, comm: MPI.Comm, echo: Callable) -> Devices:
    """Confine every rank to its share; collective over ``comm``; a no-op when off."""
    if not cfg.cpu_share and not cfg.master_cpu_share:
        return Devices()
    rank = comm.Get_rank()
    tag = comm.bcast(f"{os.getpid()}" if rank == 0 else None, root=0)
    share = cfg.master_cpu_share if rank == 0 else cfg.cpu_share
    devices, outcome = Devices(), "unconfined"
    if share:
        try:
            devices.confinement = confine(share, tag, f"rank{rank}")
            outcome = "confined"
        except TestbedError as exc:
            outcome = str(exc)
    booked = comm.gather((MPI.Get_processor_name(), share if outcome == "confined" else 0), root=0)
    outcomes = comm.gather(outcome, root=0)
    if rank == 0:
        devices.meta = summary(cfg, tag, outcomes)
        echo(f"testbed: {devices.meta['summary']}")
        for line in overbooked(booked):
            echo(f"testbed: warning: {line}")
    return devices


def overbooked(booked: list[tuple[str, float]]) -> list[str]:
    """Shares only isolate ranks while a node's shares fit in its cores (rank 0's node
    is the one we can count; others are assumed alike)."""
    here = MPI.Get_processor_name()
    total = sum(share for host, share in booked if host == here)
    cores = len(os.sched_getaffinity(0))
    if total <= cores:
        return []
    return [
        f"{total:g} cores booked on {here}, which has {cores}: confined ranks will slow "
        "each other down; lower --cpu-share"
    ]


def summary(cfg: RunConfig, tag: str, outcomes: list[str]) -> dict:
    """What the trace keeps: the shares, the cgroup used, and who is not confined why."""
    try:
        root = find_cgroup_root()
        where = f"cgroup v{root.version} at {root.path}"
    except TestbedError as exc:
        where = str(exc)
    confined = [r for r, o in enumerate(outcomes) if o == "confined"]
    failed = {r: o for r, o in enumerate(outcomes) if o not in ("confined", "unconfined")}
    workers = [r for r in confined if r > 0]
    text = f"{len(workers)} workers confined to {cfg.cpu_share} core each"
    if 0 in confined:
        text += f", the master to {cfg.master_cpu_share}"
    text += f" ({where})"
    if failed:
        first = next(iter(failed.values()))
        text += f"; NOT confined, running without CPU emulation: ranks {sorted(failed)} ({first})"
    return dict(
        cpu_share=cfg.cpu_share,
        master_cpu_share=cfg.master_cpu_share,
        cgroup=where,
        tag=f"cocoi-{tag}",
        confined_ranks=confined,
        not_confined={str(r): o for r, o in failed.items()},
        summary=text,
    )
