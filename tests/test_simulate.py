"""Large-n simulation of CoCoI, uncoded, replication and LT."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.experiment.scenarios import Detection, Jitter
from cocoi_mpi.latency.counts import LayerShape
from cocoi_mpi.latency.lt_decoding import lt_symbols_needed
from cocoi_mpi.latency.profile import Profile, ShiftExp, pi4_profile
from cocoi_mpi.latency.sim_schemes import Scenario, _need_with_resend
from cocoi_mpi.latency.simulate import format_results, simulate
from cocoi_mpi.latency.soliton import robust_soliton

VGG = LayerShape.conv(64, 224, 224, 64, 3, padding=1, name="features.2")


def straggling(excess_over_shift: float) -> Profile:
    """The Pi profile with every worker phase's mean excess set to a multiple of its shift."""
    base = pi4_profile()
    prof = base
    for ph in ("rec", "cmp", "sen"):
        theta = base.phase(ph).theta
        prof = prof.with_phase(ph, ShiftExp(1.0 / (excess_over_shift * theta), theta))
    return prof


def by_scheme(results):
    return {r.scheme: r for r in results}


def test_uncoded_wins_without_straggling():
    prof = straggling(1e-6)
    theta = prof.code.theta  # the master's cutting and placing without jitter too
    prof = prof.with_phase("code", ShiftExp(1.0 / (1e-6 * theta), theta))
    res = by_scheme(simulate(VGG, 10, prof, ("cocoi", "uncoded"), samples=500))
    assert res["uncoded"].mean < res["cocoi"].mean
    assert res["uncoded"].p95 == pytest.approx(res["uncoded"].mean, rel=1e-3)  # deterministic


def test_coded_wins_under_heavy_straggling():
    res = by_scheme(simulate(VGG, 10, straggling(20.0), ("cocoi", "uncoded"), samples=3000))
    assert res["cocoi"].mean < 0.8 * res["uncoded"].mean
    assert res["cocoi"].p95 < res["uncoded"].p95


def test_failures_slow_uncoded_more_than_coded():
    prof = pi4_profile()
    base = by_scheme(simulate(VGG, 10, prof, ("cocoi", "uncoded"), samples=3000))
    fail = by_scheme(
        simulate(VGG, 10, prof, ("cocoi", "uncoded"), scenario=Scenario(failures=2), samples=3000)
    )
    assert fail["uncoded"].mean > 1.3 * base["uncoded"].mean
    assert fail["cocoi"].mean < 1.2 * base["cocoi"].mean
    assert np.all(np.isfinite(fail["uncoded"].draws))


def test_transmission_straggling_and_slow_workers_add_latency():
    prof = pi4_profile()
    base = simulate(VGG, 10, prof, ("uncoded",), samples=2000)[0].mean
    lam = simulate(VGG, 10, prof, ("uncoded",), scenario=Scenario(lambda_tr=1.0), samples=2000)
    slow = simulate(VGG, 10, prof, ("uncoded",), scenario=Scenario(slow_workers=1), samples=2000)
    assert lam[0].mean > base and slow[0].mean > base


def test_need_with_resend():
    inf = np.inf
    times = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, inf, 3.0, inf], [inf, inf, inf, inf]])
    fresh = np.full((3, 4), 10.0)
    out = _need_with_resend(times, 3, fresh)
    assert out[0] == 3.0  # third of four, nothing missing
    assert out[1] == 11.0  # one piece re-sent to the first finisher (1.0 + 10.0)
    assert out[2] == inf  # nobody left
    assert _need_with_resend(times[:1], 4, fresh[:1])[0] == 4.0


def test_replication_first_copy_wins():
    """No straggling: a pair's two copies are identical in distribution; min <= either."""
    res = by_scheme(simulate(VGG, 10, pi4_profile(), ("replication",), samples=2000))
    assert res["replication"].k == 5 and res["replication"].mean > 0


def test_robust_soliton_is_a_pmf():
    for k in (1, 2, 10, 300):
        pmf = robust_soliton(k)
        assert pmf.shape == (k,) and pmf.sum() == pytest.approx(1.0) and np.all(pmf >= 0)


def test_lt_needs_at_least_k_symbols_and_little_overhead():
    for k in (1, 8, 40):
        pool = lt_symbols_needed(k, draws=32)
        assert pool.min() >= k
        assert pool.mean() < 1.5 * k + 2


def test_lt_rank_via_matching_agrees_with_matrix_rank():
    """The matching count equals the first prefix whose real random matrix has rank k."""
    from cocoi_mpi.latency import lt_decoding

    k, rng = 12, np.random.default_rng(4)
    pmf = robust_soliton(k)
    for seed in range(10):
        supports: list[list[int]] = []
        needed = lt_decoding._needed_one(k, np.random.default_rng(seed), pmf, supports)
        assert len(supports) == needed
        rows = np.zeros((needed, k))
        for j, support in enumerate(supports):
            assert len(set(support)) == len(support)
            rows[j, support] = rng.standard_normal(len(support))
        assert np.linalg.matrix_rank(rows) == k
        assert np.linalg.matrix_rank(rows[:-1]) < k


def test_n1000_runs_and_formats():
    res = simulate(VGG, 1000, pi4_profile(), samples=200, master_cost=False, lt_k=64)
    table = format_results(res)
    assert all(name in table for name in ("cocoi", "uncoded", "replication", "lt"))
    assert all(np.isfinite(r.mean) and r.p95 >= r.mean * 0.5 for r in res)
    assert format_results(res, markdown=True).startswith("| scheme")


def test_exact_widths_refuse_more_pieces_than_columns():
    narrow = LayerShape.conv(16, 8, 8, 16, 3, padding=1)
    with pytest.raises(ValueError, match="width"):
        simulate(narrow, 20, pi4_profile(), ("uncoded",), relaxed=False, samples=10)
    with pytest.raises(ValueError, match="scheme"):
        simulate(narrow, 4, pi4_profile(), ("mds",))


def test_cli_simulate_shape_literal():
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--n",
            "20",
            "--layer",
            "64,56,56,64,3,1,1",
            "--samples",
            "300",
            "--failures",
            "1",
            "--lambda-tr",
            "0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "cocoi" in res.output and "p95" in res.output


def test_cli_simulate_model_layer():
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--n",
            "12",
            "--model",
            "lenet5",
            "--samples",
            "200",
            "--scheme",
            "cocoi",
            "--scheme",
            "uncoded",
            "--m",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(
        main, ["simulate", "--model", "lenet5", "--layer", "nonesuch", "--samples", "5"]
    )
    assert bad.exit_code == 2 and "no conv" in bad.output


def test_every_simulated_scheme_has_one_simulator():
    from cocoi_mpi.latency.simulate import SCHEMES, SIMULATORS

    assert tuple(SIMULATORS) == SCHEMES


def deterministic() -> Profile:
    """Every phase at its minimum (no excess): what is left is what a scenario injects."""
    prof = straggling(1e-9)
    theta = prof.code.theta
    return prof.with_phase("code", ShiftExp(1.0 / (1e-9 * theta), theta))


def test_need_with_resend_waits_for_the_failure_to_be_noticed():
    inf = np.inf
    times = np.array([[1.0, inf, 3.0, 4.0]])
    fresh = np.full((1, 4), 10.0)
    assert _need_with_resend(times, 4, fresh)[0] == 11.0  # first live finisher, at once
    assert _need_with_resend(times, 4, fresh, np.array([2.5]))[0] == 12.5
    assert _need_with_resend(times, 4, fresh, np.array([0.5]))[0] == 11.0


def test_a_late_detection_delays_the_resend_by_what_it_waited():
    """Without jitter a subtask takes a fixed t; a failure noticed at S > t makes the
    re-sent piece finish at S + t instead of 2t (re-sent at once, to the first free)."""
    prof, scheme = deterministic(), "uncoded"
    at_once = Scenario(failures=1)
    base = simulate(VGG, 10, prof, (scheme,), scenario=at_once, samples=200)[0]
    t = simulate(VGG, 10, prof, (scheme,), samples=200)[0].mean
    later = Scenario(failures=1, detection=Detection("after", 5.0))
    got = simulate(VGG, 10, prof, (scheme,), scenario=later, samples=200)[0]
    assert got.mean - base.mean == pytest.approx(5.0 - t, abs=0.06 * t)
    never = Scenario(failures=1, detection=Detection("never"), deadline_s=20.0)
    assert simulate(VGG, 10, prof, (scheme,), scenario=never, samples=200)[0].mean > 20.0
    timeout = Scenario(failures=1, detection=Detection("timeout", 3.0))
    got = simulate(VGG, 10, prof, (scheme,), scenario=timeout, samples=200)[0].mean
    assert got > base.mean + 0.5 * t


def test_detection_does_not_matter_to_cocoi_with_enough_live_workers():
    prof = pi4_profile()
    at_once = simulate(VGG, 10, prof, ("cocoi",), k=7, scenario=Scenario(failures=2), seed=3)
    later = Scenario(failures=2, detection=Detection("after", 100.0))
    assert simulate(VGG, 10, prof, ("cocoi",), k=7, scenario=later, seed=3)[0].mean == (
        pytest.approx(at_once[0].mean)
    )


def test_injected_jitter_adds_its_ratio_of_each_minimum():
    """A 0.5 compute ratio on a profile without excess: mean compute 1.5 x the minimum;
    uncoded then waits for the largest of n such draws."""
    prof = deterministic()
    plain = simulate(VGG, 10, prof, ("uncoded",), samples=4000)[0]
    jit = simulate(
        VGG, 10, prof, ("uncoded",), scenario=Scenario(jitter=Jitter(0.5, 0.0)), samples=4000
    )[0]
    assert jit.mean > plain.mean
    assert np.std(jit.draws) > 0 and np.std(plain.draws) < 1e-6 * plain.mean
    both = Scenario(jitter=Jitter(0.5, 1.0))
    assert simulate(VGG, 10, prof, ("uncoded",), scenario=both, samples=4000)[0].mean > jit.mean


def test_resend_at_notice_goes_to_a_free_worker_or_queues_behind_a_busy_one():
    inf = np.inf
    times = np.array([[1.0, inf, 3.0, 4.0]])
    fresh = np.full((1, 4), 10.0)
    rng = np.random.default_rng(0)
    # noticed at 2: worker 0 is free since 1, so the piece starts at 2
    assert _need_with_resend(times, 4, fresh, np.array([2.0]), rng)[0] == 12.0
    # noticed at once: nobody is free; it waits behind a busy worker, any of the three
    got = {float(_need_with_resend(times, 4, fresh, np.array([0.0]), rng)[0]) for _ in range(60)}
    assert got == {11.0, 13.0, 14.0}
    assert np.isinf(_need_with_resend(np.array([[inf, inf]]), 2, fresh, None, rng)[0])
