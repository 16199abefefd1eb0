"""HDF5 traces of a run: one file per run, written by rank 0 only, readable after a crash.

Layout (format_version 1, see DESIGN.md "HDF5 results"):

- root attributes: ``config`` (JSON), every key of the writer's ``meta`` (non-scalar values as
  JSON strings), ``start_time``/``end_time`` (ISO 8601), ``complete`` (bool), ``status``
  ("running", "complete", "failed: ..."), ``format_version`` and ``json_attrs`` (JSON list of
  the attribute names stored as JSON, so the reader knows which ones to decode).
- ``requests``, ``rounds``, ``subtasks``: chunked 1-D compound tables with ``maxshape=(None,)``
  whose row types are :data:`REQUEST_DTYPE`, :data:`ROUND_DTYPE` and :data:`SUBTASK_DTYPE`.
- ``logits``: float32, shape ``(n_requests, num_classes)``.

The writer writes the final path directly and flushes after every append, so a job that is
killed leaves a readable file whose ``complete`` attribute is still False. Both writer and
reader open the file with HDF5 file locking off, so ``cocoi report`` can read a file while the
job is still writing it; that is safe because the file is created exclusively and only rank 0
ever writes it (a read racing a write may fail; it then raises :class:`TraceError`).

No MPI here: pure h5py/numpy.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ..errors import ResultError

FORMAT_VERSION = 1
TABLES = ("requests", "rounds", "subtasks")
SUBTASK_STATUSES = ("used", "late", "skipped", "failed", "dead", "timeout")
CHUNK_ROWS = 256

REQUEST_DTYPE = np.dtype(
    [
        ("request", "i8"),
        ("scheme", "S24"),
        ("scenario", "i4"),
        ("level", "f8"),  # lambda_tr in scenario 1, n_f in scenarios 2-3
        ("repetition", "i4"),
        ("k", "i4"),  # the configured k (narrow layers may use less)
        ("start", "f8"),
        ("end", "f8"),
        ("latency", "f8"),
        ("predicted", "i8"),
        ("reference_predicted", "i8"),  # -1: not checked
        ("max_abs_err", "f8"),  # NaN: not checked
        ("rel_err", "f8"),  # max_abs_err / max|reference logit|; NaN: not checked
        ("encode_s", "f8"),
        ("decode_s", "f8"),
        ("distributed_s", "f8"),  # sum of the request's round totals
        ("n_rounds", "i4"),
        ("label", "i8"),  # true class when the inputs come from a dataset; -1: unknown
        ("master_rss_mb", "f8"),  # resident memory of rank 0 after the request; NaN: unknown
    ]
)

ROUND_DTYPE = np.dtype(
    [
        ("request", "i8"),
        ("round", "i8"),  # global round id (the message tag's round)
        ("layer", "S64"),  # module path name
        ("layer_index", "i4"),
        ("k", "i4"),
        ("n", "i4"),
        ("r", "i4"),
        ("pieces_per_worker", "i4"),
        ("width_out", "i4"),
        ("piece_width", "i4"),
        ("remainder_width", "i4"),
        ("start", "f8"),  # seconds since run start
        ("split_s", "f8"),
        ("encode_s", "f8"),
        ("send_s", "f8"),  # posting all sends
        ("wait_s", "f8"),  # first send to decodable
        ("decode_s", "f8"),
        ("merge_s", "f8"),
        ("remainder_s", "f8"),
        ("total_s", "f8"),
        ("n_enc", "f8"),  # FLOPs of encoding (eq. 8 generalised to m pieces per subtask)
        ("n_cmp", "f8"),  # FLOPs of one subtask on a worker (eq. 9)
        ("n_dec", "f8"),  # FLOPs of decoding (eq. 12)
        ("n_used", "i4"),
        ("n_outstanding", "i4"),  # replies not yet arrived at decode time
        ("n_failed", "i4"),  # simulated failures / silent workers
        ("used_workers", "S1024"),  # comma-separated ranks (see LIST_COLUMNS)
        ("used_rows", "S1024"),  # comma-separated code rows the decoder used (arrival order)
        ("systematic_shortcut", "?"),
        ("fallback", "?"),  # too few live workers: the master computed the layer itself
    ]
)

SUBTASK_DTYPE = np.dtype(
    [
        ("request", "i8"),
        ("round", "i8"),
        ("worker", "i4"),  # rank
        ("code_row", "i4"),
        ("bytes_in", "i8"),
        ("bytes_out", "i8"),
        ("injected_delay_s", "f8"),  # link + straggling delay the master decided (seeded)
        ("slowdown", "f8"),  # compute slowdown the master decided (scenario 3 straggler)
        ("worker_slept_s", "f8"),  # what the worker actually slept (delays + slowdown)
        ("worker_recv_s", "f8"),  # header to payload received, on the worker
        ("worker_queue_s", "f8"),  # payload received to compute start (busy with older tasks)
        ("worker_compute_s", "f8"),
        ("worker_send_s", "f8"),  # NaN until known (see TraceWriter.set_worker_send)
        ("sent_t", "f8"),  # seconds since run start
        ("arrival_t", "f8"),  # seconds since run start; NaN if it never arrived
        ("status", "S12"),  # one of SUBTASK_STATUSES
        ("worker_rss_mb", "f8"),  # the worker's resident memory when it replied; NaN: none
    ]
)

TABLE_DTYPES: dict[str, np.dtype] = {
    "requests": REQUEST_DTYPE,
    "rounds": ROUND_DTYPE,
    "subtasks": SUBTASK_DTYPE,
}

_RESERVED_ATTRS = (
    "config",
    "start_time",
    "end_time",
    "complete",
    "status",
    "format_version",
    "json_attrs",
    "num_classes",
)


# Subtask statuses whose reply the worker sent (its send duration comes later); a
# "timeout" row may still get a reply.
AWAIT_SEND = (b"used", b"late", b"replied", b"timeout")


class TraceError(ResultError, ValueError):
    """A trace file that cannot be read; the message is one line naming the file."""


def _now_iso() -> str:
    """Local wall-clock time with its UTC offset, so runs on different hosts compare."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _is_scalar_attr(value: Any) -> bool:
    """Scalars are stored as native HDF5 attributes; everything else goes in as JSON."""
    return isinstance(value, str | bool | int | float | np.bool_ | np.integer | np.floating)


def _default_row(dtype: np.dtype) -> np.void:
    """One row of 'unknown' values: NaN for floats, -1 for ints, "" for strings, False."""
    row = np.zeros((), dtype=dtype)
    for name in dtype.names:
        kind = dtype[name].kind
        if kind == "f":
            row[name] = np.nan
        elif kind in "iu":
            row[name] = -1
    return row


def _encode_field(name: str, value: Any, dtype: np.dtype) -> Any:
    """Fixed-size byte strings must fit: truncating a layer name silently would mislead."""
    if dtype.kind != "S":
        return value
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if len(raw) > dtype.itemsize and name in LIST_COLUMNS:
        return shorten_list(raw, dtype.itemsize)
    if len(raw) > dtype.itemsize:
        raise ValueError(
            f"value for {name!r} is {len(raw)} bytes, more than its {dtype.itemsize}: {value!r}"
        )
    return raw


# Comma-separated id lists can outgrow any fixed width (an LT decode may use hundreds of
# symbols): past it they keep their head and say how many ids were left out, ",...+N";
# the round's n_used still counts them all.
LIST_COLUMNS = ("used_workers", "used_rows")


def shorten_list(raw: bytes, width: int) -> bytes:
    """The longest head of a comma list that fits with its ',...+N' marker."""
    ids = raw.split(b",")
    kept = len(ids)
    while kept > 0:
        kept -= 1
        text = b",".join(ids[:kept]) + b",...+" + str(len(ids) - kept).encode()
        if len(text) <= width:
            return text.lstrip(b",")
    raise ValueError(f"a width of {width} bytes cannot hold even the marker")


def _rows_to_array(table: str, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Turn dict rows into a structured array; missing fields take the 'unknown' default."""
    dtype = TABLE_DTYPES[table]
    fields = set(dtype.names)
    unknown = sorted({key for row in rows for key in row} - fields)
    if unknown:
        raise KeyError(f"unknown column(s) for table {table!r}: {', '.join(unknown)}")
    out = np.full(len(rows), _default_row(dtype), dtype=dtype)
    for i, row in enumerate(rows):
        for key, value in row.items():
            out[key][i] = _encode_field(key, value, dtype[key])
    return out


class TraceWriter:
    """Writes one run's HDF5 trace from rank 0; every append is flushed to disk.

    Use as a context manager: an exception closes the file with status
    ``"failed: <Type>: message"``; a kill leaves ``status == "running"``. Either way
    ``complete`` stays False, which is how a reader tells a finished run from a broken one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any],
        meta: Mapping[str, Any],
        num_classes: int,
        overwrite: bool = False,
        auto_flush: bool = True,
    ) -> None:
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self.auto_flush = auto_flush
        self._pending_send: dict[tuple[int, int], deque[int]] = defaultdict(deque)
        self.resumed_from: Any = None  # resume.ResumePoint when reopened by --resume
        self.lock: Any = None  # resume.hold_lock: the open file its advisory lock is on
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} already exists; choose another output path or pass overwrite=True"
            )
        clashes = sorted(set(meta) & set(_RESERVED_ATTRS))
        if clashes:
            raise ValueError(f"meta keys clash with reserved attributes: {', '.join(clashes)}")
        # "w-" fails if the file appeared since the check above: never clobber another run.
        self._file: h5py.File | None = h5py.File(
            self.path, "w" if overwrite else "w-", locking=False
        )
        self._write_attrs(config, meta)
        self._create_datasets()
        self._file.flush()

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], keep_requests: int) -> TraceWriter:
        """Go on writing a cut-off trace (``--resume``, see cocoi_mpi/experiment/resume.py).

        Rows of requests ``keep_requests`` and later (the interrupted cell, and whatever
        torn tail a kill left between two appends) are dropped first, so the requests
        served again are not in the file twice; the file is marked running again. The
        root attributes of the first run (config, start_time, provenance) stay.
        """
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer.auto_flush = True
        writer._pending_send = defaultdict(deque)
        writer.resumed_from = writer.lock = None
        writer._file = h5py.File(writer.path, "r+", locking=False)
        writer.num_classes = int(writer._file.attrs["num_classes"])
        writer._keep_requests(keep_requests)
        writer._file.attrs.update(dict(complete=False, status="running", end_time=""))
        writer._file.flush()
        return writer

    def _keep_requests(self, keep: int) -> None:
        """Shrink every table to the rows of requests 0..keep-1, logits to ``keep`` rows.

        Late subtask rows of a kept request may sit after rows of a dropped one (they
        are appended when they arrive), so tables are filtered, not just cut."""
        for name in (*TABLES, "logits"):
            ds = self._h5[name]
            data = ds[()]
            kept = data[:keep] if name == "logits" else data[data["request"] < keep]
            if len(kept) == len(data):
                continue
            ds.resize(len(kept), axis=0)
            if len(kept):
                ds[...] = kept

    def _write_attrs(self, config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Provenance first, so even a file killed before the first request says what ran."""
        attrs = self._h5.attrs
        json_attrs = ["config"]
        attrs["config"] = json.dumps(dict(config), sort_keys=True, default=str)
        for key, value in meta.items():
            if _is_scalar_attr(value):
                attrs[key] = value
            else:
                attrs[key] = json.dumps(value, sort_keys=True, default=str)
                json_attrs.append(key)
        attrs["json_attrs"] = json.dumps(json_attrs)
        attrs["start_time"] = _now_iso()
        attrs["end_time"] = ""
        attrs["complete"] = False
        attrs["status"] = "running"
        attrs["format_version"] = FORMAT_VERSION
        attrs["num_classes"] = self.num_classes

    def _create_datasets(self) -> None:
        """Empty, resizable, chunked tables that grow one append at a time."""
        for table, dtype in TABLE_DTYPES.items():
            self._h5.create_dataset(
                table, shape=(0,), maxshape=(None,), chunks=(CHUNK_ROWS,), dtype=dtype
            )
        self._h5.create_dataset(
            "logits",
            shape=(0, self.num_classes),
            maxshape=(None, self.num_classes),
            chunks=(
                max(1, min(CHUNK_ROWS, 2**20 // max(1, 4 * self.num_classes))),
                self.num_classes,
            ),
            dtype="f4",
        )

    @property
    def _h5(self) -> h5py.File:
        """The open file; a closed writer refuses further writes instead of crashing h5py."""
        if self._file is None:
            raise ValueError(f"trace writer for {self.path} is closed")
        return self._file

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._file is None

    def _grow(self, name: str, data: np.ndarray) -> int:
        """Resize-write(-flush); returns the index of the first new row."""
        ds = self._h5[name]
        start = ds.shape[0]
        ds.resize(start + data.shape[0], axis=0)
        ds[start:] = data
        if self.auto_flush:
            self._h5.flush()
        return start

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows (dicts keyed by column) to ``requests``, ``rounds`` or ``subtasks``."""
        if table not in TABLE_DTYPES:
            raise KeyError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        rows = list(rows)
        if not rows:
            return
        data = _rows_to_array(table, rows)
        start = self._grow(table, data)
        if table == "subtasks":
            self._index_pending_send(data, start)

    def _index_pending_send(self, data: np.ndarray, start: int) -> None:
        """Remember rows still waiting for their worker's send duration (it comes later).
        Only rows of a reply the worker sent: a skipped, failed or dead subtask never
        gets one, and waiting for it would grow the index for ever."""
        for offset, row in enumerate(data):
            if row["status"] in AWAIT_SEND and np.isnan(row["worker_send_s"]):
                key = (int(row["round"]), int(row["worker"]))
                self._pending_send[key].append(start + offset)

    def append_logits(self, vec: np.ndarray | Sequence[float]) -> None:
        """Append one request's logits (shape (num_classes,)) or a batch (m, num_classes)."""
        arr = np.asarray(vec, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape ({self.num_classes},) or (m, {self.num_classes}); "
                f"got {np.shape(vec)}"
            )
        self._grow("logits", arr)

    def set_worker_send(
        self, entries: Iterable[tuple[int, int, float]]
    ) -> list[tuple[int, int, float]]:
        """Fill ``worker_send_s`` of subtask rows already written, matched on (round, worker).

        A worker only learns how long its send took after the send, so the value arrives
        with a later message. If a worker had several subtasks in one round, successive
        entries fill its rows in the order they were appended. Returns the entries that
        matched no row still waiting (e.g. their round is not written yet) so the caller
        can retry them after the next append.
        """
        ds = self._h5["subtasks"]
        unmatched = []
        for round_id, worker, send_s in entries:
            rows = self._pending_send.get((int(round_id), int(worker)))
            if not rows:
                unmatched.append((round_id, worker, send_s))
                continue
            idx = rows.popleft()
            if not rows:
                del self._pending_send[(int(round_id), int(worker))]
            row = ds[idx]
            row["worker_send_s"] = send_s
            ds[idx] = row
        if self.auto_flush:
            self._h5.flush()
        return unmatched

    def set_meta(self, key: str, value: Any) -> None:
        """Add a root attribute after the start (e.g. worker logs gathered at the end)."""
        if key in _RESERVED_ATTRS:
            raise ValueError(f"{key!r} is a reserved attribute")
        attrs = self._h5.attrs
        if _is_scalar_attr(value):
            attrs[key] = value
            return
        attrs[key] = json.dumps(value, sort_keys=True, default=str)
        json_attrs = json.loads(attrs["json_attrs"])
        if key not in json_attrs:
            attrs["json_attrs"] = json.dumps([*json_attrs, key])

    def flush(self) -> None:
        """Push everything written so far to disk (a later crash cannot lose it)."""
        self._h5.flush()

    def mark(self, status: str) -> None:
        """Record an incomplete status now and flush, before a slow shutdown that a kill
        may cut short (close() records the final one)."""
        self._file.attrs["status"] = status
        self._file.flush()

    def close(self, status: str = "complete") -> None:
        """Record how the run ended and close; ``complete`` is True only for "complete"."""
        if self._file is None:
            return
        attrs = self._file.attrs
        attrs["complete"] = status == "complete"
        attrs["status"] = status
        attrs["end_time"] = _now_iso()
        self._file.flush()
        self._file.close()
        self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close(status=f"failed: {exc_type.__name__}: {exc}")


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
