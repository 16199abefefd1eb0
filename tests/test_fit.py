"""Fitting (mu, theta) from durations and from HDF5 traces (appendix B)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.experiment.scenarios import FaultModel, Scenario
from cocoi_mpi.latency.fit import (
    CMP_ROUNDS,
    TraceFitError,
    fit_normalised,
    fit_samples,
    fit_shift_exp,
    fit_trace,
    fit_within_groups,
    ks_distance,
    plot_cdfs,
    trace_samples,
)
from cocoi_mpi.latency.profile import Profile, ShiftExp, se_sample
from cocoi_mpi.traces.reader import read_trace
from cocoi_mpi.traces.schema import ROUND_DTYPE, SUBTASK_DTYPE
from cocoi_mpi.traces.writer import TraceWriter

TRUE = {
    "m": ShiftExp(mu=2e9, theta=1.5e-9),
    "rec": ShiftExp(mu=2.5e7, theta=8e-8),
    "cmp": ShiftExp(mu=4e9, theta=1.2e-9),
    "sen": ShiftExp(mu=1.5e7, theta=9e-8),
}


@pytest.mark.parametrize("method", ["mle", "unbiased", "quantile"])
def test_fit_recovers_known_parameters(method):
    rng = np.random.default_rng(0)
    n_scale = rng.uniform(1e5, 5e6, 10_000)
    t = se_sample(rng, 3e6, 2e-7, n_scale)
    fit = fit_shift_exp(t, n_scale, method)
    assert fit.theta == pytest.approx(2e-7, rel=0.05)
    assert fit.mu == pytest.approx(3e6, rel=0.05)
    assert fit.ks < 0.03
    assert fit.count == 10_000


def test_mle_is_min_and_mean_excess():
    x = np.array([3.0, 4.0, 5.0, 8.0])
    mu, theta = fit_normalised(x, "mle")
    assert theta == 3.0 and 1 / mu == pytest.approx(2.0)
    mu_u, theta_u = fit_normalised(x, "unbiased")
    assert theta_u == pytest.approx(3.0 - 2.0 / 3) and 1 / mu_u == pytest.approx(8 / 3)


def test_quantile_fit_ignores_one_glitch():
    rng = np.random.default_rng(1)
    x = se_sample(rng, 2.0, 1.0, 1.0, 5000)
    x[0] = 1e-6  # an impossible, clock-glitch fast sample
    assert fit_normalised(x, "mle")[1] < 0.01
    assert fit_normalised(x, "quantile")[1] == pytest.approx(1.0, rel=0.05)


def test_ks_distance_tells_good_from_bad_fits():
    rng = np.random.default_rng(2)
    x = se_sample(rng, 2.0, 1.0, 1.0, 4000)
    assert ks_distance(x, 2.0, 1.0) < 0.03
    assert ks_distance(x, 0.5, 1.0) > 0.2


def test_fit_drops_unusable_samples_and_needs_two():
    t = np.array([1.0, np.nan, -1.0, 2.0, 3.0])
    assert fit_shift_exp(t, np.array([1.0, 1.0, 1.0, 0.0, 1.0])).count == 2
    with pytest.raises(ValueError, match="at least 2"):
        fit_shift_exp(np.array([1.0]), 1.0)
    with pytest.raises(ValueError, match="unknown fit method"):
        fit_shift_exp(np.array([1.0, 2.0]), 1.0, "median")


# --------------------------------------------------------------------------- traces


def write_trace(path, rounds_count=400, n=6, with_flops=True, seed=0, link_mbps=0):
    """A synthetic trace whose durations follow TRUE; FLOP columns appended to rounds."""
    rng = np.random.default_rng(seed)
    config = {"n": n, "link_mbps": link_mbps}
    with TraceWriter(path, config=config, meta={}, num_classes=3):
        pass
    extra = [f for f in ("n_enc", "n_cmp", "n_dec") if f not in ROUND_DTYPE.names]
    round_dtype = np.dtype(ROUND_DTYPE.descr + ([(f, "f8") for f in extra] if with_flops else []))
    rounds = np.zeros(rounds_count, dtype=round_dtype)
    rounds["round"] = np.arange(rounds_count) + 1
    n_enc = rng.uniform(1e7, 1e8, rounds_count)
    n_dec = rng.uniform(1e7, 1e8, rounds_count)
    n_cmp = rng.uniform(1e8, 1e9, rounds_count)
    if with_flops:
        rounds["n_enc"], rounds["n_dec"], rounds["n_cmp"] = n_enc, n_dec, n_cmp
    rounds["encode_s"] = TRUE["m"].sample(rng, n_enc)
    rounds["decode_s"] = TRUE["m"].sample(rng, n_dec)
    sub = np.zeros(rounds_count * n, dtype=SUBTASK_DTYPE)
    sub["round"] = np.repeat(rounds["round"], n)
    sub["worker"] = np.tile(np.arange(1, n + 1), rounds_count)
    sub["bytes_in"] = rng.integers(10**5, 10**7, sub.size)
    sub["bytes_out"] = rng.integers(10**5, 10**7, sub.size)
    sub["worker_recv_s"] = TRUE["rec"].sample(rng, sub["bytes_in"].astype(float))
    sub["worker_compute_s"] = TRUE["cmp"].sample(rng, np.repeat(n_cmp, n))
    sub["worker_send_s"] = TRUE["sen"].sample(rng, sub["bytes_out"].astype(float))
    status = np.where(rng.random(sub.size) < 0.8, b"used", b"late")
    status[::7] = b"skipped"  # skipped replies carry no durations
    sub["worker_compute_s"][::7] = 1e-9
    sub["status"] = status
    sub["injected_recv_s"] = np.nan  # written before the column existed
    with h5py.File(path, "a", locking=False) as h5:
        for name, data in (("rounds", rounds), ("subtasks", sub)):
            del h5[name]
            h5.create_dataset(name, data=data, maxshape=(None,), chunks=True)
    return path


def test_fit_trace_recovers_the_profile(tmp_path):
    path = write_trace(tmp_path / "t.h5")
    prof = fit_trace(path)
    for phase, true in TRUE.items():
        got = prof.phase(phase)
        assert got.theta == pytest.approx(true.theta, rel=0.05), phase
        assert got.mu == pytest.approx(true.mu, rel=0.1), phase
        assert prof.ks[phase] < 0.05
    samples = trace_samples(read_trace(path))
    assert samples["m"][0].size == 800
    assert samples["cmp"][0].size == pytest.approx(400 * 6 * 6 / 7, abs=2)


def test_emulated_link_time_is_part_of_the_transfer(tmp_path):
    """With link_mbps the worker slept bytes/bandwidth outside its measured MPI time."""
    plain = trace_samples(read_trace(write_trace(tmp_path / "a.h5", rounds_count=5)))
    linked = trace_samples(
        read_trace(write_trace(tmp_path / "b.h5", rounds_count=5, link_mbps=100))
    )
    for phase, column in (("rec", 1), ("sen", 1)):
        nbytes = linked[phase][column]
        assert np.array_equal(nbytes, plain[phase][column])
        added = linked[phase][0] - plain[phase][0]
        assert np.allclose(added, 8 * nbytes / 100e6)
    assert np.array_equal(linked["cmp"][0], plain["cmp"][0])


def test_fit_recovers_injected_jitter(tmp_path):
    """A device with no noise of its own, given --jitter 0.5/2 over a 100 Mbit/s link:
    the fit finds the link and the compute minimum as theta and the injected ratios as
    the mean excess, from the delays FaultModel decides (issue 18)."""
    path = write_trace(tmp_path / "j.h5", rounds_count=300, link_mbps=100)
    scenario = Scenario(link_mbps=100, jitter="0.5/2")
    model = FaultModel(scenario, list(range(1, 7)), seed=4)
    theta_cmp = 1.2e-9
    with h5py.File(path, "a", locking=False) as h5:
        sub, rounds = h5["subtasks"][...], h5["rounds"][...]
        n_cmp = dict(zip(rounds["round"].tolist(), rounds["n_cmp"].tolist(), strict=True))
        for i in range(sub.size):
            f = model.fault(int(sub["round"][i]), 0, int(sub["worker"][i]),
                            int(sub["bytes_in"][i]), int(sub["bytes_out"][i]))  # fmt: skip
            sub["injected_recv_s"][i], sub["injected_delay_s"][i] = f.recv_delay, f.injected
            sub["slowdown"][i] = f.slowdown
            sub["worker_compute_s"][i] = theta_cmp * n_cmp[int(sub["round"][i])]
        sub["worker_recv_s"] = sub["worker_send_s"] = 0.0
        h5["subtasks"][...] = sub
    prof = fit_trace(path)
    link = 8 / 100e6
    for phase in ("rec", "sen"):
        assert prof.phase(phase).theta == pytest.approx(link, rel=0.01)
        assert 1 / prof.phase(phase).mu == pytest.approx(2 * link, rel=0.1)
    assert prof.cmp.theta == pytest.approx(theta_cmp, rel=0.01)
    assert 1 / prof.cmp.mu == pytest.approx(0.5 * theta_cmp, rel=0.1)


def test_trace_without_flop_columns_says_so(tmp_path):
    """A trace read without n_enc/n_cmp/n_dec (older schema) gets a clear error."""
    trace = read_trace(write_trace(tmp_path / "t.h5", rounds_count=5))
    for col in ("n_enc", "n_cmp", "n_dec"):
        trace.rounds.pop(col, None)
    with pytest.raises(TraceFitError, match="n_enc, n_cmp, n_dec"):
        trace_samples(trace)


def test_cli_fit_writes_profile_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_trace(tmp_path / "t.h5", rounds_count=60)
    out, png = tmp_path / "p.json", tmp_path / "cdf.png"
    res = CliRunner().invoke(main, ["fit", str(path), "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    prof = Profile.load(out)
    assert set(prof.ks) == {"m", "rec", "cmp", "sen"}
    assert json.loads(out.read_text())["meta"]["method"] == "mle"
    assert png.stat().st_size > 10_000


def test_cli_fit_bad_trace_is_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    res = CliRunner().invoke(main, ["fit", str(bad), "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 1
    assert "error" in res.output


def test_plot_cdfs_direct(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_trace(tmp_path / "t.h5", rounds_count=30)
    samples = trace_samples(read_trace(path))
    plot_cdfs(samples, fit_trace(path), tmp_path / "f.png")
    assert (tmp_path / "f.png").exists()


def test_coding_samples_pair_each_conv_rounds_coding_time_with_its_bytes():
    """One conv round (n = 10, k = 8, m = 1), one fallback round (left out)."""
    from cocoi_mpi.latency.counts import coding_bytes
    from cocoi_mpi.latency.fit import coding_samples

    rounds = {
        "round": np.array([1, 2]),
        "fallback": np.array([False, True]),
        "n_enc": np.array([1e6, 0.0]),
        "n": np.array([10, 10]),
        "k": np.array([8, 8]),
        "pieces_per_worker": np.array([1, 1]),
        "split_s": np.array([0.01, 0.0]),
        "encode_s": np.array([0.02, 0.0]),
        "decode_s": np.array([0.03, 0.0]),
        "merge_s": np.array([0.04, 0.0]),
    }
    subtasks = {
        "round": np.array([1, 1, 2]),
        "bytes_in": np.array([400, 400, 400]),
        "bytes_out": np.array([200, 200, 200]),
    }
    t, scale = coding_samples(rounds, subtasks)
    np.testing.assert_allclose(t, [0.1])
    np.testing.assert_allclose(scale, [coding_bytes(10, 8, 1, 100.0, 50.0)])


def test_within_rounds_keeps_per_layer_speed_out_of_the_straggling():
    """Rounds whose layers run at different speeds per FLOP (a systematic spread) with
    a small exponential excess inside each: pooled, the excess looks 10x larger; fitted
    within rounds it is what was drawn."""
    rng = np.random.default_rng(5)
    t, n, g = [], [], []
    for r in range(300):
        speed = rng.choice([1e-9, 2e-9, 4e-9])  # the layer's shift per FLOP
        scale = rng.uniform(1e8, 1e9)
        t.append(scale * (speed + rng.exponential(0.2e-9, 10)))
        n.append(np.full(10, scale))
        g.append(np.full(10, r))
    t, n, g = np.concatenate(t), np.concatenate(n), np.concatenate(g)
    pooled = fit_shift_exp(t, n)
    within = fit_within_groups(t, n, g)
    assert 1 / within.mu == pytest.approx(0.2e-9, rel=0.05)
    assert 1 / pooled.mu > 5 * 0.2e-9
    assert within.theta == pytest.approx(np.mean([1e-9, 2e-9, 4e-9]), rel=0.1)
    assert within.ks < 0.05
    with pytest.raises(ValueError, match="at least 3"):
        fit_within_groups(t[:2], n[:2], g[:2])
    samples = {p: (t, n) for p in ("m", "rec", "cmp", "sen")} | {CMP_ROUNDS: (g, np.ones(g.size))}
    prof = fit_samples(samples, within_rounds=True)
    assert prof.cmp.mu == pytest.approx(within.mu) and prof.rec.mu == pytest.approx(pooled.mu)
    with pytest.raises(TraceFitError, match="no rounds"):
        fit_samples({p: (t, n) for p in ("m", "rec", "cmp", "sen")}, within_rounds=True)
