"""The post-processing recipes of docs/hdf5.md ("Reading the tables"), run as written.

The code blocks are read from the doc itself and run on a small synthetic trace (the
doc's result files are not in git): the h5py and pandas blocks in one namespace, as a
user would paste them into one session, and the ``cocoi report --csv`` line in a shell.
Their results are checked against the trace's known contents and against the numbers
``cocoi report`` computes (cocoi_mpi.analysis.experiments).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cocoi_mpi.analysis.experiments import layer_split, scheme_stats
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.writer import TraceWriter

DOC = Path(__file__).resolve().parents[1] / "docs" / "hdf5.md"
SECTION = "## Reading the tables"
# The paths the doc's blocks use; the tests swap in their own files.
DOC_SWEEP = "results/fig7_vgg16.h5"
DOC_SOAK = "results/soak_lenet5_deaths.h5"
DOC_CSV = "/tmp/fig7_csv"

SCHEMES = ("cocoi", "uncoded")
LEVELS = (0, 1)
REPS = 2
LAYERS = (("features.0", 0), ("features.3", 1))
WORKERS = (1, 2, 3)
CONFIG = {"model": "lenet5", "scheme": "cocoi", "code": "rotation", "n": 3, "k": 2}
META = {
    "versions": {"python": "3.11", "torch": "2.13.0"},
    "world_size": 4,
    "hostnames": ["m", "w1", "w2", "w3"],
    "reliability": {
        "fault_tolerance": "ulfm",
        "dead_workers": [{"rank": 3, "request": 5, "round": 10, "t": 1.0, "wall": 0.0}],
    },
}


def _latency(scheme: str, level: int, rep: int) -> float:
    return 1.0 + 0.5 * (scheme == "cocoi") + 0.25 * level + 0.125 * rep


def _write_trace(path: Path) -> Path:
    """8 requests (2 schemes x 2 levels x 2 repetitions), 2 rounds each, 3 subtasks a round."""
    requests, rounds, subtasks = [], [], []
    request = 0
    for rep in range(REPS):
        for level in LEVELS:
            for scheme in SCHEMES:
                requests.append(
                    dict(
                        request=request,
                        scheme=scheme,
                        scenario=2,
                        level=float(level),
                        repetition=rep,
                        k=2,
                        latency=_latency(scheme, level, rep),
                        predicted=7,
                        reference_predicted=7,
                        rel_err=1e-6,
                        encode_s=0.01,
                        decode_s=0.02,
                        n_rounds=len(LAYERS),
                        master_rss_mb=100.0 + request,
                    )
                )
                for layer, index in LAYERS:
                    rnd = len(LAYERS) * request + index
                    rounds.append(
                        dict(
                            request=request,
                            round=rnd,
                            layer=layer,
                            layer_index=index,
                            k=2,
                            n=3,
                            split_s=0.001,
                            encode_s=0.002 * (scheme == "cocoi"),
                            decode_s=0.003 * (scheme == "cocoi"),
                            merge_s=0.001,
                            total_s=0.05 * (index + 1) + 0.01 * level,
                            used_workers=[1, 2],
                        )
                    )
                    for worker in WORKERS:
                        status = "used" if worker < 3 else ("failed" if level else "late")
                        if worker == 3 and request >= 5:
                            status = "dead"
                        subtasks.append(
                            dict(
                                request=request,
                                round=rnd,
                                worker=worker,
                                code_row=worker - 1,
                                status=status,
                                worker_compute_s=0.01,
                                worker_send_s=0.001 if status == "used" else math.nan,
                            )
                        )
                request += 1
    with TraceWriter(path, config=CONFIG, meta=META, num_classes=10) as writer:
        writer.append("requests", requests)
        writer.append("rounds", rounds)
        writer.append("subtasks", subtasks)
        writer.append_logits(np.eye(10)[[7] * len(requests)])
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_trace(tmp_path_factory.mktemp("post") / "sweep.h5")


def doc_blocks() -> list[tuple[str, str]]:
    """(language, code) of every python and bash block in the doc's section, in order."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(python|bash)[^\n]*\n(.*?)^```", section, re.S | re.M)


def _swap(code: str, trace: Path, csv_dir: Path) -> str:
    """The doc's paths -> this test's files (the soak block reads the same small trace)."""
    for doc_path, ours in ((DOC_SWEEP, trace), (DOC_SOAK, trace), (DOC_CSV, csv_dir)):
        code = code.replace(doc_path, str(ours))
    return code


def _run_python(code: str, namespace: dict) -> None:
    exec(compile(code, str(DOC), "exec"), namespace)


def test_doc_blocks_are_there() -> None:
    blocks = doc_blocks()
    assert [lang for lang, _ in blocks] == ["python"] * 4 + ["bash", "python"]
    code = "".join(c for _, c in blocks)
    for path in (DOC_SWEEP, DOC_SOAK, DOC_CSV):
        assert path in code, path


def test_h5py_and_pandas_blocks(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5py_block, frames, merges, via_reader = (
        _swap(code, trace, tmp_path) for _, code in doc_blocks()[:4]
    )
    ns: dict = {}

    _run_python(h5py_block, ns)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "['logits', 'requests', 'rounds', 'subtasks']"
    assert out[1] == "{'logits': (8, 10), 'requests': (8,), 'rounds': (16,), 'subtasks': (48,)}"
    assert out[3].startswith("b'uncoded' ")
    assert float(out[4]) == pytest.approx(np.mean([1.5, 1.625, 1.75, 1.875]))
    assert out[5] == "complete True"
    assert out[7] == "lenet5 3 2 2.13.0"
    assert out[8] == "(8, 10) 7"
    assert not ns["f"]  # the block closes its file

    _run_python(frames, ns)
    capsys.readouterr()
    req, rounds, sub = ns["req"], ns["rounds"], ns["sub"]
    assert (len(req), len(rounds), len(sub)) == (8, 16, 48)
    assert set(req["scheme"]) == set(SCHEMES)  # decoded: str, not bytes
    assert set(rounds["layer"]) == {name for name, _ in LAYERS}
    assert rounds["used_workers"].iloc[0] == "1,2"
    assert set(sub["status"]) == {"used", "late", "failed", "dead"}
    # the pandas groupby and pivot give the numbers of `cocoi report`'s Schemes table
    piv = ns["piv"]
    assert piv.shape == (len(LEVELS), len(SCHEMES))
    stats = req.groupby(["scenario", "level", "scheme"])["latency"].agg(["count", "std"])
    for row in scheme_stats(read_trace(trace)):
        key = (row["scenario"], row["level"])
        assert piv.loc[key, row["scheme"]] == pytest.approx(row["mean"])
        assert stats.loc[(*key, row["scheme"]), "count"] == row["count"] == REPS
        assert stats.loc[(*key, row["scheme"]), "std"] == pytest.approx(row["std"])
        reduction = 1 - piv.loc[key, row["scheme"]] / piv.loc[key, "uncoded"]
        assert reduction == pytest.approx(row["reduction"])

    _run_python(merges, ns)
    capsys.readouterr()
    split, total = ns["split"], ns["total"]
    for row in layer_split(read_trace(trace)):
        got = split.loc[(row["scheme"], row["layer_index"], row["layer"])]
        assert got["total_s"] == pytest.approx(row["total"])
        assert got["coding_s"] == pytest.approx(row["coding"])
    assert total.loc["cocoi", "coding_s"] == pytest.approx(8 * 0.007)
    assert total.loc["uncoded", "coding_s"] == pytest.approx(8 * 0.002)
    counts = ns["sub"].groupby(["scheme", "status"]).size().unstack(fill_value=0)
    assert counts.loc["cocoi"].sum() == counts.loc["uncoded"].sum() == 24
    assert counts.loc["cocoi", "used"] == 16

    _run_python(via_reader, ns)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "complete [(3, 5)]"
    assert ns["req"]["master_rss_mb"].tolist() == [100.0 + i for i in range(8)]
    by_worker = ns["sub"].groupby("worker")["status"].value_counts().unstack(fill_value=0)
    assert by_worker.loc[3, "dead"] == 6 and by_worker.loc[1, "used"] == 16


def test_report_csv_loads_with_pandas(trace: Path, tmp_path: Path) -> None:
    csv_dir = tmp_path / "csv"
    (_, command), (_, reader) = (
        (lang, _swap(code, trace, csv_dir)) for lang, code in doc_blocks()[-2:]
    )
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines() == [
        f"wrote {csv_dir / name}.csv" for name in ("requests", "rounds", "subtasks")
    ]

    ns: dict = {}
    _run_python(reader, ns)
    assert (len(ns["req"]), len(ns["sub"])) == (8, 48)
    with h5py.File(trace, "r", locking=False) as f:
        for name in ("requests", "rounds", "subtasks"):
            frame = pd.read_csv(csv_dir / f"{name}.csv")
            assert len(frame) == f[name].shape[0], name
            assert list(frame.columns) == list(f[name].dtype.names), name
        latency = f["requests"]["latency"]
    assert ns["req"]["latency"].to_numpy() == pytest.approx(latency)
    assert set(ns["req"]["scheme"]) == set(SCHEMES)
    # NaN is written as an empty cell and read back as NaN
    assert ns["sub"]["worker_send_s"].isna().sum() == 16
