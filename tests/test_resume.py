"""--resume without MPI: which cells of a cut-off trace are kept, how a torn tail is
dropped, which traces are refused (tests/test_resume_e2e.py kills real sweeps)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cocoi_mpi.experiment.config import ConfigError, RunConfig, build_config, scenario_of
from cocoi_mpi.experiment.resume import (
    ResumeError,
    check_resume,
    config_fingerprint,
    lock,
    open_trace,
    resume_at,
    resume_point,
    stored_config,
)
from cocoi_mpi.experiment.sweep import cells, parse_sweep
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.writer import TraceWriter

SWEEP = {
    "schemes": ["cocoi", "uncoded", "replication"],
    "repetitions": 1,
    "scenarios": [{"scenario": 2, "failures": 0}, {"scenario": 2, "failures": 1}],
}
PER_CELL = 2
CLASSES = 4


def config(tmp_path, **changes) -> RunConfig:
    """A resolved sweep config of 6 cells x 2 requests, writing tmp_path/sweep.h5."""
    values = dict(
        model="lenet5", requests=PER_CELL, sweep=SWEEP, out=str(tmp_path / "sweep.h5"), seed=3
    )
    return build_config(None, {**values, **changes}, world_size=4)


def plan_of(cfg: RunConfig) -> list:
    schemes, scenarios, reps = parse_sweep(dict(cfg.sweep), scenario_of(cfg))
    return cells(schemes, scenarios, reps, cfg.seed)


def write_request(writer: TraceWriter, plan: list, req: int, logits: bool = True) -> None:
    """What the master writes for one request: 2 rounds, 3 subtasks each, the row, logits."""
    cell = plan[req // PER_CELL]
    rounds = [dict(request=req, round=2 * req + j + 1, layer="c") for j in range(2)]
    writer.append("rounds", rounds)
    writer.append(
        "subtasks",
        [dict(request=req, round=r["round"], worker=w) for r in rounds for w in (1, 2, 3)],
    )
    row = dict(
        request=req,
        scheme=cell.name,
        scenario=cell.scenario.kind,
        level=cell.scenario.level,
        repetition=cell.repetition,
        start=float(req),
        end=req + 0.5,
    )
    writer.append("requests", [row])
    if logits:
        writer.append_logits(np.full(CLASSES, req, dtype=np.float32))


def cut_off(cfg: RunConfig, requests: int, torn: bool = False) -> TraceWriter:
    """A trace killed after ``requests`` requests; ``torn``: the next one half written
    (its rounds, subtasks and request row, no logits), plus a late subtask row of
    request 0 after it, as the master appends late replies when they come."""
    plan = plan_of(cfg)
    writer = open_trace(
        cfg, cfg_path(cfg), meta={}, num_classes=CLASSES, requests=PER_CELL, plan=plan
    )
    for req in range(requests):
        write_request(writer, plan, req)
    if torn:
        write_request(writer, plan, requests, logits=False)
        writer.append("subtasks", [dict(request=0, round=1, worker=3, status="late")])
    writer.flush()
    return writer  # not closed: status "running", as after a SIGKILL


def cfg_path(cfg: RunConfig) -> Path:
    return Path(cfg.out)


def test_fingerprint_ignores_where_and_how_a_run_writes(tmp_path):
    base = config(tmp_path)
    same = dataclasses.replace(
        base, out="elsewhere.h5", name="x", quiet=True, threads=3, resume=True
    )
    assert config_fingerprint(stored_config(base)) == config_fingerprint(stored_config(same))
    other = dataclasses.replace(base, seed=4)
    assert config_fingerprint(stored_config(base)) != config_fingerprint(stored_config(other))
    assert "resume" not in stored_config(same)


def test_complete_cells_are_a_prefix_and_a_torn_tail_is_dropped(tmp_path):
    cfg = config(tmp_path, resume=True)
    cut_off(cfg, requests=5, torn=True).close("running")
    trace = read_trace(cfg.out)
    assert trace.n_rows("requests") == 6 and len(trace.logits) == 5
    point = resume_point(trace, plan_of(cfg), PER_CELL)
    assert (point.cells, point.requests, point.dropped) == (2, 4, 2)
    assert point.last_round == 8 and point.last_end == 3.5


def test_reopen_keeps_the_complete_cells_rows_and_nothing_else(tmp_path):
    cfg = config(tmp_path, resume=True)
    cut_off(cfg, requests=5, torn=True).close("interrupted: stopped by SIGTERM")
    writer = open_trace(
        cfg,
        cfg_path(cfg),
        meta={"hostnames": ["h"]},
        num_classes=CLASSES,
        requests=PER_CELL,
        plan=plan_of(cfg),
    )
    assert writer.resumed_from.cells == 2
    writer.close("running")
    trace = read_trace(cfg.out)
    assert list(trace.requests["request"]) == [0, 1, 2, 3]
    assert trace.logits[:, 0].tolist() == [0, 1, 2, 3]
    assert set(trace.rounds["request"]) == {0, 1, 2, 3}
    assert set(trace.subtasks["request"]) == {0, 1, 2, 3}
    late = (trace.subtasks["request"] == 0) & (trace.subtasks["status"] == "late")
    assert late.sum() == 1  # a kept request's late reply, written after the torn one, stays
    (entry,) = trace.attrs["resumed"]
    assert entry["kept_cells"] == 2 and entry["dropped_requests"] == 2
    assert entry["previous_status"].startswith("interrupted") and entry["hostnames"] == ["h"]


def test_resume_at_goes_on_with_request_round_and_time(tmp_path):
    cfg = config(tmp_path, resume=True)
    cut_off(cfg, requests=4).close("running")
    writer = open_trace(
        cfg, cfg_path(cfg), meta={}, num_classes=CLASSES, requests=PER_CELL, plan=plan_of(cfg)
    )

    class Engine:
        round, t0 = 0, 0.0

        @staticmethod
        def clock():
            return 100.0

    lines = []
    assert resume_at(writer, Engine, lines.append) == 2
    assert Engine.round == 8 and 100.0 - Engine.t0 == 3.5
    assert "2 complete cells kept" in lines[0]
    writer.close()


def test_a_trace_from_another_config_is_refused_in_one_line(tmp_path):
    cut_off(config(tmp_path), requests=3).close("running")
    other = config(tmp_path, seed=4, resume=True)
    with pytest.raises(ResumeError) as info:
        check_resume(other, cfg_path(other), plan_of(other))
    message = str(info.value)
    assert "another config (seed differ)" in message and "\n" not in message


def test_rows_that_do_not_follow_the_plan_are_refused(tmp_path):
    cfg = config(tmp_path)
    writer = cut_off(cfg, requests=4)
    plan = plan_of(cfg)
    write_request(writer, plan, 3)  # request 3 again, as after a botched merge
    writer.close("running")
    trace = read_trace(cfg.out)
    with pytest.raises(ResumeError, match="row 4 does not follow this sweep's cell order"):
        resume_point(trace, plan, PER_CELL)
    with pytest.raises(ResumeError, match="row 0 does not follow"):
        resume_point(trace, plan[::-1], PER_CELL)


def test_check_resume_verdicts(tmp_path):
    cfg = config(tmp_path, resume=True)
    path = cfg_path(cfg)
    assert check_resume(cfg, path, plan_of(cfg)) == (None, [])  # no file: a fresh run
    cut_off(cfg, requests=3).close("running")
    assert check_resume(cfg, path, plan_of(cfg)) == (None, [])  # cells left: run
    writer = TraceWriter.reopen(path, 3)
    for req in range(3, 12):
        write_request(writer, plan_of(cfg), req)
    writer.close("running")  # killed while closing, every cell written
    code, lines = check_resume(cfg, path, plan_of(cfg))
    assert code == 0 and "marked complete" in lines[0]
    assert read_trace(path).complete
    code, lines = check_resume(cfg, path, plan_of(cfg))
    assert code == 0 and "complete already" in lines[0]


def test_a_trace_still_being_written_is_refused(tmp_path):
    cfg = config(tmp_path, resume=True)
    writer = cut_off(cfg, requests=3)  # its lock is held, as by an orphaned master
    with pytest.raises(ResumeError, match="being written by a running job"):
        check_resume(cfg, cfg_path(cfg), plan_of(cfg))
    writer.lock.close()
    lock(cfg_path(cfg)).close()
    writer.close()


def test_unreadable_hdf5_is_moved_aside_and_other_files_are_left_alone(tmp_path):
    cfg = config(tmp_path, resume=True)
    path = cfg_path(cfg)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # a superblock torn by a kill
    code, lines = check_resume(cfg, path, plan_of(cfg))
    assert code is None and "moved to" in lines[0] and not path.exists()
    assert len(list(tmp_path.glob("sweep.h5.unreadable-*"))) == 1
    path.write_text("my notes")
    with pytest.raises(ResumeError, match="not an HDF5 file"):
        check_resume(cfg, path, plan_of(cfg))
    assert path.read_text() == "my notes"


def test_resume_needs_a_stable_output_path():
    with pytest.raises(ConfigError, match="--resume needs --out"):
        build_config(None, {"resume": True}, world_size=3)
    assert build_config(None, {"resume": True, "name": "x"}, world_size=3).resume


def test_resume_in_a_toml_file(tmp_path):
    toml = tmp_path / "s.toml"
    sweep = 'schemes = ["cocoi"]\n'
    toml.write_text(f'resume = true\nout = "x.h5"\n[sweep]\n{sweep}')
    assert build_config(str(toml), {}, world_size=3).resume
    toml.write_text(f'out = "x.h5"\n[sweep]\n{sweep}resume = true\n')
    with pytest.raises(ConfigError, match="resume is a run setting"):
        build_config(str(toml), {}, world_size=3)
