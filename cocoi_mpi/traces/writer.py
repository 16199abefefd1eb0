"""Writing a run's HDF5 trace: one file per run, written by rank 0 only, readable after a crash.

The writer writes the final path directly and flushes after every append, so a job that is
killed leaves a readable file whose ``complete`` attribute is still False. Both writer and
reader open the file with HDF5 file locking off, so ``cocoi report`` can read a file while the
job is still writing it; that is safe because the file is created exclusively and only rank 0
ever writes it (a read racing a write may fail; it then raises :class:`.reader.TraceError`).
The tables and attributes are those of :mod:`.schema`.

No MPI here: pure h5py/numpy.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from .schema import (
    _RESERVED_ATTRS,
    CHUNK_ROWS,
    FORMAT_VERSION,
    LIST_COLUMNS,
    TABLE_DTYPES,
    TABLES,
    _default_row,
)

# Subtask statuses whose reply the worker sent (its send duration comes later); a
# "timeout" row may still get a reply.
AWAIT_SEND = (b"used", b"late", b"replied", b"timeout")


def _now_iso() -> str:
    """Local wall-clock time with its UTC offset, so runs on different hosts compare."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _is_scalar_attr(value: Any) -> bool:
    """Scalars are stored as native HDF5 attributes; everything else goes in as JSON."""
    return isinstance(value, str | bool | int | float | np.bool_ | np.integer | np.floating)


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
