"""RunSummary: the closing figures folded request by request equal those computed from
every row at once (what the master used to keep)."""

from __future__ import annotations

import math
import random

import pytest

from cocoi_mpi.experiment.summary import RunSummary


def rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        scheme = rng.choice(["cocoi", "uncoded", "learned-x"])
        row = dict(
            request=i,
            scheme=scheme,
            latency=rng.uniform(0.01, 2.0),
            encode_s=rng.uniform(0, 0.01),
            decode_s=rng.uniform(0, 0.01),
            predicted=rng.randrange(10),
        )
        if rng.random() < 0.9:
            row.update(reference_predicted=rng.randrange(10), rel_err=rng.uniform(0, 1e-5))
        if rng.random() < 0.7:
            row["label"] = rng.randrange(10)
        out.append(row)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_folded_figures_equal_those_of_all_rows(seed):
    data = rows(300, seed)
    summary = RunSummary()
    for row in data:
        summary.add(row)
    lat = [r["latency"] for r in data]
    assert summary.requests == len(data)
    assert summary.latency_mean == pytest.approx(sum(lat) / len(lat))
    assert (summary.latency_min, summary.latency_max) == (min(lat), max(lat))
    coding = sum(r["encode_s"] + r["decode_s"] for r in data)
    assert summary.coding_share == pytest.approx(100 * coding / sum(lat))
    for group, learned in ((summary.exact, False), (summary.learned, True)):
        mine = [r for r in data if "rel_err" in r and r["scheme"].startswith("learned") == learned]
        assert group.count == len(mine)
        assert group.same_top1 == sum(r["predicted"] == r["reference_predicted"] for r in mine)
        assert group.worst_rel_err == max(r["rel_err"] for r in mine)
    for scheme, acc in summary.accuracy.items():
        mine = [r for r in data if r["scheme"] == scheme and "label" in r]
        assert acc.count == len(mine)
        assert acc.hits == sum(r["predicted"] == r["label"] for r in mine)
        assert acc.all_checked == all("reference_predicted" in r for r in mine)


def test_accuracy_lines_name_each_scheme_and_the_local_forward():
    summary = RunSummary()
    summary.add(dict(scheme="cocoi", latency=1, encode_s=0, decode_s=0, predicted=3, label=3,
                     reference_predicted=3, rel_err=0.0))  # fmt: skip
    summary.add(dict(scheme="cocoi", latency=1, encode_s=0, decode_s=0, predicted=2, label=3,
                     reference_predicted=3, rel_err=0.0))  # fmt: skip
    assert summary.accuracy_lines() == ["accuracy [cocoi]: 50.00% (1/2); local forward 100.00%"]


def test_an_empty_run_has_no_figures():
    summary = RunSummary()
    assert summary.requests == 0
    assert math.isnan(summary.latency_mean) and math.isnan(summary.coding_share)
    assert summary.accuracy_lines() == []
