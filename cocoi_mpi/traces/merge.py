"""Join the traces of one sweep's parts (``--part I/N``, e.g. a Slurm job array) into one.

Each part is a complete run of its own: its request and round ids start at 0 and its
times are seconds since its own start. The merged file renumbers requests and rounds so
they stay unique (parts in order 0..N-1), keeps each part's times as they were, and lists
the parts with their start times and hosts in the ``merged_from`` attribute. Everything
is checked before the output is created, so a refused merge leaves no file behind.

No MPI here: pure h5py/numpy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ResultError
from ..experiment.sweep import parse_part
from .reader import Trace, read_trace
from .schema import _RESERVED_ATTRS, TABLES
from .writer import TraceWriter

# Settings that may differ between the parts of one sweep.
PER_PART = ("part", "out")


class MergeError(ResultError, ValueError):
    """Parts that do not belong together, or are not finished."""


def merge_traces(out: str | os.PathLike[str], paths: list[str | os.PathLike[str]]) -> dict:
    """Write the parts' union to ``out``; returns a short summary for the CLI."""
    parts = ordered_parts([read_trace(p) for p in paths])
    check_parts(parts)
    if Path(out).exists():
        raise MergeError(f"{os.fspath(out)} already exists; choose another output path")
    first = parts[0]
    config = {**first.config, "part": None, "out": os.fspath(out)}
    meta = {k: v for k, v in first.attrs.items() if k not in _RESERVED_ATTRS}
    meta.pop("merged_from", None)
    meta["merged_from"] = [part_summary(t) for t in parts]
    try:
        requests = write_merged(out, parts, config, meta)
    except BaseException:
        Path(out).unlink(missing_ok=True)  # no half-merged file that looks like a result
        raise
    return dict(parts=len(parts), requests=requests, out=os.fspath(out))


def write_merged(out, parts: list[Trace], config: dict, meta: dict) -> int:
    """Append every part's rows and logits, ids shifted; returns the request count."""
    num_classes = parts[0].logits.shape[1]
    req_offset = round_offset = 0
    with TraceWriter(out, config=config, meta=meta, num_classes=num_classes) as writer:
        for trace in parts:
            for table in TABLES:
                writer.append(table, shifted_rows(trace, table, req_offset, round_offset))
            for vec in trace.logits:
                writer.append_logits(vec)
            req_offset += trace.n_rows("requests")
            rounds = trace.rounds["round"]
            round_offset += int(rounds.max()) + 1 if len(rounds) else 0
        writer.close("complete")
    return req_offset


def ordered_parts(traces: list[Trace]) -> list[Trace]:
    """Parts in index order (part10 after part9, whatever the shell's glob said)."""
    return sorted(traces, key=lambda t: part_index(t)[0])


def part_index(trace: Trace) -> tuple[int, int]:
    part = trace.config.get("part")
    if part is None:
        raise MergeError(f"{trace.path}: not a sweep part (run with --part I/N)")
    return parse_part(part)


def check_parts(parts: list[Trace]) -> None:
    """Same sweep, same settings, every part present once and finished."""
    if not parts:
        raise MergeError("no parts to merge")
    unfinished = [t.path for t in parts if not t.complete]
    if unfinished:
        raise MergeError(f"unfinished part(s), status not complete: {', '.join(unfinished)}")
    counts = {part_index(t)[1] for t in parts}
    if len(counts) != 1:
        raise MergeError(f"parts of different splits (N = {sorted(counts)})")
    (count,) = counts
    seen = [part_index(t)[0] for t in parts]
    missing = sorted(set(range(count)) - set(seen))
    repeated = sorted({i for i in seen if seen.count(i) > 1})
    if missing or repeated:
        what = [f"missing part(s) {missing} of {count}"] if missing else []
        what += [f"part(s) {repeated} given twice"] if repeated else []
        raise MergeError("; ".join(what))
    first = parts[0]
    for trace in parts[1:]:
        differ = sorted(
            key
            for key in set(first.config) | set(trace.config)
            if key not in PER_PART and first.config.get(key) != trace.config.get(key)
        )
        if differ:
            raise MergeError(
                f"{trace.path} and {first.path} are not one sweep: {', '.join(differ)} differ"
            )
        if trace.logits.shape[1] != first.logits.shape[1]:
            raise MergeError(f"{trace.path}: a different number of classes")


def shifted_rows(trace: Trace, table: str, req_offset: int, round_offset: int) -> list[dict]:
    """A part's rows with request and round ids moved past the earlier parts'."""
    rows = trace.rows(table)
    for row in rows:
        row["request"] += req_offset
        if "round" in row:
            row["round"] += round_offset
    return rows


def part_summary(trace: Trace) -> dict[str, Any]:
    """What the merged file remembers of each part."""
    attrs = trace.attrs
    return dict(
        path=trace.path,
        part=trace.config.get("part"),
        requests=trace.n_rows("requests"),
        start_time=attrs.get("start_time", ""),
        end_time=attrs.get("end_time", ""),
        hostnames=attrs.get("hostnames", []),
        slurm=attrs.get("slurm", {}),
    )
