"""Block caches (cocoi train --cache), data fitted to a model's input, head-only base
training, and the learned:hybrid sweep entry. LeNet-5 on small digits subsets: the
same code paths VGG16 at 224x224 takes (docs/fig8.md), at a size a test can afford.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.experiment.scenarios import Scenario
from cocoi_mpi.experiment.sweep import cells, is_hybrid, parse_entry
from cocoi_mpi.geometry.blocks import block_reference, cut_block, run_pieces
from cocoi_mpi.learned.accuracy import together_rows
from cocoi_mpi.learned.cache import (
    CacheError,
    cache_key,
    capture,
    open_cache,
    open_or_capture,
    trunk_digest,
)
from cocoi_mpi.learned.checkpoint import new_state
from cocoi_mpi.learned.coded_block import block_inputs, make_coded_block
from cocoi_mpi.learned.head import head_accuracy, train_head
from cocoi_mpi.learned.training import (
    CodecTraining,
    cached_reconstruction_error,
    output_pieces,
    train_codec,
)
from cocoi_mpi.models import build_model
from cocoi_mpi.models.data import DataError, fit_to_input, load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 32, 32)


@pytest.fixture(scope="module")
def small():
    return load_dataset("digits", "train").subset(96), load_dataset("digits", "test").subset(48)


@pytest.fixture(scope="module")
def caches(small, tmp_path_factory):
    model = build_model("lenet5", seed=0).eval()
    root = tmp_path_factory.mktemp("cache")
    train = open_or_capture(model, "lenet5", small[0], root / "train", batch_size=32)
    test = open_or_capture(model, "lenet5", small[1], root / "test", batch_size=32)
    return model, train, test


# --------------------------------------------------------------------------- data


def test_fit_to_input_keeps_a_dataset_that_fits(small):
    assert fit_to_input(small[1], SHAPE) is small[1]


def test_fit_to_input_resizes_and_repeats_the_channel(small):
    fitted = fit_to_input(small[1], (3, 48, 40))
    assert tuple(fitted.images.shape) == (48, 3, 48, 40)
    assert torch.equal(fitted.images[:, 0], fitted.images[:, 2])
    assert torch.equal(fitted.labels, small[1].labels)
    assert fitted.name.endswith("@3x48x40")
    again = torch.nn.functional.interpolate(
        small[1].images, size=(48, 40), mode="bilinear", align_corners=False
    )
    assert torch.equal(fitted.images[:, 1:2], again)


def test_fit_to_input_refuses_channels_it_cannot_make(small):
    three = fit_to_input(small[1], (3, 32, 32))
    with pytest.raises(DataError, match="has 3 channels; the model takes 2"):
        fit_to_input(three, (2, 32, 32))


# --------------------------------------------------------------------------- capture


def test_cache_holds_every_block_input_output_and_the_head_features(caches, small):
    model, train, _ = caches
    assert train.blocks == ["features.0", "features.3"]
    images = small[0].images
    for cb_name in train.blocks:
        cb = make_coded_block(model, cb_name, SHAPE, 2, 1, "sparsemlp")
        x = block_inputs(model, cb.loc, images)
        with torch.no_grad():
            y = block_reference(cb.spec, x)
        got_x = torch.from_numpy(train.inputs(cb_name).astype(np.float32))
        got_y = torch.from_numpy(train.outputs(cb_name).astype(np.float32))
        assert got_x.shape == x.shape and got_y.shape == y.shape
        assert torch.allclose(got_x, x, rtol=1e-3, atol=1e-3 * float(x.abs().max()))
        assert torch.allclose(got_y, y, rtol=1e-3, atol=1e-3 * float(y.abs().max()))
    assert train.head_inputs().shape == (96, 84)  # LeNet-5's last Linear takes 84
    assert torch.equal(train.labels(), small[0].labels)


def test_cache_is_reused_for_the_same_run_and_refused_for_another(caches, small):
    model, train, _ = caches
    again = open_or_capture(model, "lenet5", small[0], train.directory)
    assert again.key == train.key
    with pytest.raises(CacheError, match="count 96 .wanted 40."):
        open_or_capture(model, "lenet5", small[0].subset(40), train.directory)
    other = build_model("lenet5", seed=1)
    with pytest.raises(CacheError, match="digest"):
        open_or_capture(other, "lenet5", small[0], train.directory)


def test_trunk_digest_ignores_the_head_only(caches):
    model = build_model("lenet5", seed=0)
    before = trunk_digest(model)
    with torch.no_grad():
        model.classifier[-1].weight.add_(1.0)
    assert trunk_digest(model) == before
    with torch.no_grad():
        model.features[0].weight.add_(1.0)
    assert trunk_digest(model) != before


def test_an_interrupted_capture_leaves_nothing(small, tmp_path):
    model = build_model("lenet5", seed=0)
    key = cache_key(model, "lenet5", small[1])

    def stop(_count):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture(model, key, small[1], tmp_path / "c", batch_size=8, progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_open_cache_refuses_a_folder_that_is_not_one(tmp_path):
    with pytest.raises(CacheError, match="not a block cache"):
        open_cache(tmp_path)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("block, k", [("features.0", 2), ("features.0", 3), ("features.3", 2)])
def test_output_pieces_equal_what_workers_compute(small, block, k):
    """Cutting the block's output is what the k masked systematic pieces compute."""
    model = build_model("lenet5", seed=0).eval()
    cb = make_coded_block(model, block, SHAPE, k, 1, "sparsemlp")
    x = block_inputs(model, cb.loc, small[1].images[:8])
    with torch.no_grad():
        cut = output_pieces(cb, block_reference(cb.spec, x))
        computed = run_pieces(cb.spec, cb.split, cut_block(cb.split, x))
    assert cut.shape == computed.shape
    assert torch.allclose(cut, computed, atol=1e-5)


def test_training_from_the_cache_lowers_the_reconstruction_error(caches):
    model, train, test = caches
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cb = make_coded_block(model, "features.3", SHAPE, 2, 1, "sparsemlp")
    before = cached_reconstruction_error(cb, test, 1, 16)
    state = new_state("lenet5", "digits", SHAPE, cb, model)
    settings = CodecTraining(epochs=6, batch_size=8, lr=1e-2)
    train_codec(model, cb, None, settings, state, cache=(train, test))
    after = cached_reconstruction_error(cb, test, 1, 16)
    assert after < 0.8 * before
    assert [row["epoch"] for row in state.history] == [1, 2, 3, 4, 5, 6]
    assert state.history[-1]["test_rel_err_lost_r"] == pytest.approx(after)
    assert cached_reconstruction_error(cb, test, 0, 16) == 0.0  # nothing lost: exact


def test_an_epoch_can_take_a_seeded_subset_of_the_cache(caches):
    _, train, _ = caches
    seen = [x.shape[0] for x, _ in train.block_batches("features.3", 16, True, seed=3, limit=40)]
    assert seen == [16, 16, 8]
    first = torch.cat([x for x, _ in train.block_batches("features.3", 8, True, 3, limit=8)])
    again = torch.cat([x for x, _ in train.block_batches("features.3", 8, True, 3, limit=8)])
    other = torch.cat([x for x, _ in train.block_batches("features.3", 8, True, 4, limit=8)])
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_task_loss_cannot_train_from_a_cache(caches):
    model, train, test = caches
    cb = make_coded_block(model, "features.3", SHAPE, 2, 1, "sparsemlp")
    state = new_state("lenet5", "digits", SHAPE, cb, model)
    with pytest.raises(ValueError, match="--task-loss"):
        train_codec(model, cb, None, CodecTraining(task_loss=1.0), state, cache=(train, test))


def test_head_only_training_learns_and_touches_nothing_else(caches):
    model, train, test = caches
    trunk = trunk_digest(model)
    others = {k: v.clone() for k, v in model.state_dict().items() if "classifier.4" not in k}
    head = model.classifier[-1]
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    try:
        before = head_accuracy(head, train)
        log = train_head(model, train, test, epochs=30, lr=1e-2, batch_size=16)
        assert log[-1]["train_acc"] > before + 10  # random LeNet features: ~26% here
        assert trunk_digest(model) == trunk
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in others.items())
    finally:
        head.load_state_dict(saved)


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args, message",
    [
        (["--head-only"], "--head-only applies to --base"),
        (["--base", "--head-only"], "--head-only trains on cached features"),
        (["--base", "--count", "0"], "--count takes TRAIN or TRAIN:TEST"),
        (["--base", "--count", "5:x"], "--count takes TRAIN or TRAIN:TEST"),
        (["--weights", "w.pt", "--per-epoch", "5"], "--per-epoch picks images from a block"),
    ],
)
def test_train_refuses_bad_cache_settings(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------- sweep


def test_learned_hybrid_is_a_sweep_entry():
    assert parse_entry("learned:hybrid") == ("learned", None)
    assert is_hybrid("learned:hybrid") and not is_hybrid("learned")
    with pytest.raises(ValueError, match="only schemes that code conv blocks"):
        parse_entry("cocoi:hybrid")
    order = cells(["learned", "learned:hybrid"], [Scenario()], 2, seed=0)
    assert sorted((c.name, c.hybrid) for c in order) == [
        ("learned", False),
        ("learned", False),
        ("learned:hybrid", True),
        ("learned:hybrid", True),
    ]


# --------------------------------------------------------------------------- accuracy


def test_together_rows_lose_the_same_rows_in_every_block(small):
    model = build_model("lenet5", seed=0).eval()
    entries = [
        make_coded_block(model, "features.0", SHAPE, 2, 2, "sparsemlp"),
        make_coded_block(model, "features.3", SHAPE, 3, 1, "sparsemlp"),
    ]
    rows = together_rows(model, entries, small[1], draws=2)
    assert [row["lost"] for row in rows] == [0, 1, 1]  # r = 1, the smaller of the two
    assert rows[0]["rows"] == () and rows[0]["agreement"] == 100.0  # systematic: exact
    assert all(len(row["rows"]) == row["lost"] for row in rows)
    assert all(0 <= i < 4 for row in rows for i in row["rows"])
    plain = model(small[1].images).argmax(1)
    correct = (plain == small[1].labels).float().mean()
    assert rows[0]["accuracy"] == pytest.approx(100.0 * float(correct))


def test_together_rows_need_one_n(small):
    model = build_model("lenet5", seed=0).eval()
    entries = [
        make_coded_block(model, "features.0", SHAPE, 2, 1, "sparsemlp"),
        make_coded_block(model, "features.3", SHAPE, 2, 2, "sparsemlp"),
    ]
    with pytest.raises(ValueError, match="different n"):
        together_rows(model, entries, small[1])
