"""Serial tests of the HDF5 trace writer and reader (no MPI)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from cocoi_mpi.traces.reader import TraceError, read_trace
from cocoi_mpi.traces.schema import REQUEST_DTYPE, ROUND_DTYPE, SUBTASK_DTYPE
from cocoi_mpi.traces.writer import TraceWriter

CONFIG = {"model": "lenet5", "scheme": "cocoi", "code": "rotation", "n": 3, "k": 2}
META = {
    "versions": {"python": "3.11", "numpy": np.__version__},
    "hostnames": ["master", "w1", "w2", "w3"],
    "world_size": 4,
    "git_commit": "abc1234",
}
NUM_CLASSES = 5

REQUESTS = [
    dict(
        request=0,
        scheme="cocoi",
        scenario=1,
        start=0.0,
        end=1.0,
        latency=1.0,
        predicted=3,
        reference_predicted=3,
        max_abs_err=1e-6,
        rel_err=2e-7,
        encode_s=0.01,
        decode_s=0.02,
        distributed_s=0.5,
        n_rounds=2,
    ),
    dict(
        request=1,
        scheme="cocoi",
        scenario=1,
        start=1.0,
        end=2.5,
        latency=1.5,
        predicted=4,
        n_rounds=2,
    ),
]
ROUNDS = [
    dict(
        request=0,
        round=0,
        layer="features.0",
        layer_index=0,
        k=2,
        n=3,
        r=1,
        pieces_per_worker=1,
        width_out=28,
        piece_width=14,
        remainder_width=0,
        start=0.1,
        split_s=0.001,
        encode_s=0.002,
        send_s=0.003,
        wait_s=0.2,
        decode_s=0.004,
        merge_s=0.0005,
        remainder_s=0.0,
        total_s=0.21,
        n_used=2,
        n_outstanding=1,
        n_failed=0,
        used_workers="1,2",
        systematic_shortcut=True,
    ),
    dict(
        request=0,
        round=1,
        layer="features.3",
        layer_index=1,
        k=2,
        n=3,
        r=1,
        total_s=0.3,
        n_used=2,
        n_outstanding=0,
        n_failed=1,
        used_workers=[1, 3],
    ),
]
SUBTASKS = [
    dict(
        request=0,
        round=0,
        worker=w,
        code_row=w - 1,
        bytes_in=1000,
        bytes_out=500,
        injected_delay_s=0.0,
        worker_recv_s=0.001,
        worker_compute_s=0.01,
        sent_t=0.11,
        arrival_t=0.12 if w < 3 else math.nan,
        status="used" if w < 3 else "late",
    )
    for w in (1, 2, 3)
]


def _write(path: Path, close: bool = True) -> TraceWriter:
    """A small trace with every table filled."""
    writer = TraceWriter(path, config=CONFIG, meta=META, num_classes=NUM_CLASSES)
    writer.append("requests", REQUESTS)
    writer.append("rounds", ROUNDS)
    writer.append("subtasks", SUBTASKS)
    writer.append_logits(np.arange(NUM_CLASSES, dtype=np.float32))
    writer.append_logits(np.ones((1, NUM_CLASSES)))
    if close:
        writer.close()
    return writer


@pytest.fixture
def trace_path(tmp_path: Path) -> Path:
    path = tmp_path / "run.h5"
    _write(path)
    return path


def _same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_round_trip_tables(trace_path: Path) -> None:
    trace = read_trace(trace_path)
    assert list(trace.requests) == list(REQUEST_DTYPE.names)
    assert list(trace.rounds) == list(ROUND_DTYPE.names)
    assert list(trace.subtasks) == list(SUBTASK_DTYPE.names)
    for name, written in (("requests", REQUESTS), ("rounds", ROUNDS), ("subtasks", SUBTASKS)):
        rows = trace.rows(name)
        assert len(rows) == len(written) == trace.n_rows(name)
        for got, want in zip(rows, written, strict=True):
            for key, value in want.items():
                if key == "used_workers" and isinstance(value, list):
                    value = ",".join(map(str, value))
                assert _same(got[key], value), (name, key, got[key], value)
    assert trace.rounds["layer"].dtype.kind == "U"
    assert trace.subtasks["status"].tolist() == ["used", "used", "late"]
    assert trace.rounds["systematic_shortcut"].tolist() == [True, False]


def test_missing_fields_take_defaults(trace_path: Path) -> None:
    second = read_trace(trace_path).rows("requests")[1]
    assert second["reference_predicted"] == -1
    assert math.isnan(second["max_abs_err"]) and math.isnan(second["rel_err"])
    rnd = read_trace(trace_path).rows("rounds")[1]
    assert rnd["pieces_per_worker"] == -1 and math.isnan(rnd["split_s"])


def test_round_trip_logits_and_attrs(trace_path: Path) -> None:
    trace = read_trace(trace_path)
    assert trace.logits.dtype == np.float32
    np.testing.assert_array_equal(
        trace.logits, np.stack([np.arange(NUM_CLASSES), np.ones(NUM_CLASSES)])
    )
    assert trace.config == CONFIG
    assert trace.attrs["versions"] == META["versions"]
    assert trace.attrs["hostnames"] == META["hostnames"]
    assert trace.attrs["world_size"] == 4 and trace.attrs["git_commit"] == "abc1234"
    assert trace.attrs["format_version"] == 1
    assert trace.complete is True and trace.status == "complete"
    assert trace.attrs["start_time"] and trace.attrs["end_time"]


def test_readable_while_open(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    writer = _write(path, close=False)
    trace = read_trace(path)
    assert not trace.complete and trace.status == "running"
    assert trace.n_rows("subtasks") == 3
    writer.append("requests", [dict(request=2, latency=0.5)])
    writer.close()
    trace = read_trace(path)
    assert trace.complete and trace.n_rows("requests") == 3


def test_dropped_writer_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "dropped.h5"
    writer = _write(path, close=False)
    writer.flush()
    del writer
    trace = read_trace(path)
    assert not trace.complete and trace.status == "running"
    assert trace.n_rows("rounds") == 2


def test_killed_process_leaves_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os
        from cocoi_mpi.traces.writer import TraceWriter
        w = TraceWriter({str(path)!r}, config={{"n": 3}}, meta={{}}, num_classes=2)
        w.append("requests", [dict(request=0, latency=1.0)])
        w.append_logits([0.5, 1.5])
        os._exit(1)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    trace = read_trace(path)
    assert not trace.complete and trace.status == "running"
    assert trace.requests["latency"].tolist() == [1.0]
    assert trace.logits.tolist() == [[0.5, 1.5]]


def test_context_manager_records_failure(tmp_path: Path) -> None:
    path = tmp_path / "failed.h5"
    with pytest.raises(RuntimeError):
        with TraceWriter(path, config={}, meta={}, num_classes=2) as writer:
            writer.append("requests", [dict(request=0)])
            raise RuntimeError("boom")
    trace = read_trace(path)
    assert not trace.complete
    assert trace.status == "failed: RuntimeError: boom"
    with TraceWriter(tmp_path / "ok.h5", config={}, meta={}, num_classes=2):
        pass
    assert read_trace(tmp_path / "ok.h5").complete


def test_refuses_overwrite(trace_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TraceWriter(trace_path, config={}, meta={}, num_classes=2)
    assert read_trace(trace_path).n_rows("requests") == 2
    TraceWriter(trace_path, config={}, meta={}, num_classes=2, overwrite=True).close()
    assert read_trace(trace_path).n_rows("requests") == 0


def test_unknown_column_and_table(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t.h5", config={}, meta={}, num_classes=2) as writer:
        with pytest.raises(KeyError, match="latncy"):
            writer.append("requests", [dict(request=0, latncy=1.0)])
        with pytest.raises(KeyError, match="requets"):
            writer.append("requets", [dict(request=0)])
        with pytest.raises(ValueError, match="layer"):
            writer.append("rounds", [dict(layer="x" * 65)])
        with pytest.raises(ValueError, match="shape"):
            writer.append_logits([1.0, 2.0, 3.0])
    assert read_trace(tmp_path / "t.h5").n_rows("requests") == 0


def test_meta_cannot_shadow_reserved_attrs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="complete"):
        TraceWriter(tmp_path / "t.h5", config={}, meta={"complete": True}, num_classes=2)


def test_closed_writer_refuses_writes(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.h5", config={}, meta={}, num_classes=2)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.append("requests", [dict(request=0)])


def test_set_worker_send_fills_matching_rows(tmp_path: Path) -> None:
    path = tmp_path / "send.h5"
    with TraceWriter(path, config={}, meta={}, num_classes=2) as writer:
        writer.append(
            "subtasks", [dict(request=0, round=0, worker=w, status="used") for w in (1, 2, 3)]
        )
        writer.append(
            "subtasks", [dict(request=1, round=1, worker=w, status="late") for w in (1, 2, 1)]
        )
        # a skipped subtask was never sent back: it waits for no send time
        writer.append("subtasks", [dict(request=1, round=1, worker=3, status="skipped")])
        leftover = writer.set_worker_send(
            [(0, 2, 0.25), (1, 1, 0.5), (1, 1, 0.75), (1, 1, 9.0), (7, 1, 1.0), (1, 3, 2.0)]
        )
        assert leftover == [(1, 1, 9.0), (7, 1, 1.0), (1, 3, 2.0)]
        assert writer._pending_send.keys() == {(0, 1), (0, 3), (1, 2)}
        assert writer.set_worker_send([(0, 2, 99.0)]) == [(0, 2, 99.0)]  # never overwrite
    send = read_trace(path).subtasks["worker_send_s"]
    np.testing.assert_array_equal(send, [np.nan, 0.25, np.nan, 0.5, np.nan, 0.75, np.nan])


def test_truncated_file_is_trace_error(trace_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "half.h5"
    shutil.copy(trace_path, broken)
    with open(broken, "r+b") as fh:
        fh.truncate(os.path.getsize(broken) // 2)
    with pytest.raises(TraceError, match="half.h5.*truncated") as info:
        read_trace(broken)
    assert "\n" not in str(info.value)


def test_random_bytes_is_trace_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TraceError, match="junk.h5.*not a readable HDF5 file"):
        read_trace(junk)


def test_missing_file_is_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.h5")


def test_foreign_hdf5_is_trace_error(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as fh:
        fh["x"] = np.arange(3)
    with pytest.raises(TraceError, match="format_version"):
        read_trace(other)


def test_missing_dataset_is_trace_error(trace_path: Path) -> None:
    with h5py.File(trace_path, "a") as fh:
        del fh["rounds"]
    with pytest.raises(TraceError, match="'rounds' is missing"):
        read_trace(trace_path)


def test_long_id_lists_keep_their_head_and_count_the_rest(tmp_path):
    """An LT decode can use hundreds of symbols: the row is written, shortened honestly."""
    from cocoi_mpi.traces.writer import shorten_list

    rows = list(range(400))
    path = tmp_path / "lt.h5"
    with TraceWriter(path, config={}, meta={}, num_classes=2) as writer:
        writer.append("rounds", [dict(request=0, round=0, used_rows=rows, n_used=400)])
        writer.close()
    text = read_trace(path).rounds["used_rows"][0]
    head, marker = text.rsplit(",...+", 1)
    kept = [int(i) for i in head.split(",")]
    assert kept == rows[: len(kept)] and len(kept) + int(marker) == 400
    assert len(text) <= 1024
    assert shorten_list(b"1,2,3,4", 7) == b"1,...+3"
    assert shorten_list(b"1,2,3,4", 6) == b"...+4"
    assert shorten_list(b"10,11,12", 8) == b"10,...+2"
