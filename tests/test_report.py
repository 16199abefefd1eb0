"""Serial tests of the plain-text report and CSV export of a trace."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cocoi_mpi.analysis.report import report_main, summarize, write_csv
from cocoi_mpi.traces.reader import TraceError, read_trace
from cocoi_mpi.traces.schema import REQUEST_DTYPE, ROUND_DTYPE, SUBTASK_DTYPE
from cocoi_mpi.traces.writer import TraceWriter

CONFIG = {"model": "vgg16", "scheme": "cocoi", "code": "rotation", "n": 3, "k": 2}
META = {
    "versions": {"python": "3.11", "torch": "2.13.0"},
    "world_size": 4,
    "hostnames": ["m", "pi1", "pi2", "pi3"],
    "git_commit": "deadbee",
}


def _requests() -> list[dict]:
    """Latencies 1 s and 3 s; enc+dec shares 10 % and 20 %; second request mismatches."""
    return [
        dict(
            request=0,
            scheme="cocoi",
            scenario=1,
            latency=1.0,
            predicted=7,
            reference_predicted=7,
            rel_err=1e-6,
            encode_s=0.05,
            decode_s=0.05,
            n_rounds=2,
        ),
        dict(
            request=1,
            scheme="cocoi",
            scenario=1,
            latency=3.0,
            predicted=2,
            reference_predicted=5,
            rel_err=3e-6,
            encode_s=0.3,
            decode_s=0.3,
            n_rounds=2,
        ),
    ]


def _rounds() -> list[dict]:
    """features.0 totals 10 and 30 ms (mean 20); features.3 totals 40 and 60 ms (mean 50)."""
    rows = []
    for req in (0, 1):
        rows.append(
            dict(
                request=req,
                round=2 * req,
                layer="features.0",
                layer_index=0,
                k=2,
                n=3,
                pieces_per_worker=1,
                total_s=0.01 + 0.02 * req,
                encode_s=0.001,
                decode_s=0.002,
                wait_s=0.005,
                remainder_s=0.0,
                n_used=2,
                n_outstanding=1,
                n_failed=0,
            )
        )
        rows.append(
            dict(
                request=req,
                round=2 * req + 1,
                layer="features.3",
                layer_index=1,
                k=2,
                n=3,
                pieces_per_worker=1,
                total_s=0.04 + 0.02 * req,
                n_used=2,
                n_outstanding=0,
                n_failed=1,
            )
        )
    return rows


def _subtasks() -> list[dict]:
    """Five subtasks: used 3, late 1, failed 1; worker compute 10 ms on average."""
    statuses = [(1, "used"), (2, "used"), (3, "late"), (1, "used"), (3, "failed")]
    return [
        dict(
            request=i // 3,
            round=i // 3,
            worker=w,
            status=s,
            worker_compute_s=0.01,
            worker_recv_s=0.002 if w == 1 else math.nan,
        )
        for i, (w, s) in enumerate(statuses)
    ]


def _make(path: Path, close: bool = True) -> Path:
    """Write the synthetic trace."""
    writer = TraceWriter(path, config=CONFIG, meta=META, num_classes=10)
    writer.append("requests", _requests())
    writer.append("rounds", _rounds())
    writer.append("subtasks", _subtasks())
    writer.append_logits(np.zeros((2, 10)))
    if close:
        writer.close()
    return path


@pytest.fixture
def trace_path(tmp_path: Path) -> Path:
    return _make(tmp_path / "run.h5")


def test_header(trace_path: Path) -> None:
    text = summarize(read_trace(trace_path))
    assert str(trace_path) in text
    assert "Status      complete" in text
    for piece in (
        "model vgg16",
        "scheme cocoi",
        "code rotation",
        "n 3",
        "k 2",
        "World size  4",
        "torch 2.13.0",
        "deadbee",
        "4 distinct",
    ):
        assert piece in text, piece


def test_request_table_and_aggregate(trace_path: Path) -> None:
    text = summarize(read_trace(trace_path))
    lines = text.splitlines()
    first = next(line for line in lines if line.split()[:2] == ["0", "cocoi"])
    assert "1.0000" in first and "1.0e-06" in first and " ok " in first and "10.0" in first
    second = next(line for line in lines if line.split()[:2] == ["1", "cocoi"])
    assert "3.0000" in second and "MISMATCH" in second and "20.0" in second
    assert "mean 2.0000 s  std 1.4142 s  p95 2.9000 s" in text
    assert "mean share 15.0 %" in text
    assert "2 checked, 1 top-1 match, max rel err 3.00e-06" in text


def test_layer_table(trace_path: Path) -> None:
    text = summarize(read_trace(trace_path))
    first = next(line for line in text.splitlines() if line.startswith("features.0"))
    assert first.split() == [
        "features.0",
        "2",
        "3",
        "1",
        "20.00",
        "1.00",
        "2.00",
        "5.00",
        "0.00",
        "2.0",
        "1.0",
        "0.0",
    ]
    second = next(line for line in text.splitlines() if line.startswith("features.3"))
    assert second.split()[4] == "50.00" and second.split()[-1] == "1.0"
    assert text.index("features.0") < text.index("features.3")


def test_subtask_summary(trace_path: Path) -> None:
    text = summarize(read_trace(trace_path))
    assert ("used 3 (60.0%)  late 1 (20.0%)  skipped 0 (0.0%)  failed 1 (20.0%)\n") in text
    assert "recv 2.00 ms  compute 10.00 ms  send - ms" in text
    worker3 = next(line for line in text.splitlines() if line.split()[:2] == ["3", "2"])
    assert worker3.split()[2:7] == ["0", "1", "0", "1", "0"]


def test_fits_in_100_columns(trace_path: Path) -> None:
    assert max(len(line) for line in summarize(read_trace(trace_path)).splitlines()) <= 100


def test_incomplete_trace_is_flagged(tmp_path: Path) -> None:
    path = _make(tmp_path / "killed.h5", close=False)
    text = summarize(read_trace(path))
    assert "INCOMPLETE" in text and "running" in text
    assert "mean 2.0000 s" in text


def test_empty_trace(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    TraceWriter(path, config={}, meta={}, num_classes=3).close()
    text = summarize(read_trace(path))
    assert "Requests: none recorded" in text and "Subtasks: none recorded" in text


def test_csv_export(trace_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    paths = write_csv(read_trace(trace_path), out)
    assert sorted(p.name for p in paths) == ["requests.csv", "rounds.csv", "subtasks.csv"]
    for name, dtype, count in (
        ("requests", REQUEST_DTYPE, 2),
        ("rounds", ROUND_DTYPE, 4),
        ("subtasks", SUBTASK_DTYPE, 5),
    ):
        with open(out / f"{name}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == list(dtype.names)
        assert len(rows) == count + 1
    with open(out / "subtasks.csv", newline="") as fh:
        first = next(csv.DictReader(fh))
    assert first["status"] == "used" and first["worker_send_s"] == ""


def test_report_main_prints_and_writes(
    trace_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_main(trace_path, csv_dir=tmp_path / "out")
    printed = capsys.readouterr().out
    assert "Requests (2)" in printed and "wrote" in printed
    assert (tmp_path / "out" / "rounds.csv").exists()


def test_report_main_bad_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(TraceError, match="junk.h5"):
        report_main(junk)


def test_long_layer_names_and_varying_k(tmp_path: Path) -> None:
    path = tmp_path / "long.h5"
    with TraceWriter(path, config={}, meta={}, num_classes=2) as writer:
        name = "backbone.layer4.1.conv2.very_long_block_name"
        writer.append(
            "rounds",
            [
                dict(request=r, round=r, layer=name, layer_index=0, k=k, n=10, total_s=0.1)
                for r, k in ((0, 4), (1, 7))
            ],
        )
    text = summarize(read_trace(path))
    row = next(line for line in text.splitlines() if line.startswith("..."))
    assert row.split()[:3] == ["...y_long_block_name", "4-7", "10"]
    assert max(len(line) for line in text.splitlines()) <= 100


def test_header_names_slurm_job_testbed_and_merged_parts(tmp_path: Path) -> None:
    meta = {
        "slurm": {
            "SLURM_ARRAY_JOB_ID": "17",
            "SLURM_ARRAY_TASK_ID": "3",
            "SLURM_JOB_ID": "21",
            "SLURM_JOB_NAME": "cocoi-sweep",
            "SLURM_NTASKS": "11",
            "SLURM_JOB_NODELIST": "node[01-02]",
        },
        "testbed": {"summary": "10 workers confined to 0.15 core each (cgroup v1)"},
        "merged_from": [
            {"part": "0/2", "requests": 3, "slurm": {"SLURM_JOB_ID": "5"}},
            {"part": "1/2", "requests": 2, "slurm": {"SLURM_JOB_ID": "6"}},
        ],
    }
    path = tmp_path / "t.h5"
    TraceWriter(path, config=CONFIG, meta=meta, num_classes=3).close()
    text = summarize(read_trace(path))
    assert "Slurm       job 17_3 (cocoi-sweep), 11 tasks on node[01-02]" in text
    assert "Testbed     10 workers confined to 0.15 core each (cgroup v1)" in text
    assert "Merged      2 parts (5 requests) from job 5, job 6" in text
