"""The paper's straggler and failure scenarios (section VI) and link emulation.

Faults are pure functions of (seed, round, subtask, rank): checked for determinism, for
the statistics each scenario promises, and for the link's bytes / bandwidth delays.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from cocoi_mpi.experiment.scenarios import (
    NOMINAL_MBPS,
    PAPER_STRAGGLER_FACTOR,
    Detection,
    Fault,
    FaultModel,
    Jitter,
    Scenario,
    parse_detection,
    parse_jitter,
    transfer_s,
)

WORKERS = list(range(1, 7))  # MPI ranks 1..6; rank 0 is the master
ROUNDS = 2000


def within_3_sigma(hits: int, trials: int, p: float) -> bool:
    sigma = math.sqrt(p * (1 - p) / trials)
    return abs(hits / trials - p) <= 3 * sigma + 1e-12


# --------------------------------------------------------------------------- Scenario


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(kind=4), "scenario"),
        (dict(kind=-1), "scenario"),
        (dict(kind=1, lambda_tr=-0.1), "lambda_tr"),
        (dict(kind=2, failures=-1), "failures"),
        (dict(kind=3, straggler_factor=0.99), "straggler_factor"),
        (dict(kind=3, straggler_prob=-0.01), "straggler_prob"),
        (dict(kind=3, straggler_prob=1.01), "straggler_prob"),
        (dict(link_mbps=-1.0), "link_mbps"),
    ],
)
def test_scenario_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field):
        Scenario(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(kind=1, lambda_tr=0.0),
        dict(kind=3, straggler_factor=1.0, straggler_prob=0.0),
        dict(kind=3, straggler_prob=1.0),
        dict(kind=2, failures=0, link_mbps=0.0),
    ],
)
def test_scenario_accepts_boundary_values(kw):
    Scenario(**kw)


def test_scenario_defaults_follow_the_paper():
    sc = Scenario()
    assert sc.kind == 0 and sc.straggler_factor == PAPER_STRAGGLER_FACTOR == 85.2 / 50.8


@pytest.mark.parametrize(
    "sc, level",
    [
        (Scenario(kind=1, lambda_tr=0.6, failures=2), 0.6),
        (Scenario(kind=2, lambda_tr=0.6, failures=2), 2.0),
        (Scenario(kind=3, failures=1), 1.0),
        (Scenario(kind=0), 0.0),
    ],
)
def test_scenario_level_is_the_swept_quantity(sc, level):
    assert sc.level == level and isinstance(sc.level, float)


@pytest.mark.parametrize("kind", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 6, 10])
def test_check_workers_needs_a_live_worker(kind, n):
    Scenario(kind=kind, failures=n - 1).check_workers(n)
    FaultModel(Scenario(kind=kind, failures=n - 1), list(range(1, n + 1)), seed=0)
    for failures in (n, n + 3):
        sc = Scenario(kind=kind, failures=failures)
        with pytest.raises(ValueError, match="no live worker"):
            sc.check_workers(n)
        with pytest.raises(ValueError, match="no live worker"):
            FaultModel(sc, list(range(1, n + 1)), seed=0)


# --------------------------------------------------------------------------- determinism

SCENARIOS = [
    Scenario(kind=1, lambda_tr=0.5),
    Scenario(kind=1, lambda_tr=1.0, link_mbps=20.0),
    Scenario(kind=2, failures=2),
    Scenario(kind=3, failures=1, link_mbps=50.0),
]
KEYS = [(r, s, w) for r in range(1, 9) for s in range(8) for w in WORKERS]


def faults(model: FaultModel, keys) -> dict:
    return {key: model.fault(*key, bytes_in=40_000, bytes_out=25_000) for key in keys}


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: f"s{sc.kind}-{sc.link_mbps:g}")
def test_faults_depend_only_on_seed_round_subtask_and_rank(sc):
    want = faults(FaultModel(sc, WORKERS, seed=7, silent=[3]), KEYS)
    assert all(isinstance(f, Fault) for f in want.values())
    assert want == faults(FaultModel(sc, WORKERS, seed=7, silent=[3]), KEYS)
    shuffled = list(KEYS)
    random.Random(1).shuffle(shuffled)
    model = FaultModel(sc, WORKERS, seed=7, silent=[3])
    assert faults(model, shuffled) == want
    assert faults(model, KEYS) == want  # asked twice of the same model
    other = faults(FaultModel(sc, WORKERS, seed=8, silent=[3]), KEYS)
    assert sum(other[key] != want[key] for key in KEYS) > len(KEYS) // 4


@pytest.mark.parametrize("sc", SCENARIOS[2:], ids=["s2", "s3"])
def test_failures_and_slowdown_are_per_round_not_per_subtask(sc):
    model = FaultModel(sc, WORKERS, seed=3)
    for round_id in range(1, 30):
        for rank in WORKERS:
            got = {
                (f.fail, f.slowdown)
                for f in (model.fault(round_id, s, rank, 10, 10) for s in range(5))
            }
            assert len(got) == 1, (round_id, rank, got)


# --------------------------------------------------------------------------- scenario 2


def failed_ranks(model: FaultModel, round_id: int, fail: str = "notice") -> set[int]:
    return {w for w in WORKERS if model.fault(round_id, w - 1, w, 100, 100).fail == fail}


@pytest.mark.parametrize("kind, failures", [(2, 1), (2, 2), (3, 2), (2, 5)])
def test_scenario2_fails_exactly_nf_workers_each_round_uniformly(kind, failures):
    model = FaultModel(Scenario(kind=kind, failures=failures), WORKERS, seed=failures)
    counts = dict.fromkeys(WORKERS, 0)
    for round_id in range(1, 301):  # the faults the master sees follow the round's draw
        failed = failed_ranks(model, round_id)
        assert len(failed) == failures, round_id
        assert failed == set(model.round_state(round_id)[0])
    for round_id in range(1, ROUNDS + 1):
        failed = model.round_state(round_id)[0]
        assert len(failed) == failures and failed <= set(WORKERS)
        for w in failed:
            counts[w] += 1
    p = failures / len(WORKERS)
    for w, hits in counts.items():
        assert within_3_sigma(hits, ROUNDS, p), (w, hits / ROUNDS, p)


def test_scenario2_silent_ranks_are_always_silent():
    silent = [2, 5]
    model = FaultModel(Scenario(kind=2, failures=2), WORKERS, seed=4, silent=silent)
    overlap = 0
    for round_id in range(1, 400):
        failed, _ = model.round_state(round_id)
        assert failed_ranks(model, round_id, "silent") == set(silent)
        assert failed_ranks(model, round_id, "notice") == set(failed) - set(silent)
        overlap += bool(set(failed) & set(silent))
    assert overlap > 0  # a silent rank drawn to fail stays silent rather than noticing


@pytest.mark.parametrize("kind", [0, 1])
def test_scenarios_0_and_1_never_fail_a_worker(kind):
    model = FaultModel(Scenario(kind=kind, lambda_tr=0.3, failures=2), WORKERS, seed=1)
    for round_id in range(1, 200):
        assert failed_ranks(model, round_id) == set()
        assert all(model.fault(round_id, 0, w, 5, 5).slowdown == 1.0 for w in WORKERS)


# --------------------------------------------------------------------------- scenario 1


@pytest.mark.parametrize("lam", [0.2, 1.0])
@pytest.mark.parametrize("mbps", [0.0, 25.0])
def test_scenario1_extra_delay_is_exponential_with_mean_lambda_times_nominal(lam, mbps):
    sc = Scenario(kind=1, lambda_tr=lam, link_mbps=mbps)
    model = FaultModel(sc, WORKERS, seed=11)
    b_in, b_out = 150_528, 401_408
    nominal = transfer_s(b_in + b_out, mbps or NOMINAL_MBPS)
    link_out = transfer_s(b_out, mbps) if mbps else 0.0
    extra = np.array(
        [
            model.fault(r, s, WORKERS[s % 6], b_in, b_out).send_delay - link_out
            for r in range(1, 501)
            for s in range(10)
        ]
    )
    assert extra.size == 5000 and extra.min() >= 0
    mean = lam * nominal
    print(f"scenario 1 lambda={lam} mbps={mbps}: mean extra {extra.mean():.5f} s, want {mean:.5f}")
    assert abs(extra.mean() / mean - 1) < 0.05
    assert abs(extra.std() / mean - 1) < 0.1  # exponential: std == mean
    assert within_3_sigma(int((extra > mean).sum()), extra.size, math.exp(-1))
    assert len(np.unique(extra)) == extra.size  # a fresh draw for every subtask


@pytest.mark.parametrize("mbps", [0.0, 25.0])
def test_scenario1_lambda_zero_adds_no_delay(mbps):
    model = FaultModel(Scenario(kind=1, lambda_tr=0.0, link_mbps=mbps), WORKERS, seed=2)
    for r in range(1, 50):
        for w in WORKERS:
            f = model.fault(r, w, w, 1000, 3000)
            assert f.send_delay == (transfer_s(3000, mbps) if mbps else 0.0)
            assert f.fail == "" and f.slowdown == 1.0


@pytest.mark.parametrize("kind", [0, 2, 3])
def test_only_scenario1_adds_transmission_delay(kind):
    model = FaultModel(Scenario(kind=kind, lambda_tr=2.0, failures=1), WORKERS, seed=2)
    assert all(model.fault(r, 0, 1, 10**6, 10**6).injected == 0.0 for r in range(1, 50))


# --------------------------------------------------------------------------- scenario 3


@pytest.mark.parametrize("prob", [0.0, 0.3, 0.8, 1.0])
def test_scenario3_has_one_fixed_straggler_slow_in_prob_of_rounds(prob):
    factor = 1.7
    sc = Scenario(kind=3, failures=1, straggler_factor=factor, straggler_prob=prob)
    model = FaultModel(sc, WORKERS, seed=5)
    assert model.straggler in WORKERS
    assert FaultModel(sc, WORKERS, seed=5).straggler == model.straggler
    for round_id in range(1, 101):
        slowdowns = {w: model.fault(round_id, 0, w, 10, 10).slowdown for w in WORKERS}
        assert {s for w, s in slowdowns.items() if w != model.straggler} == {1.0}
        assert (slowdowns[model.straggler] == factor) == model.round_state(round_id)[1]
    slow_rounds = 0
    for round_id in range(1, ROUNDS + 1):
        slowdown = model.fault(round_id, 0, model.straggler, 10, 10).slowdown
        assert slowdown in (1.0, factor)
        slow_rounds += slowdown == factor
    assert within_3_sigma(slow_rounds, ROUNDS, prob), slow_rounds / ROUNDS


def test_scenario3_straggler_depends_on_the_seed():
    sc = Scenario(kind=3, failures=1)
    stragglers = [FaultModel(sc, WORKERS, seed=s).straggler for s in range(40)]
    assert set(stragglers) == set(WORKERS)  # each worker is the straggler for some seed


def test_scenario2_has_no_slow_straggler():
    model = FaultModel(Scenario(kind=2, failures=1, straggler_prob=1.0), WORKERS, seed=5)
    assert all(model.fault(r, 0, model.straggler, 1, 1).slowdown == 1.0 for r in range(1, 100))


# --------------------------------------------------------------------------- link emulation


@pytest.mark.parametrize("mbps", [1.0, 12.5, 300.0])
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_link_emulation_delays_are_bytes_over_bandwidth(kind, mbps):
    sc = Scenario(kind=kind, lambda_tr=0.5, failures=1, link_mbps=mbps)
    model = FaultModel(sc, WORKERS, seed=9)
    for b_in, b_out in [(0, 0), (1, 7), (150_528, 401_408), (3_211_264, 802_816)]:
        link_in, link_out = 8 * b_in / (mbps * 1e6), 8 * b_out / (mbps * 1e6)
        assert transfer_s(b_in, mbps) == pytest.approx(link_in, rel=1e-12, abs=0)
        for w in WORKERS:
            f = model.fault(3, w, w, b_in, b_out)
            assert f.recv_delay == pytest.approx(link_in, rel=1e-12, abs=0)
            if kind == 1:
                assert f.send_delay >= link_out
            else:
                assert f.send_delay == pytest.approx(link_out, rel=1e-12, abs=0)
            assert f.injected == f.recv_delay + f.send_delay


def test_no_link_means_no_link_delay():
    model = FaultModel(Scenario(kind=2, failures=1), WORKERS, seed=0)
    f = model.fault(1, 0, 1, 10**7, 10**7)
    assert (f.recv_delay, f.send_delay, f.injected) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- jitter, detection


@pytest.mark.parametrize(
    "text, want",
    [
        ("none", Jitter(0.0, 0.0)),
        ("builtin", Jitter(0.25, 0.5)),
        ("fig14b", Jitter(10.0 / 1.316, 1.25)),
        (" 0.5/2 ", Jitter(0.5, 2.0)),
    ],
)
def test_jitter_levels_and_ratios_parse(text, want):
    assert parse_jitter(text) == want


@pytest.mark.parametrize("text", ["", "loud", "0.5", "a/b", "-1/0", "inf/1", "1/2/3"])
def test_bad_jitter_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="^jitter must"):
        parse_jitter(text)
    with pytest.raises(ValueError, match="^jitter must"):
        Scenario(jitter=text)


@pytest.mark.parametrize(
    "text, kind, value",
    [("immediate", "immediate", 0.0), ("after=0.5", "after", 0.5), ("timeout=3", "timeout", 3.0),
     ("never", "never", 0.0)],
)  # fmt: skip
def test_detection_parses(text, kind, value):
    assert parse_detection(text) == Detection(kind, value)


@pytest.mark.parametrize(
    "text", ["", "soon", "after", "after=", "after=-1", "timeout=0.5", "never=3", "immediate=1"]
)
def test_bad_detection_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="^detection must"):
        parse_detection(text)


def test_detection_times():
    assert Detection().noticed_after(None) == 0.0
    assert Detection("after", 0.4).noticed_after(None) == 0.4
    assert Detection("timeout", 3.0).noticed_after(None) is None  # no reply yet
    assert Detection("timeout", 3.0).noticed_after(0.2) == pytest.approx(0.6)
    assert Detection("never").noticed_after(5.0) is None
    # no failures injected: nothing to detect, whatever the option says
    assert Scenario(kind=1, detection="never").failure_detection == Detection()
    assert Scenario(kind=2, detection="never").failure_detection == Detection("never")


def test_jitter_is_the_shift_exponential_excess_of_each_phase():
    """Per subtask: compute x (1 + rho_cmp E), each transfer's link time + rho_tr E x it,
    E ~ Exp(1) from the seed; the mean ratios are what the level says."""
    mbps, b_in, b_out = 100.0, 40_000, 25_000
    model = FaultModel(Scenario(link_mbps=mbps, jitter="0.5/2"), WORKERS, seed=9)
    got = [model.fault(r, s, w, b_in, b_out) for r in range(300) for s in range(2) for w in WORKERS]
    link_in, link_out = transfer_s(b_in, mbps), transfer_s(b_out, mbps)
    recv = np.array([f.recv_delay for f in got])
    send = np.array([f.send_delay for f in got])
    slow = np.array([f.slowdown for f in got])
    assert recv.min() >= link_in and send.min() >= link_out and slow.min() >= 1.0
    assert (recv / link_in - 1).mean() == pytest.approx(2.0, rel=0.08)
    assert (send / link_out - 1).mean() == pytest.approx(2.0, rel=0.08)
    assert (slow - 1).mean() == pytest.approx(0.5, rel=0.08)
    assert len({f.slowdown for f in got}) == len(got)  # drawn per subtask, not per round
    plain = FaultModel(Scenario(link_mbps=mbps), WORKERS, seed=9).fault(1, 0, 1, b_in, b_out)
    assert (plain.recv_delay, plain.slowdown) == (link_in, 1.0)


def test_jitter_multiplies_the_scenario_3_slowdown():
    sc = Scenario(kind=3, failures=0, straggler_prob=1.0, jitter="1/0")
    model = FaultModel(sc, WORKERS, seed=2)
    f = model.fault(1, 0, model.straggler, 10, 10)
    assert f.slowdown > sc.straggler_factor
