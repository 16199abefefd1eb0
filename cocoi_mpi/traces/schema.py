"""The HDF5 trace's schema: its tables' row types and the names the writer and reader share.

Layout (format_version 1, see DESIGN.md "HDF5 results"):

- root attributes: ``config`` (JSON), every key of the writer's ``meta`` (non-scalar values as
  JSON strings), ``start_time``/``end_time`` (ISO 8601), ``complete`` (bool), ``status``
  ("running", "complete", "failed: ..."), ``format_version`` and ``json_attrs`` (JSON list of
  the attribute names stored as JSON, so the reader knows which ones to decode).
- ``requests``, ``rounds``, ``subtasks``: chunked 1-D compound tables with ``maxshape=(None,)``
  whose row types are :data:`REQUEST_DTYPE`, :data:`ROUND_DTYPE` and :data:`SUBTASK_DTYPE`.
- ``logits``: float32, shape ``(n_requests, num_classes)``.

Written by :mod:`.writer`, read back by :mod:`.reader`. No MPI here: pure numpy.
"""

from __future__ import annotations

import numpy as np

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
        ("master_cpu_s", "f8"),  # rank 0's CPU seconds during the forward pass; NaN: unknown
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
        ("injected_recv_s", "f8"),  # the part of it before computing (NaN: older traces)
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


# Comma-separated id lists can outgrow any fixed width (an LT decode may use hundreds of
# symbols): past it they keep their head and say how many ids were left out, ",...+N";
# the round's n_used still counts them all.
LIST_COLUMNS = ("used_workers", "used_rows")
