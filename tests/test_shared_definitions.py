"""Definitions that used to exist twice now exist once (issue 17), without changing
what the runtime sends or records: the Robust Soliton pmf, the scenarios, the status
and kind names, and the conv/block switch of subtasks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from cocoi_mpi.codes import make_scheme
from cocoi_mpi.codes.lt import LTCode
from cocoi_mpi.experiment import scenarios
from cocoi_mpi.experiment.scenarios import CRASH_KINDS, FaultModel, parse_crash
from cocoi_mpi.geometry.blocks import block_spec, cut_block, probe_block, split_block
from cocoi_mpi.geometry.conv import conv_spec
from cocoi_mpi.geometry.rounds import ConvRound, Prepared
from cocoi_mpi.geometry.units import compute, masks_for, reply_shape, rest_output
from cocoi_mpi.latency import lt_decoding, sim_schemes, simulate, soliton
from cocoi_mpi.latency.counts import LayerShape
from cocoi_mpi.latency.profile import pi4_profile
from cocoi_mpi.statuses import CrashKind, FaultKind, ScenarioKind, Status
from cocoi_mpi.traces.schema import SUBTASK_STATUSES

VGG = LayerShape.conv(64, 224, 224, 64, 3, padding=1, name="features.2")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- soliton


def test_one_robust_soliton_for_the_runtime_and_the_simulator():
    from cocoi_mpi.codes import lt

    assert lt.robust_soliton is lt_decoding.robust_soliton is soliton.robust_soliton
    pmf = soliton.robust_soliton(224)
    assert not pmf.flags.writeable  # cached: nobody may change it under the LT code


def test_simulated_lt_degrees_are_the_runtime_lt_degrees():
    """E[d] the simulator charges for encoding is the mean degree LTCode draws."""
    k = 40
    code = LTCode(10, k, seed=1)
    drawn = np.mean([code.vector(j).sum() for j in range(3000)])
    assert lt_decoding.mean_degree(k) == pytest.approx(drawn, rel=0.05)
    c, delta = soliton.SOLITON_C, soliton.SOLITON_DELTA
    assert np.array_equal(
        lt_decoding.lt_symbols_needed(k, 8, 3), lt_decoding.lt_symbols_needed(k, 8, 3, c, delta)
    )


@pytest.mark.parametrize("k", [1, 2, 10, 11, 52, 300])
def test_robust_soliton_formula(k):
    """Luby's tau below the spike at round(k/R), the spike, no robust part past k."""
    c, delta = soliton.SOLITON_C, soliton.SOLITON_DELTA
    d = np.arange(1, k + 1)
    rho = np.array([1.0 / k] + [1.0 / (i * (i - 1)) for i in range(2, k + 1)])
    r = c * np.log(k / delta) * np.sqrt(k)
    spike = round(k / r)
    tau = np.zeros(k)
    if spike <= k:
        tau = np.where(d < spike, r / (d * k), 0.0)
        tau[spike - 1] = max(r * np.log(r / delta) / k, 0.0)
    mu = rho + tau
    assert soliton.robust_soliton(k) == pytest.approx(mu / mu.sum(), rel=1e-12, abs=1e-15)


# --------------------------------------------------------------------------- scenarios


def test_simulator_scenario_shares_the_paper_constant_and_ranges():
    assert sim_schemes.Scenario().slow_factor == scenarios.PAPER_STRAGGLER_FACTOR
    for bad in (
        dict(failures=-1),
        dict(lambda_tr=-0.1),
        dict(slow_factor=0.5),
        dict(slow_prob=1.5),
        dict(slow_workers=-1),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sim_schemes.Scenario(**bad)


@pytest.mark.parametrize(
    ("run", "expect"),
    [
        (scenarios.Scenario(), sim_schemes.Scenario()),
        (scenarios.Scenario(0, lambda_tr=1.0, failures=2), sim_schemes.Scenario()),
        (scenarios.Scenario(1, lambda_tr=0.5, failures=2), sim_schemes.Scenario(lambda_tr=0.5)),
        (scenarios.Scenario(2, lambda_tr=0.5, failures=2), sim_schemes.Scenario(failures=2)),
        (
            scenarios.Scenario(3, failures=1, straggler_factor=2.0, straggler_prob=0.8),
            sim_schemes.Scenario(failures=1, slow_workers=1, slow_factor=2.0, slow_prob=0.8),
        ),
    ],
)
def test_a_runs_scenario_in_the_simulators_terms(run, expect):
    assert sim_schemes.Scenario.of(run) == expect


def test_simulate_takes_a_runs_scenario():
    run = scenarios.Scenario(ScenarioKind.FAILURES, failures=2)
    a = simulate.simulate(VGG, 10, pi4_profile(), ("cocoi", "uncoded"), scenario=run, samples=50)
    b = simulate.simulate(
        VGG, 10, pi4_profile(), ("cocoi", "uncoded"), scenario=sim_schemes.Scenario(failures=2),
        samples=50,
    )  # fmt: skip
    assert all(np.array_equal(x.draws, y.draws) for x, y in zip(a, b, strict=True))


def test_slow_prob_one_draws_what_an_always_slow_worker_did():
    """slow_prob = 1 adds no random draw, so old seeds give the old numbers."""
    sim = simulate.simulate
    always = sim_schemes.Scenario(slow_workers=2, slow_factor=3.0)
    also = sim_schemes.Scenario(slow_workers=2, slow_factor=3.0, slow_prob=1.0)
    for scheme in ("cocoi", "uncoded", "lt"):
        a = sim(VGG, 10, pi4_profile(), (scheme,), scenario=always, samples=40, lt_k=8)[0]
        b = sim(VGG, 10, pi4_profile(), (scheme,), scenario=also, samples=40, lt_k=8)[0]
        assert np.array_equal(a.draws, b.draws)


@pytest.mark.parametrize("scheme", ["uncoded", "lt"])
def test_slow_prob_slows_that_share_of_draws(scheme):
    """Each draw is slow or not: the mean is linear in slow_prob (LT's tail is long:
    4000 draws keep its noise near 2%)."""

    def mean(prob: float, workers: int = 1) -> float:
        sc = sim_schemes.Scenario(slow_workers=workers, slow_factor=6.0, slow_prob=prob)
        res = simulate.simulate(VGG, 10, pi4_profile(), (scheme,), scenario=sc, samples=4000)
        return res[0].mean

    fast, half, slow = mean(0.0), mean(0.5), mean(1.0)
    assert fast == pytest.approx(mean(1.0, workers=0), rel=0.1)
    assert fast < half < slow
    assert half == pytest.approx((fast + slow) / 2, rel=0.1)


# --------------------------------------------------------------------------- names


def test_status_names_are_the_traces():
    assert tuple(Status)[: len(SUBTASK_STATUSES)] == SUBTASK_STATUSES
    assert Status.REPLIED == "replied"
    for s in Status:  # every way a module may write it gives the plain string
        assert str(s) == f"{s}" == s.value and s.encode() == s.value.encode()
        assert np.array([s], dtype="S12")[0] == s.value.encode()


def test_faults_and_crashes_stay_plain_strings_on_the_wire():
    sc = scenarios.Scenario(ScenarioKind.FAILURES, failures=1)
    model = FaultModel(sc, [1, 2, 3], seed=0, silent=[3])
    fails = {model.fault(0, i, rank, 100, 100).fail for i, rank in enumerate([1, 2, 3])}
    assert fails == {FaultKind.NONE, FaultKind.NOTICE, FaultKind.SILENT}
    assert all(type(f) is str for f in fails)
    assert pickle.dumps(sorted(fails)) == pickle.dumps(["", "notice", "silent"])
    for entry, kind in (("2@3", "kill"), ("2@3:exit", "exit"), ("1@0:hang=5", "hang")):
        crash = parse_crash(entry)
        assert crash.kind == kind and type(crash.kind) is str
    assert CRASH_KINDS == ("kill", "exit", "hang", "raise") == tuple(CrashKind)


def test_scenario_kinds_are_the_numbers():
    assert [int(k) for k in ScenarioKind] == [0, 1, 2, 3]
    assert scenarios.Scenario(ScenarioKind.FAILURES, failures=1) == scenarios.Scenario(
        2, failures=1
    )
    assert [scenarios.Scenario(k).has_failures for k in range(4)] == [0, 0, 1, 1]
    assert [scenarios.Scenario(k).has_straggler for k in range(4)] == [0, 0, 0, 1]


# --------------------------------------------------------------------------- Unit


def test_conv_answers_the_unit_protocol():
    conv = nn.Conv2d(3, 5, 3, stride=(2, 1), padding=1)
    spec = conv_spec(0, "c", conv)
    x = torch.randn(1, 3, 9, 23)
    code = make_scheme("cocoi", 5, 3)
    prep = ConvRound(spec, x, code)
    for i in range(code.n):
        out = compute(spec, prep.subtask_input(i), masks_for(spec, prep, i))
        assert tuple(out.shape) == reply_shape(spec, prep, code)
        assert masks_for(spec, prep, i) == ()
    assert rest_output(spec, prep) is None


def test_block_answers_the_unit_protocol():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)]
    spec = block_spec(0, "b", layers)
    x = torch.randn(1, 3, 8, 22)
    k = 3
    split = split_block(spec, x.shape[3], k)
    reply, _ = probe_block(spec, (x.shape[1], x.shape[2], split.piece_in))
    pieces = cut_block(split, x)[0].contiguous()
    prep = Prepared(split, x, pieces.unsqueeze(1), pieces, reply)  # systematic only
    code = make_scheme("uncoded", k, k)
    ref = spec.layers(x)
    for i, p in enumerate(split.pieces):
        assert masks_for(spec, prep, i) == p.masks
        out = compute(spec, prep.subtask_input(i), masks_for(spec, prep, i))
        assert tuple(out.shape) == reply_shape(spec, prep, code) == reply
        torch.testing.assert_close(out[0], ref[..., p.out[0] : p.out[1]][0])
    rest = rest_output(spec, prep)
    assert (rest is None) == (split.rest is None)
    if rest is not None:
        torch.testing.assert_close(rest, ref[..., split.rest.out[0] : split.rest.out[1]])
