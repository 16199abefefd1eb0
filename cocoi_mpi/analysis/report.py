"""Plain-text summary and CSV export of an HDF5 trace (``cocoi report FILE.h5``).

Works on traces of killed jobs too: the header says the run is incomplete and the tables
show whatever was flushed before the end. Fits and plots belong elsewhere; the report only
reads a :class:`~cocoi_mpi.traces.reader.Trace` and formats numbers. Lines stay within 100 columns.

This module orders the sections and writes the CSV files; the sections are in
:mod:`.report_header`, :mod:`.report_requests` and :mod:`.report_rounds`, the number and
table formatting in :mod:`.report_format`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..traces.reader import Trace, TraceError, read_trace
from ..traces.schema import TABLES
from .report_header import _header
from .report_requests import _aggregate_lines, _request_lines, _scheme_lines, _split_lines
from .report_rounds import _layer_lines, _memory_lines, _subtask_lines

__all__ = ["TraceError", "report_main", "summarize", "write_csv"]


def summarize(trace: Trace) -> str:
    """The whole plain-text report, sections separated by blank lines."""
    sections: list[Callable[[Trace], list[str]]] = [
        _header,
        _request_lines,
        _aggregate_lines,
        _scheme_lines,
        _split_lines,
        _layer_lines,
        _subtask_lines,
        _memory_lines,
    ]
    blocks = ["\n".join(lines) for lines in (s(trace) for s in sections) if lines]
    if trace.logits.shape[0] != trace.n_rows("requests"):
        blocks.append(
            f"Note: {trace.logits.shape[0]} logits rows for "
            f"{trace.n_rows('requests')} requests (the run ended mid-request?)"
        )
    return "\n\n".join(blocks) + "\n"


def _csv_value(value: Any) -> Any:
    """NaN as an empty cell, which spreadsheets and pandas read as missing."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_csv(trace: Trace, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write requests.csv, rounds.csv and subtasks.csv (header row first); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        path = out / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(trace.table(name)))
            for row in trace.rows(name):
                writer.writerow([_csv_value(v) for v in row.values()])
        written.append(path)
    return written


def report_main(
    path: str | os.PathLike[str],
    csv_dir: str | os.PathLike[str] | None = None,
    plots_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Print the report; optionally export CSV and PNG figures. Bad files raise TraceError."""
    trace = read_trace(path)
    print(summarize(trace), end="")
    if csv_dir is not None:
        for written in write_csv(trace, csv_dir):
            print(f"wrote {written}")
    if plots_dir is not None:
        from .plots import write_plots

        for written in write_plots(trace, plots_dir):
            print(f"wrote {written}")
