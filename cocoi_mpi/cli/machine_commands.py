"""``cocoi info`` and ``cocoi testbed``: the machine runs run on, what is installed on it and
the emulated testbed (ranks confined to CPU shares)."""

from __future__ import annotations

import click


@click.group()
def testbed() -> None:
    """The emulated testbed: ranks confined to CPU shares (mpirun ... --cpu-share)."""


@testbed.command()
@click.option("--share", type=click.FloatRange(min=0.001), default=0.15, show_default=True)
@click.option("--devices", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--repeats", type=click.IntRange(min=5), default=200, show_default=True)
def check(share: float, devices: int, repeats: int) -> None:
    """Time a fixed conv on one device with the others idle, then busy; with and
    without the CPU emulation. Devices that do not depend on each other: change ~0."""
    import os

    from ..testbed.isolation import check as measure
    from ..testbed.isolation import table

    results = measure(share, devices, repeats, f"check{os.getpid()}")
    for line in table(results, share, devices):
        click.echo(line)


@testbed.command()
@click.option("--share", type=click.FloatRange(min=0.001), default=0.15, show_default=True)
@click.option("--repeats", type=click.IntRange(min=5), default=100, show_default=True)
def scale(share: float, repeats: int) -> None:
    """Time a fixed conv on a device confined to --share and print the `pi` preset's
    time scale: how many times faster than a Pi 4B it computes, and the link speed
    that keeps a Pi's compute-to-transfer proportions (jobs/testbed.sh PRESET=pi)."""
    import os

    from ..testbed.cgroups import TestbedError
    from ..testbed.isolation import scale as measure

    try:
        result = measure(share, repeats, f"scale{os.getpid()}")
    except TestbedError as exc:
        raise click.ClickException(f"cannot confine a device: {exc}") from None
    click.echo(f"link_mbps {result.link_mbps:.0f}")
    click.echo(f"factor {result.factor:.2f}")
    click.echo(result.derivation())


@testbed.command()
def cleanup() -> None:
    """Remove the empty cgroups killed ranks left behind (jobs/testbed.sh runs this)."""
    from ..testbed.cgroups import TestbedError, sweep_leftovers

    try:
        removed = sweep_leftovers()
    except (TestbedError, OSError) as exc:
        click.echo(f"cocoi: testbed cleanup: nothing to do ({exc})")
        return
    click.echo(f"cocoi: testbed cleanup: removed {len(removed)} cgroup(s)")


@click.command()
def info() -> None:
    """Versions of python, torch, mpi4py, the MPI library (ULFM?), h5py and HDF5."""
    from ..runtime.provenance import versions

    for key, value in versions().items():
        click.echo(f"{key:12s} {value}")
