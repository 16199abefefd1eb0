"""cocoi predict: a trace's cells beside the simulator (issue 18), the empirical phase,
and the whole-request simulation behind the paper jitter level."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.experiment.scenarios import Jitter
from cocoi_mpi.latency.fit import empirical_phase, fit_samples
from cocoi_mpi.latency.prediction import predict_trace, ratio_rows, run_scenario
from cocoi_mpi.latency.profile import Empirical, Profile, ShiftExp, pi4_profile
from cocoi_mpi.latency.request_sim import paper_ratios, with_jitter
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.writer import TraceWriter

LAYERS = ("features.0", "features.3")  # lenet5's convs


def write_run(path, schemes=("cocoi:auto", "uncoded"), levels=(0, 2), reps=3, **config):
    """A lenet5 sweep trace: each request one round per conv, 0.5 s undistributed."""
    config = {"model": "lenet5", "n": 4, "jitter": "none", "detection": "immediate", **config}
    with TraceWriter(path, config=config, meta={}, num_classes=10) as w:
        req = rnd = 0
        for _ in range(reps):
            for level in levels:
                for scheme in schemes:
                    rounds = [
                        dict(request=req, round=rnd + i, layer=name, k=3 if "cocoi" in scheme
                             else 4, n=4, total_s=0.25, fallback=False)
                        for i, name in enumerate(LAYERS)
                    ]  # fmt: skip
                    rnd += len(LAYERS)
                    w.append("rounds", rounds)
                    w.append(
                        "requests",
                        [dict(request=req, scheme=scheme, scenario=2, level=float(level),
                              latency=1.0 + 0.1 * (scheme == "uncoded") * level,
                              distributed_s=0.5)],
                    )  # fmt: skip
                    req += 1
    return path


def test_each_cell_is_its_undistributed_time_plus_its_simulated_rounds(tmp_path):
    trace = read_trace(write_run(tmp_path / "t.h5"))
    prof = pi4_profile()
    cells = predict_trace(trace, prof, samples=300)
    assert {(c.scheme, c.level) for c in cells} == {
        (s, lv) for s in ("cocoi:auto", "uncoded") for lv in (0.0, 2.0)
    }
    for c in cells:
        assert c.requests == 3 and c.local_s == pytest.approx(c.measured_s - 0.5)
        assert c.predicted_s > c.local_s
    by = {(c.scheme, c.level): c for c in cells}
    # two failures make uncoded re-send
    assert by[("uncoded", 2.0)].predicted_s > by[("uncoded", 0.0)].predicted_s
    rows = ratio_rows(cells)
    assert [(r["scheme"], r["level"]) for r in rows] == [("cocoi:auto", 0.0), ("cocoi:auto", 2.0)]
    assert rows[1]["measured"] == pytest.approx(1.0 / 1.2)


def test_the_runs_jitter_detection_and_deadline_reach_the_simulator():
    sc = run_scenario(
        {"jitter": "0.5/1", "detection": "after=0.2", "round_timeout": 3.0}, kind=2, level=1.0
    )
    assert sc.failures == 1 and sc.jitter == Jitter(0.5, 1.0)
    assert (sc.detection.kind, sc.detection.value, sc.deadline_s) == ("after", 0.2, 3.0)
    assert run_scenario({}, kind=1, level=0.5).lambda_tr == 0.5


def test_predict_cli_prints_cells_and_ratios(tmp_path):
    path = write_run(tmp_path / "t.h5")
    prof = tmp_path / "p.json"
    pi4_profile().save(prof)
    res = CliRunner().invoke(main, ["predict", str(path), "--profile", str(prof), "--markdown"])
    assert res.exit_code == 0, res.output
    assert "| 2 | 2 | uncoded | 3 |" in res.output and "over uncoded, measured" in res.output


def test_empirical_phase_resamples_what_was_measured(tmp_path):
    rng = np.random.default_rng(0)
    n = rng.uniform(1e6, 1e7, 5000)
    t = n * np.where(rng.random(5000) < 0.5, 1e-9, 3e-9)  # two speeds: not eq. 7 at all
    phase = empirical_phase(t, n)
    assert len(phase.units) == 2000 and phase.theta == pytest.approx(1e-9)
    assert phase.unit_mean == pytest.approx(2e-9, rel=0.05)
    draws = phase.sample(rng, 1e6, 4000) / 1e6
    assert set(np.round(draws * 1e9).tolist()) == {1.0, 3.0}
    assert phase.cdf(2e-3, 1e6) == pytest.approx(0.5, abs=0.05)
    prof = pi4_profile().with_phase("cmp", phase)
    prof.save(tmp_path / "p.json")
    back = Profile.load(tmp_path / "p.json")
    assert back.cmp == phase and back.rec == prof.rec
    assert json.loads((tmp_path / "p.json").read_text())["cmp"]["theta"] == phase.theta
    with pytest.raises(ValueError, match="at least 2"):
        Empirical((1.0,))


def test_fit_can_keep_the_workers_phases_empirical():
    rng = np.random.default_rng(1)
    n = rng.uniform(1e5, 1e6, 500)
    samples = {p: (ShiftExp(1e8, 1e-9).sample(rng, n), n) for p in ("m", "rec", "cmp", "sen")}
    plain = fit_samples(samples)
    emp = fit_samples(samples, empirical=True)
    assert isinstance(emp.cmp, Empirical) and isinstance(emp.m, ShiftExp)
    assert emp.cmp.unit_mean == pytest.approx(plain.cmp.unit_mean, rel=1e-6)
    assert "empirical" in emp.meta["method"]


def test_more_jitter_means_less_growth_for_uncoded_and_a_better_cocoi():
    """The shape the paper level is fitted on: jitter makes waiting for all n costly
    already without failures, so failures add less and coding gains."""
    calm = paper_ratios(Jitter(0.05, 0.1), samples=200)
    rough = paper_ratios(Jitter(1.0, 1.0), samples=200)
    assert calm["uncoded_growth"] > rough["uncoded_growth"]
    assert calm["cocoi_over_uncoded"] > rough["cocoi_over_uncoded"]
    prof = with_jitter(pi4_profile(), Jitter(0.5, 2.0))
    assert 1 / prof.cmp.mu == pytest.approx(0.5 * prof.cmp.theta)
    assert 1 / prof.rec.mu == pytest.approx(2.0 * prof.rec.theta)
