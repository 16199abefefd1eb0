"""Reading a run's HDF5 trace back, including one from a killed job (or one still written).

The file is opened with HDF5 file locking off, as the writer opens it (see :mod:`.writer`);
any problem with it is one :class:`TraceError` line naming the file.

No MPI here: pure h5py/numpy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import ResultError
from .schema import FORMAT_VERSION, TABLE_DTYPES, TABLES, _default_row


class TraceError(ResultError, ValueError):
    """A trace file that cannot be read; the message is one line naming the file."""


@dataclass
class Trace:
    """A trace as read back.

    Tables are dicts of numpy columns, one entry per field in schema order (column-wise
    suits aggregation in report.py); string columns are decoded to numpy ``str`` arrays.
    Use :meth:`rows` for a list of plain dicts.
    """

    path: str
    attrs: dict[str, Any]
    config: dict[str, Any]
    requests: dict[str, np.ndarray]
    rounds: dict[str, np.ndarray]
    subtasks: dict[str, np.ndarray]
    logits: np.ndarray
    complete: bool

    @property
    def status(self) -> str:
        """How the run ended: "complete", "failed: ...", or "running" if it was killed."""
        return str(self.attrs.get("status", "unknown"))

    def table(self, name: str) -> dict[str, np.ndarray]:
        """A table by name ("requests", "rounds" or "subtasks")."""
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")
        return getattr(self, name)

    def n_rows(self, name: str) -> int:
        """Number of rows in a table."""
        columns = self.table(name)
        return len(next(iter(columns.values()))) if columns else 0

    def rows(self, name: str) -> list[dict[str, Any]]:
        """A table as a list of dicts with plain Python values (for CSV, JSON, printing)."""
        columns = self.table(name)
        names = list(columns)
        lists = [columns[c].tolist() for c in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*lists, strict=True)]


def _fail(path: str | os.PathLike[str], what: str) -> TraceError:
    """Build the one-line error the CLI prints."""
    return TraceError(f"{os.fspath(path)}: {what}")


def _plain(value: Any) -> Any:
    """numpy scalars and bytes from h5py attributes -> plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_attrs(path: str | os.PathLike[str], h5: h5py.File) -> dict[str, Any]:
    """Root attributes with the JSON ones decoded."""
    attrs = {key: _plain(h5.attrs[key]) for key in h5.attrs}
    for required in ("format_version", "config", "complete", "status"):
        if required not in attrs:
            raise _fail(path, f"not a cocoi trace: root attribute {required!r} is missing")
    if attrs["format_version"] != FORMAT_VERSION:
        raise _fail(
            path,
            f"unsupported trace format_version {attrs['format_version']!r}"
            f" (this reader knows {FORMAT_VERSION})",
        )
    try:
        for key in json.loads(attrs.get("json_attrs", '["config"]')):
            attrs[key] = json.loads(attrs[key])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise _fail(path, f"a JSON root attribute cannot be decoded ({exc})") from None
    if not isinstance(attrs["config"], dict):
        raise _fail(path, "root attribute 'config' is not a JSON object")
    return attrs


def _read_table(path: str | os.PathLike[str], h5: h5py.File, name: str) -> dict[str, np.ndarray]:
    """One compound table as decoded columns.

    Columns added to the schema after a file was written read as their defaults (NaN,
    -1, ""), so older traces stay readable; a table that is not a compound is an error.
    """
    if name not in h5:
        raise _fail(path, f"dataset {name!r} is missing")
    data = h5[name][()]
    have = data.dtype.names or ()
    if not have:
        raise _fail(path, f"dataset {name!r} is not a table")
    columns = {}
    for field in have:
        col = data[field]
        if col.dtype.kind == "S":
            col = np.char.decode(col, "utf-8", errors="replace").astype(str)
        columns[field] = np.asarray(col)
    default = _default_row(TABLE_DTYPES[name])
    for field in TABLE_DTYPES[name].names:
        if field not in columns:
            value = default[field]
            value = value.decode() if isinstance(value, bytes) else value
            columns[field] = np.full(len(data), value)
    return columns


def _read_logits(path: str | os.PathLike[str], h5: h5py.File) -> np.ndarray:
    """The (n_requests, num_classes) logits array."""
    if "logits" not in h5:
        raise _fail(path, "dataset 'logits' is missing")
    logits = np.asarray(h5["logits"][()])
    if logits.ndim != 2:
        raise _fail(path, f"dataset 'logits' has shape {logits.shape}, expected 2-D")
    return logits


def _read_open(path: str | os.PathLike[str], h5: h5py.File) -> Trace:
    """Everything from an opened file."""
    attrs = _read_attrs(path, h5)
    tables = {name: _read_table(path, h5, name) for name in TABLES}
    return Trace(
        path=os.fspath(path),
        attrs=attrs,
        config=attrs["config"],
        logits=_read_logits(path, h5),
        complete=bool(attrs["complete"]),
        **tables,
    )


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace, including one from a killed job; any problem is a one-line TraceError."""
    if not os.path.exists(path):
        raise _fail(path, "no such file")
    try:
        h5 = h5py.File(path, "r", locking=False)
    except OSError as exc:
        what = "truncated HDF5 file" if "truncated" in str(exc) else "not a readable HDF5 file"
        raise _fail(path, f"{what} ({_first_line(exc)})") from None
    try:
        with h5:
            return _read_open(path, h5)
    except TraceError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _fail(path, f"damaged or partly written HDF5 file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """h5py errors can span lines; the CLI wants one."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
