"""cocoi merge: a sweep's parts joined into one trace, refused when they do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.traces.merge import MergeError, merge_traces
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.writer import TraceWriter

CONFIG = {"model": "lenet5", "seed": 0, "sweep": {"schemes": ["cocoi", "uncoded"]}}


def write_part(path, part: str | None, requests: int, rounds_per_request: int = 2, **config):
    """A finished part: requests with rounds and subtasks, ids from 0 as a real run has."""
    cfg = {**CONFIG, "part": part, "out": str(path), **config}
    meta = {"hostnames": ["node1"], "slurm": {"SLURM_ARRAY_TASK_ID": part}}
    with TraceWriter(path, config=cfg, meta=meta, num_classes=3) as writer:
        for req in range(requests):
            writer.append("requests", [{"request": req, "scheme": "cocoi", "latency": 0.1}])
            for r in range(rounds_per_request):
                rnd = req * rounds_per_request + r
                writer.append("rounds", [{"request": req, "round": rnd, "k": 2}])
                writer.append(
                    "subtasks", [{"request": req, "round": rnd, "worker": w} for w in (1, 2)]
                )
            writer.append_logits(np.full(3, req, dtype=np.float32))
        writer.close("complete")
    return path


def test_merge_renumbers_requests_and_rounds(tmp_path):
    parts = [write_part(tmp_path / f"p{i}.h5", f"{i}/3", requests=i + 1) for i in range(3)]
    out = tmp_path / "all.h5"
    done = merge_traces(out, [parts[2], parts[0], parts[1]])  # glob order does not matter
    assert done == {"parts": 3, "requests": 6, "out": str(out)}
    trace = read_trace(out)
    assert trace.complete
    assert trace.requests["request"].tolist() == list(range(6))
    assert trace.rounds["round"].tolist() == list(range(12))
    assert trace.rounds["request"].tolist() == [r // 2 for r in range(12)]
    assert len(set(zip(trace.subtasks["round"], trace.subtasks["worker"], strict=True))) == 24
    assert trace.logits[:, 0].tolist() == [0, 0, 1, 0, 1, 2]  # each part's own logits, in order
    assert [p["part"] for p in trace.attrs["merged_from"]] == ["0/3", "1/3", "2/3"]
    assert trace.config["part"] is None and trace.config["out"] == str(out)


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (
            lambda d: [write_part(d / "a.h5", "0/3", 1), write_part(d / "b.h5", "2/3", 1)],
            r"missing part\(s\) \[1\] of 3",
        ),
        (
            lambda d: [write_part(d / "a.h5", "0/2", 1), write_part(d / "b.h5", "0/2", 1)],
            r"given twice",
        ),
        (
            lambda d: [write_part(d / "a.h5", "0/2", 1), write_part(d / "b.h5", "1/3", 1)],
            r"different splits",
        ),
        (lambda d: [write_part(d / "a.h5", None, 1)], r"not a sweep part"),
        (
            lambda d: [write_part(d / "a.h5", "0/2", 1), write_part(d / "b.h5", "1/2", 1, seed=5)],
            r"not one sweep: seed differ",
        ),
    ],
)
def test_parts_that_do_not_fit_are_refused(tmp_path, make, expect):
    paths = make(tmp_path)
    out = tmp_path / "all.h5"
    with pytest.raises(MergeError, match=expect):
        merge_traces(out, paths)
    assert not out.exists()


def test_unfinished_part_is_refused(tmp_path):
    done = write_part(tmp_path / "a.h5", "0/2", 1)
    killed = tmp_path / "b.h5"
    writer = TraceWriter(killed, config={**CONFIG, "part": "1/2"}, meta={}, num_classes=3)
    writer.close("running")  # what a killed array task leaves
    with pytest.raises(MergeError, match="unfinished"):
        merge_traces(tmp_path / "all.h5", [done, killed])


def test_cli_merge_and_existing_output(tmp_path):
    parts = [str(write_part(tmp_path / f"p{i}.h5", f"{i}/2", 2)) for i in range(2)]
    out = tmp_path / "all.h5"
    result = CliRunner().invoke(main, ["merge", str(out), *parts])
    assert result.exit_code == 0, result.output
    assert "merged 2 parts, 4 requests" in result.output
    again = CliRunner().invoke(main, ["merge", str(out), *parts])
    assert again.exit_code == 1 and "already exists" in again.output
    assert read_trace(out).n_rows("requests") == 4
