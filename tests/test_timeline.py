"""Serial tests of `cocoi report --timeline`: the trace-event JSON and the Gantt PNG."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cocoi_mpi.analysis.chrome_json import chrome_trace
from cocoi_mpi.analysis.timeline import TimelineError, build_timeline, pick_requests, write_timeline
from cocoi_mpi.analysis.tracks import MASTER_PHASES
from cocoi_mpi.cli.commands import main
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.schema import SUBTASK_DTYPE
from cocoi_mpi.traces.writer import TraceWriter

CONFIG = {"model": "lenet5", "scheme": "cocoi", "code": "rotation", "n": 3, "k": 2}
META = {"world_size": 4, "hostnames": ["m", "w1", "w2", "w3"]}
NAN = math.nan
EPS = 1e-3  # microseconds: ts and dur are rounded to the nanosecond
WORKER_ORDER = ("receive", "queue", "compute", "injected sleep", "send + network")


def _request(req: int, scheme: str, start: float, end: float, n_rounds: int) -> dict:
    return dict(
        request=req,
        scheme=scheme,
        scenario=2,
        level=1.0,
        start=start,
        end=end,
        latency=end - start,
        n_rounds=n_rounds,
    )


def _round(req: int, rnd: int, start: float, **extra) -> dict:
    """A coded round: phases 1, 2, 3, 50, 4, 1 ms; 10 ms of remainder in the wait."""
    row = dict(
        request=req,
        round=rnd,
        layer=f"features.{rnd}",
        layer_index=rnd,
        k=2,
        n=3,
        start=start,
        split_s=0.001,
        encode_s=0.002,
        send_s=0.003,
        wait_s=0.05,
        decode_s=0.004,
        merge_s=0.001,
        remainder_s=0.01,
        remainder_width=2,
        total_s=0.062,
        fallback=False,
    )
    return row | extra


def _sub(req: int, rnd: int, worker: int, row: int, status: str, sent: float, arrival: float,
         dur: float = 0.002, **extra) -> dict:  # fmt: skip
    """A subtask whose worker spent ``dur`` in each of receive, queue and compute."""
    base = dict(
        request=req,
        round=rnd,
        worker=worker,
        code_row=row,
        bytes_in=1000,
        bytes_out=800,
        worker_recv_s=dur,
        worker_queue_s=dur,
        worker_compute_s=dur,
        worker_slept_s=0.0,
        worker_send_s=0.0005,
        sent_t=sent,
        arrival_t=arrival,
        status=status,
    )
    return base | extra


def _failure_subtasks() -> list[dict]:
    """Every status: used, late, failed (no reply), a clamped reply, an overlap on
    worker 1, then in the fallback round skipped, dead (never sent) and timeout."""
    unknown = dict(worker_recv_s=NAN, worker_queue_s=NAN, worker_compute_s=NAN)
    return [
        _sub(0, 0, 1, 0, "used", 1.014, 1.030, worker_slept_s=0.004),
        _sub(0, 0, 1, 3, "used", 1.015, 1.040),  # overlaps the one above: second lane
        _sub(0, 0, 2, 1, "late", 1.015, 1.150),  # arrives after its round, in round 1
        _sub(0, 0, 3, 2, "failed", 1.016, NAN, **unknown),
        _sub(0, 0, 2, 4, "used", 1.016, 1.020, dur=0.003),  # 9 ms of work in 4 ms: clamped
        _sub(0, 1, 1, 0, "skipped", 1.101, 1.110, **unknown),
        _sub(0, 1, 2, 1, "dead", NAN, NAN, **unknown),
        _sub(0, 1, 3, 2, "timeout", 1.102, NAN, **unknown),
        _sub(1, 2, 1, 0, "used", 1.310, 1.330),
        _sub(1, 2, 2, 1, "used", 1.311, 1.335),
    ]


def _write(path: Path, requests: list, rounds: list, subtasks: list) -> Path:
    with TraceWriter(path, config=CONFIG, meta=META, num_classes=10) as writer:
        writer.append("requests", requests)
        writer.append("rounds", rounds)
        writer.append("subtasks", subtasks)
        writer.append_logits(np.zeros((len(requests), 10)))
    return path


@pytest.fixture
def failures(tmp_path: Path) -> Path:
    """Request 0: a coded round with failures, then a fallback round; request 1 clean."""
    requests = [_request(0, "cocoi", 1.0, 1.2, 2), _request(1, "cocoi", 1.3, 1.4, 1)]
    rounds = [
        _round(0, 0, 1.01),
        _round(0, 1, 1.1, fallback=True, total_s=0.05, **dict.fromkeys(
            ("split_s", "encode_s", "send_s", "wait_s", "decode_s", "merge_s"), 0.0)),
        _round(1, 2, 1.305),
    ]  # fmt: skip
    return _write(tmp_path / "failures.h5", requests, rounds, _failure_subtasks())


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Six requests, two per scheme: cocoi, uncoded, replication."""
    schemes = ["cocoi", "cocoi", "uncoded", "uncoded", "replication", "replication"]
    requests, rounds, subtasks = [], [], []
    for req, scheme in enumerate(schemes):
        t = 1.0 + req
        requests.append(_request(req, scheme, t, t + 0.2, 1))
        rounds.append(_round(req, req, t + 0.01))
        for worker in (1, 2, 3):
            sent = t + 0.015 + 0.001 * worker
            subtasks.append(_sub(req, req, worker, worker - 1, "used", sent, sent + 0.02))
    return _write(tmp_path / "sweep.h5", requests, rounds, subtasks)


def _events(path: Path, requests=None) -> list[dict]:
    """The JSON as a reader gets it (strict: NaN or Infinity would fail to load)."""
    text = json.dumps(chrome_trace(build_timeline(read_trace(path), requests)), allow_nan=False)
    return json.loads(text)["traceEvents"]


def _spans(events: list[dict]) -> list[dict]:
    return [e for e in events if e["ph"] == "X"]


def _end(e: dict) -> float:
    return e["ts"] + e["dur"]


def _inside(child: dict, parent: dict) -> bool:
    return (
        child["pid"] == parent["pid"]
        and child["tid"] == parent["tid"]
        and child["ts"] >= parent["ts"] - EPS
        and _end(child) <= _end(parent) + EPS
    )


def _subtask_ids(trace_path: Path, requests: list[int]) -> list[int]:
    sub = read_trace(trace_path).subtasks
    return np.flatnonzero(np.isin(sub["request"], requests)).tolist()


# --------------------------------------------------------------------------- the JSON


def test_every_subtask_row_appears_exactly_once(failures: Path) -> None:
    events = _events(failures, [0, 1])
    ids = [e["args"]["subtask_id"] for e in events if e.get("cat") == "subtask"]
    assert sorted(ids) == _subtask_ids(failures, [0, 1])
    rows = read_trace(failures).rows("subtasks")
    for e in (e for e in events if e.get("cat") == "subtask"):
        row = rows[e["args"]["subtask_id"]]
        assert set(SUBTASK_DTYPE.names) <= set(e["args"]), e["name"]
        assert (e["args"]["round"], e["args"]["code_row"], e["args"]["worker"]) == (
            row["round"],
            row["code_row"],
            row["worker"],
        )


def test_only_the_chosen_requests_are_drawn(failures: Path) -> None:
    events = _events(failures, [1])
    assert {e["args"]["request"] for e in events if e["ph"] != "M"} == {1}
    ids = [e["args"]["subtask_id"] for e in events if e.get("cat") == "subtask"]
    assert sorted(ids) == _subtask_ids(failures, [1])


def test_times_are_finite_and_durations_not_negative(failures: Path) -> None:
    for e in _events(failures, [0, 1]):
        if e["ph"] == "M":
            continue
        assert math.isfinite(e["ts"]), e
        assert e["ph"] in ("X", "i")
        if e["ph"] == "X":
            assert math.isfinite(e["dur"]) and e["dur"] >= 0, e
        assert e["pid"] == e["args"]["rank"] + 1


def test_spans_on_every_track_nest_and_never_cross(failures: Path) -> None:
    """Trace viewers need each thread's spans properly nested: a span that starts inside
    another ends inside it."""
    tracks = defaultdict(list)
    for e in _spans(_events(failures, [0, 1])):
        tracks[(e["pid"], e["tid"])].append(e)
    for key, spans in tracks.items():
        spans.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in spans:
            while stack and e["ts"] >= _end(stack[-1]) - EPS:
                stack.pop()
            if stack:
                assert _end(e) <= _end(stack[-1]) + EPS, (key, e["name"], stack[-1]["name"])
            stack.append(e)


def test_master_phases_are_in_order_inside_their_round(failures: Path) -> None:
    events = _spans(_events(failures, [0]))
    rounds = [e for e in events if e["cat"] == "round"]
    assert [e["args"]["round"] for e in rounds] == [0, 1]
    for rnd in rounds:
        phases = [
            e for e in events if e["cat"] == "master" and e["args"].get("round") == rnd["args"][
                "round"] and not e["name"].startswith("remainder")
        ]  # fmt: skip
        assert all(_inside(p, rnd) for p in phases)
        assert phases[0]["ts"] == pytest.approx(rnd["ts"], abs=EPS)
        for a, b in zip(phases, phases[1:], strict=False):
            assert _end(a) <= b["ts"] + EPS, (a["name"], b["name"])
        if rnd["args"]["fallback"]:
            assert [p["name"] for p in phases] == ["fallback (local)"]
        else:
            assert [p["name"] for p in phases] == list(MASTER_PHASES)
            assert [p["dur"] for p in phases] == pytest.approx([1e3, 2e3, 3e3, 5e4, 4e3, 1e3])


def test_local_layers_fill_the_gaps_of_the_request(failures: Path) -> None:
    events = _spans(_events(failures, [0]))
    (request,) = [e for e in events if e["cat"] == "request"]
    assert request["ts"] == pytest.approx(1.0e6) and request["dur"] == pytest.approx(0.2e6)
    gaps = [(e["ts"], _end(e)) for e in events if e["name"] == "local layers"]
    assert gaps == [
        pytest.approx((1.0e6, 1.01e6)),
        pytest.approx((1.072e6, 1.1e6)),
        pytest.approx((1.15e6, 1.2e6)),
    ]


def test_remainder_is_drawn_inside_the_wait(failures: Path) -> None:
    events = _spans(_events(failures, [0]))
    (wait,) = [e for e in events if e["name"] == "wait"]
    (rem,) = [e for e in events if e["name"].startswith("remainder")]
    assert _inside(rem, wait) and rem["dur"] == pytest.approx(1e4)


def test_worker_spans_follow_the_send_and_end_at_the_arrival(failures: Path) -> None:
    events = _events(failures, [0, 1])
    parents = [e for e in _spans(events) if e["cat"] == "subtask"]
    for parent in parents:
        sid = parent["args"]["subtask_id"]
        kids = [
            e for e in _spans(events) if e["cat"] == "worker" and e["args"]["subtask_id"] == sid
        ]
        assert kids and all(_inside(k, parent) for k in kids)
        assert kids[0]["ts"] == pytest.approx(parent["args"]["sent_t"] * 1e6, abs=EPS)
        for a, b in zip(kids, kids[1:], strict=False):
            assert _end(a) == pytest.approx(b["ts"], abs=EPS)
        names = [k["name"].split(" [")[0] for k in kids]
        if names != ["round trip (worker times unknown)"]:
            assert names == [n for n in WORKER_ORDER if n in names]
            assert names[-1] == "send + network"
        if not parent["args"].get("clamped"):
            assert _end(kids[-1]) == pytest.approx(parent["args"]["arrival_t"] * 1e6, abs=EPS)


def test_failures_late_replies_and_missing_ones(failures: Path) -> None:
    events = _events(failures, [0])
    subtasks = {e["args"]["subtask_id"]: e for e in events if e.get("cat") == "subtask"}
    assert "[late]" in subtasks[2]["name"] and subtasks[2].get("cname") == "bad"
    assert subtasks[0]["args"]["status"] == "used" and "[" not in subtasks[0]["name"]
    for sid, status in ((3, "failed"), (6, "dead"), (7, "timeout")):
        mark = subtasks[sid]
        assert mark["ph"] == "i" and mark["name"] == f"no reply ({status})"
        assert mark["args"]["arrival_t"] is None  # NaN becomes null: strict JSON
    assert subtasks[3]["ts"] == pytest.approx(1.016e6)
    assert subtasks[6]["ts"] == pytest.approx(1.1e6)  # never sent: its round's start
    assert "round start" in subtasks[6]["args"]["placed_at"]
    skipped = subtasks[5]
    assert skipped["ph"] == "X" and "[skipped]" in skipped["name"]
    assert skipped["dur"] == pytest.approx(9e3)
    clamped = subtasks[4]
    assert clamped["args"]["clamped"] is True
    assert clamped["args"]["overrun_s"] == pytest.approx(0.005)
    (tail,) = [e for e in events if e["name"] == "send + network" and e["args"]["subtask_id"] == 4]
    assert tail["dur"] == 0 and tail["args"]["clamped"] is True
    (sleep,) = [e for e in events if e["name"] == "injected sleep"]
    assert "interleaved" in sleep["args"]["note"]


def test_overlapping_subtasks_of_a_worker_get_another_lane(failures: Path) -> None:
    events = _events(failures, [0])
    lanes = {e["args"]["subtask_id"]: e["tid"] for e in events if e.get("cat") == "subtask"}
    assert lanes[0] != lanes[1]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names[(2, lanes[1])].startswith("worker (overlap lane")
    assert len(set(names)) == len(names)  # thread ids unique over the whole trace
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs == {1: "rank 0 (master)", 2: "rank 1 (worker)", 3: "rank 2 (worker)",
                     4: "rank 3 (worker)"}  # fmt: skip


def test_sends_are_instants_on_the_master_track(failures: Path) -> None:
    events = _events(failures, [1])
    sends = [e for e in events if e.get("cat") == "send"]
    assert [(e["ph"], e["args"]["rank"], e["pid"], e["ts"]) for e in sends] == [
        ("i", 0, 1, pytest.approx(1.310e6)),
        ("i", 0, 1, pytest.approx(1.311e6)),
    ]


def test_pipelined_master_prepares_each_subtask(failures: Path, tmp_path: Path) -> None:
    """A master that encodes per subtask records ``encode_s`` per row; the column may not
    exist in SUBTASK_DTYPE yet, so it is added to the read trace here."""
    trace = read_trace(failures)
    n = len(trace.subtasks["request"])
    trace.subtasks["encode_s"] = np.full(n, 0.0005)
    trace.subtasks["encode_s"][5] = np.nan
    events = chrome_trace(build_timeline(trace, [0]))["traceEvents"]
    prep = [e for e in events if e["name"].startswith("prepare subtask")]
    sent = [r["sent_t"] for r in trace.rows("subtasks") if r["request"] == 0]
    expected = [t for i, t in enumerate(sent) if math.isfinite(t) and i != 5]
    assert sorted(_end(e) for e in prep) == pytest.approx(sorted(t * 1e6 for t in expected))
    assert {(e["args"]["rank"], e["pid"], e["tid"]) for e in prep} == {(0, 1, 1001)}
    assert all(e["dur"] == pytest.approx(500) for e in prep)
    png = write_timeline(trace, tmp_path / "pipelined", [0])[1]
    assert png.stat().st_size > 5000


def test_metadata_says_how_worker_spans_are_placed(failures: Path) -> None:
    doc = chrome_trace(build_timeline(read_trace(failures)))
    assert doc["displayTimeUnit"] == "ms"
    assert "master's send and arrival times" in doc["otherData"]["clock"]
    assert doc["otherData"]["requests"] == [0]


def test_a_killed_run_without_its_request_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "killed.h5", [], [_round(4, 9, 2.0)], [
        _sub(4, 9, 1, 0, "used", 2.01, 2.02)])  # fmt: skip
    trace = read_trace(path)
    assert pick_requests(trace) == [4]
    timeline = build_timeline(trace)
    assert "unfinished" in timeline.titles[4]
    assert any(s.name == "request 4 (unfinished)" for s in timeline.spans)


# --------------------------------------------------------------------------- choosing


def test_default_is_the_first_request(failures: Path) -> None:
    assert pick_requests(read_trace(failures)) == [0]


def test_a_sweep_draws_the_first_request_of_each_scheme(sweep: Path) -> None:
    assert pick_requests(read_trace(sweep)) == [0, 2, 4]
    events = _events(sweep)
    names = [e["name"] for e in events if e.get("cat") == "request"]
    assert names == ["request 0 (cocoi)", "request 2 (uncoded)", "request 4 (replication)"]
    ids = [e["args"]["subtask_id"] for e in events if e.get("cat") == "subtask"]
    assert sorted(ids) == _subtask_ids(sweep, [0, 2, 4])


def test_an_unknown_request_is_refused(failures: Path) -> None:
    with pytest.raises(TimelineError, match=r"no request 7 in the trace \(it has requests 0-1\)"):
        pick_requests(read_trace(failures), [0, 7])


# --------------------------------------------------------------------------- files and CLI


def test_writes_the_json_and_a_png(sweep: Path, tmp_path: Path) -> None:
    written = write_timeline(read_trace(sweep), tmp_path / "out" / "tl.png")
    assert [p.name for p in written] == ["tl.json", "tl.png"]
    assert json.loads(written[0].read_text())["otherData"]["requests"] == [0, 2, 4]
    png = written[1].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_cli_writes_the_timeline(failures: Path, tmp_path: Path) -> None:
    out = tmp_path / "timeline"
    result = CliRunner().invoke(
        main, ["report", str(failures), "--timeline", str(out), "--timeline-requests", "0,1"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}.json" in result.output and f"wrote {out}.png" in result.output
    assert (tmp_path / "timeline.png").stat().st_size > 0
    doc = json.loads((tmp_path / "timeline.json").read_text())
    assert doc["otherData"]["requests"] == [0, 1]


def test_cli_refuses_a_request_not_in_the_trace(failures: Path, tmp_path: Path) -> None:
    out = tmp_path / "timeline"
    result = CliRunner().invoke(
        main, ["report", str(failures), "--timeline", str(out), "--timeline-requests", "7"]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"cocoi: error: {failures}: no request 7 in the trace (it has requests 0-1)"]
    assert "Traceback" not in result.output
    assert not (tmp_path / "timeline.json").exists()


def test_cli_timeline_requests_needs_timeline(failures: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(failures), "--timeline-requests", "0"])
    assert result.exit_code == 2 and "needs --timeline" in result.stderr
