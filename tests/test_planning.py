"""Per-layer planning: k°, k*, and the type-1 decision (appendix A)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cocoi_mpi.cli.commands import main
from cocoi_mpi.latency.counts import LayerShape
from cocoi_mpi.latency.model import approx_latency, k_circ
from cocoi_mpi.latency.planning import (
    build_for_shapes,
    format_plan,
    model_layer_shapes,
    plan_layer,
    plan_model,
)
from cocoi_mpi.latency.profile import ShiftExp, pi4_profile

VGG = LayerShape.conv(64, 224, 224, 64, 3, padding=1, name="features.2")


def test_decision_flips_when_the_master_is_much_faster():
    prof = pi4_profile()
    slow_master = plan_layer(VGG, 10, prof, samples=5000)
    assert slow_master.distribute
    assert slow_master.predicted_s < slow_master.local_s
    fast = prof.with_phase("m", ShiftExp(prof.m.mu * 1000, prof.m.theta / 1000))
    fast_master = plan_layer(VGG, 10, fast, samples=5000)
    assert not fast_master.distribute
    assert fast_master.local_s == pytest.approx(slow_master.local_s / 1000, rel=1e-6)
    assert "master" in fast_master.reason


def test_methods_choose_k_circ_k_star_or_a_given_k():
    prof = pi4_profile()
    auto = plan_layer(VGG, 10, prof, "auto", m=2, samples=5000)
    star = plan_layer(VGG, 10, prof, "star", m=2, samples=5000)
    fixed = plan_layer(VGG, 10, prof, 4, m=2, samples=5000)
    assert auto.k == auto.k_circ == k_circ(VGG, 10, prof, 2, search="integer").k
    assert star.k == star.k_star == int(np.argmin(star.E_by_k)) + 1
    assert fixed.k == 4 and fixed.predicted_s == pytest.approx(fixed.E_by_k[3])
    assert plan_layer(VGG, 10, prof, 500, m=2, samples=0).k == 10
    assert np.allclose(auto.L_by_k, approx_latency(VGG, 10, np.arange(1, 11), prof, 2))
    with pytest.raises(ValueError, match="samples"):
        plan_layer(VGG, 10, prof, "star", samples=0)
    with pytest.raises(ValueError, match="unknown method"):
        plan_layer(VGG, 10, prof, "best")


def test_without_samples_the_prediction_is_L():
    plan = plan_layer(VGG, 10, pi4_profile(), samples=0)
    assert plan.E_by_k is None and plan.k_star is None
    assert plan.predicted_s == pytest.approx(plan.L_by_k[plan.k - 1])
    assert json.loads(json.dumps(plan.to_dict()))["k"] == plan.k


def test_layer_too_narrow_to_split_stays_local():
    tiny = LayerShape.conv(8, 4, 1, 8, 1)
    plan = plan_layer(tiny, 10, pi4_profile(), m=2)
    assert plan.k == 0 and not plan.distribute and "narrower" in plan.reason


def test_failures_limit_k():
    plan = plan_layer(VGG, 10, pi4_profile(), "star", samples=3000, failures=3)
    assert len(plan.L_by_k) == 7 and plan.k <= 7


def test_block_plan_uses_block_counts():
    block = [
        LayerShape.conv(64, 56, 56, 64, 3, padding=1, name="a"),
        LayerShape.conv(64, 56, 56, 64, 3, padding=1, name="b"),
    ]
    plan = plan_layer(block, 10, pi4_profile(), samples=2000)
    assert plan.name == "a+b"
    assert plan.local_s == pytest.approx(2 * plan_layer(block[0], 10, pi4_profile()).local_s)


def test_model_layer_shapes_on_a_user_cnn():
    from zoo import odd_cnn

    model = odd_cnn()
    entries = model_layer_shapes(model, odd_cnn.input_shape)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(entries) == len(convs)
    assert entries[1].shape.stride_w == 2 and entries[1].shape.dilation_w == 2
    assert entries[2].shape.groups == 3
    outs = []
    hooks = [
        c.register_forward_hook(lambda _m, a, o: outs.append((a[0].shape, o.shape))) for c in convs
    ]
    model(torch.zeros(1, *odd_cnn.input_shape))
    for h in hooks:
        h.remove()
    for e, (x, y) in zip(entries, outs, strict=True):
        assert (e.shape.c_in, e.shape.h_in, e.shape.w_in - sum(e.shape.pad_w)) == tuple(x[1:])
        assert (e.shape.c_out, e.shape.h_out, e.shape.w_out) == tuple(y[1:])


def test_plan_model_vgg16_on_meta():
    plans = plan_model(build_for_shapes("vgg16"), (3, 224, 224), 10, pi4_profile(), samples=0)
    assert len(plans) == 13
    assert [p.shape.w_out for p, _ in plans][::3] == [224, 112, 56, 28, 14]
    assert not plans[0][1].distribute  # conv1 (3 input channels) stays local, as in the paper
    assert all(p.distribute for _, p in plans[1:])
    assert "features.2" in format_plan(plans)
    assert format_plan(plans, markdown=True).startswith("| layer")


def test_cli_plan(tmp_path):
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(
        main, ["plan", "--model", "lenet5", "--n", "4", "--samples", "500", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "k°" in res.output and "local" in res.output
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and {"k_circ", "k_star", "distribute"} <= set(rows[0])


def test_cli_plan_with_profile_and_star(tmp_path):
    path = tmp_path / "p.json"
    pi4_profile().save(path)
    res = CliRunner().invoke(
        main,
        [
            "plan",
            "--model",
            "vgg16",
            "--n",
            "10",
            "--profile",
            str(path),
            "--k-method",
            "star",
            "--samples",
            "500",
            "--input-shape",
            "3,64,64",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "(3, 64, 64)" in res.output


def test_cli_plan_bad_inputs():
    runner = CliRunner()
    assert runner.invoke(main, ["plan", "--profile", "/no/such.json"]).exit_code == 2
    assert runner.invoke(main, ["plan", "--model", "nonesuch"]).exit_code == 2
    assert runner.invoke(main, ["plan", "--input-shape", "3,x"]).exit_code == 2


@pytest.mark.parametrize("method", ["auto", "star", 9])
def test_the_planner_never_picks_a_k_past_the_codes_safe_limit(method):
    """k_cap (codes.safety.largest_safe_k): every method plans within it."""
    free = plan_layer(VGG, 10, pi4_profile(), method=method, samples=2000)
    capped = plan_layer(VGG, 10, pi4_profile(), method=method, samples=2000, k_cap=2)
    assert free.k > 2
    assert capped.k <= 2 and len(capped.L_by_k) == 2
