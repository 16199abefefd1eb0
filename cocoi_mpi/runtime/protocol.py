"""Messages between master and workers.

Control messages (small, pickled) go master -> worker on tag CTRL, in order.
Tensors travel as raw contiguous buffers on a per-round data tag, so a late reply
can never be matched to a later round. Every task gets exactly one reply: the
result, or a trailer-only "skipped" reply, so the master never leaves a receive
unmatched and a worker's large send never blocks forever. Worker errors travel as
raw UTF-8 bytes on tag ERROR (one summary line, then the worker's stack, indented and
bounded: see error_report), so the master's wait can include them; the master posts
one error receive per worker (not one from ANY_SOURCE), so under ULFM a dead worker
fails only its own requests. At the end each worker sends its log on tag LOG
(point to point: a collective would fail or hang once a worker is dead), and the
master, once it has every log or knows the sender dead, answers on tag FAREWELL with
whether any rank died: only the master knows that for sure by then (see
job.guard_finalize).
"""

from __future__ import annotations

import os
import sys
import textwrap
import traceback
from dataclasses import dataclass

CTRL = 1
ERROR = 2
LOG = 3
FAREWELL = 4
SENDS = 5  # a worker's batch of reply send durations, shipped as it goes (flat memory)
SEND_BATCH = 64  # ... this many per message
DATA_BASE = 100
DATA_SPAN = 30000  # MPI guarantees tags up to 32767
SUMMARY_BYTES = 1024  # an error report's first line: where and what
TRACEBACK_LINES = 40  # ... then the tail of the worker's stack: at most this many lines
TRACEBACK_BYTES = 8192  # ... and this many UTF-8 bytes
ERROR_BYTES = SUMMARY_BYTES + TRACEBACK_BYTES + 3072  # + its header, indents, host name
LAST_CALL = "most recent call last):"

# Appended to every reply: the worker's receive, queue, compute and injected-delay
# durations, and its resident memory (MB) when it replied (the soak's leak check).
TRAILER = ("recv_s", "queue_s", "compute_s", "delay_s", "rss_mb")
# A trailer-only reply carries one of these codes in its first slot instead.
SKIPPED = -1.0  # the round was decoded before the worker got to it
FAILED = -2.0  # the worker failed this subtask (simulated failure that signals itself)


def data_tag(round_id: int) -> int:
    """Tag of a round's payloads; rounds far apart may share one, never adjacent ones."""
    return DATA_BASE + round_id % DATA_SPAN


@dataclass(frozen=True)
class LayerMeta:
    """A type-1 conv as workers receive it at setup (weights follow as raw buffers)."""

    layer_id: int
    name: str
    weight_shape: tuple[int, ...]
    dtype: str
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pad_h: tuple[int, int]
    pad_w: tuple[int, int]
    bias: bool = False  # a bias vector (C_out,) follows the weight


@dataclass(frozen=True)
class Task:
    """One subtask: the payload (coded input) follows on ``data_tag(round)``."""

    round: int
    layer_id: int
    shape: tuple[int, ...]
    dtype: str
    row: int
    fail: str = ""  # "silent": never reply; "notice": reply FAILED without computing
    recv_delay: float = 0.0  # emulated input transmission before computing
    send_delay: float = 0.0  # emulated output transmission (+ straggling) before replying
    slowdown: float = 1.0  # compute made this many times slower (a straggling device)
    masks: tuple = ()  # conv block, systematic piece: valid columns before each inner conv
    crash: str = ""  # fault drill (--crash): "kill" SIGKILLs the worker, "exit" exits it,
    hang_s: float = 0.0  # and "hang" makes it unresponsive for hang_s seconds
    bias_scales: tuple = ()  # per piece, the layer's bias times this (Scheme.bias_scales)


@dataclass(frozen=True)
class Done:
    """These rounds are decoded: skip their tasks if not started or not yet sent."""

    rounds: tuple[int, ...]


@dataclass(frozen=True)
class Stop:
    """Reply 'skipped' to queued tasks, report the log, leave the loop."""


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, B on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def error_report(summary: str, exc: BaseException, rank: int, host: str) -> str:
    """What a worker sends on ERROR: one line saying where and what, then its stack
    under a header naming the rank and host, indented so that rank 0 prints it as is
    under its one ``cocoi: error:`` line. The stack keeps Python's layout but not the
    word "Traceback", left to a local, uncaught error (what users and tests grep for)."""
    summary = clip(" ".join(summary.split()), SUMMARY_BYTES)
    text = "".join(traceback.format_exception(exc))
    lines = text.replace(f"Traceback ({LAST_CALL}", f"({LAST_CALL}").splitlines()
    if lines and lines[0] == f"({LAST_CALL}":  # the header below says it
        lines = lines[1:]
    stack = bounded_tail(lines, TRACEBACK_LINES, TRACEBACK_BYTES)
    header = f"worker rank {rank} on host {host} ({LAST_CALL}"
    return "\n".join([summary, *("  " + line for line in [header, *stack])])


def bounded_tail(lines: list[str], max_lines: int, max_bytes: int) -> list[str]:
    """The last lines that fit both bounds (each line clipped to an eighth of the
    bytes first): the innermost frames and the exception say what went wrong, the
    outer ones (the serve loop) rarely do. A first line says how many were cut."""
    clipped = [clip(line, max(1, max_bytes // 8)) for line in lines]
    kept, size = [], 0
    for line in reversed(clipped):
        size += len(line.encode("utf-8")) + 1
        if len(kept) == max_lines or size > max_bytes:
            break
        kept.append(line)
    cut = len(lines) - len(kept)
    return ([f"... {cut} earlier lines cut"] if cut else []) + kept[::-1]


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


def split_report(text: str) -> tuple[str, str]:
    """An error report's summary line and its stack (header first), unindented: what
    the trace stores. A report without a stack (older workers) gives ""."""
    summary, _, stack = text.partition("\n")
    return summary, textwrap.dedent(stack)


def encode_error(text: str) -> bytearray:
    """The report as sent; cut to the master's receive buffer, so no report can
    overflow it (error_report keeps its parts well below)."""
    data = text.encode("utf-8", "replace")[:ERROR_BYTES]
    return bytearray(data)


def decode_error(buf: bytearray, count: int) -> str:
    return bytes(buf[:count]).decode("utf-8", "replace")
