"""Does the CPU emulation make a device independent of its neighbours? Measure it.

One "device" process times a fixed conv while the other devices are idle, then while
they run the same conv flat out; with no emulation, then with every device confined
to its share (cocoi_mpi.testbed.cgroups). On ten separate devices the two times would be the
same; on one shared machine without emulation the busy neighbours slow it down.
Plain processes (multiprocessing), no MPI: this isolates the cgroup mechanism from
everything else a run does. `cocoi testbed check` prints the table.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass

import torch

from .cgroups import TestbedError, confine

# The fixed conv: a VGG16 conv3 layer's shape on a quarter of its width.
CONV = dict(channels=128, size=56, width=14, kernel=3)


def conv_flops() -> float:
    """Multiply-adds x 2 of the fixed conv (same padding)."""
    c, h, w, k = CONV["channels"], CONV["size"], CONV["width"], CONV["kernel"]
    return 2.0 * c * c * k * k * h * w


def make_conv() -> tuple[torch.nn.Conv2d, torch.Tensor]:
    torch.manual_seed(0)
    c, k = CONV["channels"], CONV["kernel"]
    conv = torch.nn.Conv2d(c, c, k, padding=k // 2)
    return conv, torch.randn(1, c, CONV["size"], CONV["width"])


@dataclass(frozen=True)
class Measurement:
    """Seconds per conv of the timed device, in one setting."""

    emulated: bool
    neighbours_busy: bool
    per_conv_s: list[float]

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.per_conv_s)


def device(index, share, tag, start, stop, out, repeats) -> None:
    """One device: confined to `share` (if > 0); index 0 times, the others load or idle."""
    torch.set_num_threads(1)
    conf = None
    try:
        if share > 0:
            conf = confine(share, tag, f"device{index}")
        conv, x = make_conv()
        with torch.no_grad():
            conv(x)  # warm-up outside the timing
            start.wait()
            if index == 0:
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    conv(x)
                    times.append(time.perf_counter() - t0)
                out.put(("ok", times))
            else:
                while not stop.is_set():
                    conv(x)
    except TestbedError as exc:
        out.put(("error", str(exc)))
    finally:
        if conf is not None:
            conf.release()


def measure(share: float, devices: int, busy: bool, repeats: int, tag: str) -> Measurement:
    """Time `repeats` convs on device 0 with devices-1 neighbours busy or idle."""
    ctx = mp.get_context("fork")
    start, stop, out = ctx.Barrier(devices if busy else 1), ctx.Event(), ctx.Queue()
    count = devices if busy else 1  # idle neighbours: as good as absent (they would sleep)
    procs = [
        ctx.Process(target=device, args=(i, share, tag, start, stop, out, repeats))
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    try:
        status, value = out.get(timeout=600)
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    if status != "ok":
        raise TestbedError(value)
    return Measurement(share > 0, busy, value)


def check(share: float, devices: int, repeats: int, tag: str) -> list[Measurement]:
    """The four settings: plain and emulated, neighbours idle and busy."""
    return [
        measure(s, devices, busy, repeats, f"{tag}-{i}")
        for i, (s, busy) in enumerate([(0.0, False), (0.0, True), (share, False), (share, True)])
    ]


def table(results: list[Measurement], share: float, devices: int) -> list[str]:
    """Markdown: per-conv time idle vs busy, and the change, without and with emulation."""
    flops = conv_flops()
    lines = [
        f"fixed conv {flops / 1e6:.0f} MFLOP, {devices} devices, share {share} core each",
        "",
        "| emulation | neighbours idle ms | neighbours busy ms | change |",
        "|---|---|---|---|",
    ]
    for emulated in (False, True):
        idle, busy = (
            next(m for m in results if m.emulated == emulated and m.neighbours_busy == b)
            for b in (False, True)
        )
        change = busy.mean_s / idle.mean_s - 1.0
        name = f"cgroup {share} core" if emulated else "none"
        lines.append(
            f"| {name} | {idle.mean_s * 1e3:.1f} | {busy.mean_s * 1e3:.1f} | {change:+.1%} |"
        )
    return lines


# The paper's device: a Raspberry Pi 4B computes VGG16's convs at 1.645 ns per FLOP
# (50.8 s x 99.43 % for 30.7 GFLOP, appendix A) over ~100 Mbit/s WiFi (appendix B).
PI_NS_PER_FLOP = 50.8 * 0.9943 / 30.7e9 * 1e9
PI_LINK_MBPS = 100.0


@dataclass(frozen=True)
class Scale:
    """How many times faster than a Pi a confined device computes, and the link that
    keeps a Pi's proportions of compute to transfer at that speed."""

    share: float
    ns_per_flop: float

    @property
    def factor(self) -> float:
        return PI_NS_PER_FLOP / self.ns_per_flop

    @property
    def link_mbps(self) -> float:
        return PI_LINK_MBPS * self.factor

    def derivation(self) -> str:
        return (
            f"pi: a {self.share:g}-core device computes at {self.ns_per_flop:.3f} ns/FLOP, "
            f"{self.factor:.1f}x a Pi 4B's {PI_NS_PER_FLOP:.3f}; so the Pi's "
            f"{PI_LINK_MBPS:g} Mbit/s WiFi becomes {self.link_mbps:.0f} Mbit/s and every "
            f"time is {self.factor:.1f}x shorter than on the Pis (cocoi testbed scale)"
        )


def scale(share: float, repeats: int, tag: str) -> Scale:
    """Time the fixed conv on one device confined to ``share``, neighbours absent."""
    if share <= 0:
        raise TestbedError("scale needs a share > 0: an unconfined device is not a device")
    m = measure(share, 1, False, repeats, tag)
    return Scale(share, m.mean_s / conv_flops() * 1e9)
