"""Learned codes end to end without MPI: erasures, accuracy, training, checkpoints, CLI.

Everything runs LeNet-5 on the digits data set (ships with scikit-learn), on subsets
small enough for a busy 2-core machine; every random draw is seeded.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from cocoi_mpi.cli.commands import main
from cocoi_mpi.learned.accuracy import coded_accuracy, coded_predictions
from cocoi_mpi.learned.checkpoint import load_codec, new_state, read_codec, save_codec
from cocoi_mpi.learned.coded_block import (
    CodecError,
    coded_block_output,
    make_coded_block,
    random_erasures,
)
from cocoi_mpi.learned.training import CodecTraining, codec_loss, train_codec
from cocoi_mpi.models import build_model, load_weights
from cocoi_mpi.models.data import load_dataset
from cocoi_mpi.models.lenet5 import LeNet5
from cocoi_mpi.models.training import accuracy, train_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 32, 32)
BLOCK = "features.3"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def base(digits):
    """LeNet-5 trained briefly on the digits (about 87% test accuracy)."""
    model = build_model("lenet5", seed=0)
    train_base(model, digits[0], None, epochs=3, lr=3e-3, seed=0)
    return model.eval()


def fresh_codec(model, k: int = 2, r: int = 1, seed: int = 0, arch: str = "sparsemlp"):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_coded_block(model, BLOCK, SHAPE, k=k, r=r, arch=arch)


def state_for(model, cb):
    return new_state("lenet5", "digits", SHAPE, cb, model)


def codec_weights(cb) -> dict:
    return {k: v.clone() for k, v in cb.codec.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- erasures


@pytest.mark.parametrize("n, r", [(3, 1), (5, 2), (6, 3)])
def test_random_erasures_lose_zero_to_r_outputs_per_row(n, r):
    present = random_erasures(2000, n, r, torch.Generator().manual_seed(4))
    assert present.shape == (2000, n) and present.dtype == torch.bool
    missing = (~present).sum(1)
    assert int(missing.min()) >= 0 and int(missing.max()) <= r
    counts = torch.bincount(missing, minlength=r + 1)
    assert all(int(c) > 0 for c in counts), counts  # every count 0..r occurs
    # every position is lost sometimes: the lost ones are not always the last
    assert bool((~present).any(0).all())


def test_random_erasures_are_deterministic_per_seed():
    def draw(seed):
        return random_erasures(500, 5, 2, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(11), draw(11))
    assert not torch.equal(draw(11), draw(12))
    gen = torch.Generator().manual_seed(11)
    first, second = random_erasures(500, 5, 2, gen), random_erasures(500, 5, 2, gen)
    assert not torch.equal(first, second)  # the generator advances


# --------------------------------------------------------------------------- accuracy


def test_coded_accuracy_with_nothing_lost_is_the_plain_accuracy(base, digits):
    test = digits[1]
    cb = fresh_codec(base)
    plain = accuracy(base, test)
    assert plain > 50  # a trained model: the comparison below means something
    assert coded_accuracy(base, [cb], test, lost=0) == plain
    assert coded_accuracy(base, [cb], test, lost=()) == plain  # no rows lost


def test_coded_accuracy_with_lost_rows_matches_coded_predictions(base, digits):
    test = digits[1].subset(200)
    cb = fresh_codec(base)
    per_row = []
    for row in range(cb.codec.n):
        logits = coded_predictions(base, [cb], test.images, lost=[row])
        expected = 100.0 * float((logits.argmax(1) == test.labels).sum()) / len(test)
        got = coded_accuracy(base, [cb], test, lost=[row])
        assert got == pytest.approx(expected, abs=1e-9), row
        per_row.append(got)
    # an untrained decoder guesses the lost source piece badly; parity lost is exact
    assert per_row[2] == accuracy(base, test) and per_row[0] < per_row[2]
    # lost=1 averages over every single lost row
    assert coded_accuracy(base, [cb], test, lost=1) == pytest.approx(sum(per_row) / 3)


def test_coded_predictions_leave_the_model_unhooked(base, digits):
    images = digits[1].images[:8]
    cb = fresh_codec(base)
    with torch.no_grad():
        before = base(images)
    coded_predictions(base, [cb], images, lost=[0])
    with torch.no_grad():
        assert torch.equal(base(images), before)


# --------------------------------------------------------------------------- training


def test_training_reduces_the_loss_and_leaves_the_base_model_alone(base, digits):
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = fresh_codec(model)
    start = codec_weights(cb)
    train = digits[0].subset(300)
    images, labels = train.images[:128], train.labels[:128]

    def fixed_loss() -> float:  # the same batch under the same erasures, before and after
        with torch.no_grad():
            gen = torch.Generator().manual_seed(99)
            return codec_loss(model, cb, images, labels, 0.0, gen).item()

    loss_before = fixed_loss()
    rows = []
    state = train_codec(
        model,
        cb,
        train,
        CodecTraining(epochs=3, lr=1e-2, batch_size=16, seed=0),
        state_for(model, cb),
        progress=rows.append,
    )
    losses = [row["loss"] for row in state.history]
    assert [row["epoch"] for row in state.history] == [1, 2, 3] and state.epoch == 3
    assert rows == state.history
    assert losses[-1] < 0.8 * losses[0], losses
    assert fixed_loss() < 0.8 * loss_before
    assert not same_weights(codec_weights(cb), start)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_gives_the_same_codec_as_training_straight(base, digits, tmp_path):
    train = digits[0].subset(200)
    straight_model = copy.deepcopy(base)
    straight = fresh_codec(straight_model, seed=3)
    state = train_codec(
        straight_model,
        straight,
        train,
        CodecTraining(epochs=2),
        state_for(straight_model, straight),
    )

    model = copy.deepcopy(base)
    first = fresh_codec(model, seed=3)
    path = tmp_path / "codec.pt"
    half = train_codec(model, first, train, CodecTraining(epochs=1), state_for(model, first))
    save_codec(path, first, half)
    resumed, resumed_state = load_codec(path, model, "lenet5", SHAPE)
    assert resumed_state.epoch == 1 and resumed_state.optimizer is not None
    resumed_state = train_codec(model, resumed, train, CodecTraining(epochs=2), resumed_state)

    assert same_weights(codec_weights(resumed), codec_weights(straight))
    assert len(resumed_state.history) == 2 and resumed_state.epoch == 2
    assert [r["loss"] for r in resumed_state.history] == [r["loss"] for r in state.history]


def test_train_codec_does_nothing_past_its_epochs(base, digits):
    model = copy.deepcopy(base)
    cb = fresh_codec(model)
    state = state_for(model, cb)
    state.epoch = 2
    start = codec_weights(cb)
    out = train_codec(model, cb, digits[0].subset(64), CodecTraining(epochs=2), state)
    assert out.history == [] and same_weights(codec_weights(cb), start)


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(base, tmp_path_factory):
    """A saved (untrained) codec for features.3 and the codec itself."""
    cb = fresh_codec(base, seed=5)
    state = state_for(base, cb)
    state.history = [{"epoch": 1, "loss": 0.5, "seconds": 0.1}]
    state.epoch = 1
    path = tmp_path_factory.mktemp("ckpt") / "codec.pt"
    save_codec(path, cb, state)
    return path, cb, state


def tampered(src, dst, **changes):
    payload = torch.load(src, map_location="cpu", weights_only=True)
    payload.update(changes)
    torch.save(payload, dst)
    return dst


def test_checkpoint_round_trip_gives_identical_outputs(base, checkpoint, digits):
    path, cb, state = checkpoint
    loaded, loaded_state = load_codec(path, base, "lenet5", SHAPE)
    assert loaded.name == BLOCK and loaded.loc == cb.loc
    assert loaded.codec.meta() == cb.codec.meta()
    assert same_weights(codec_weights(loaded), codec_weights(cb))
    assert not loaded.codec.training
    assert (loaded_state.model, loaded_state.block, loaded_state.data) == (
        "lenet5",
        BLOCK,
        "digits",
    )
    assert loaded_state.epoch == 1 and loaded_state.history == state.history
    assert loaded_state.block_input_shape == (6, 14, 14)
    assert loaded_state.signature == cb.spec.signature()
    images = digits[1].images[:16]
    x = torch.randn(16, 6, 14, 14, generator=torch.Generator().manual_seed(0))
    for lost in ([], [0], [1], [2]):
        present = torch.ones(16, 3, dtype=torch.bool)
        present[:, lost] = False
        with torch.no_grad():
            assert torch.equal(
                coded_block_output(loaded, x, present), coded_block_output(cb, x, present)
            )
        assert torch.equal(
            coded_predictions(base, [loaded], images, lost),
            coded_predictions(base, [cb], images, lost),
        )


def test_load_codec_refuses_a_missing_file(base, tmp_path):
    with pytest.raises(CodecError, match="not found"):
        load_codec(tmp_path / "nope.pt", base, "lenet5", SHAPE)
    with pytest.raises(CodecError, match="not found"):
        load_codec(tmp_path, base, "lenet5", SHAPE)  # a folder is no checkpoint either


def test_load_codec_refuses_files_that_are_not_checkpoints(base, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CodecError, match="not a cocoi codec checkpoint"):
        load_codec(plain, base, "lenet5", SHAPE)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(CodecError, match="cannot read codec checkpoint"):
        load_codec(text, base, "lenet5", SHAPE)
    weights = tmp_path / "weights.pt"
    torch.save(base.state_dict(), weights)  # a base model's weights, not a codec
    with pytest.raises(CodecError, match="not a cocoi codec checkpoint"):
        load_codec(weights, base, "lenet5", SHAPE)


def test_load_codec_refuses_another_version(base, checkpoint, tmp_path):
    path = tampered(checkpoint[0], tmp_path / "v9.pt", version=9)
    with pytest.raises(CodecError, match="version 9"):
        read_codec(path)


def test_load_codec_refuses_another_model_spec(base, checkpoint):
    with pytest.raises(CodecError, match="'lenet5', not 'vgg16'"):
        load_codec(checkpoint[0], base, "vgg16", SHAPE)


def test_load_codec_refuses_a_block_that_does_not_exist(base, checkpoint, tmp_path):
    path = tampered(checkpoint[0], tmp_path / "b9.pt", block="features.9")
    with pytest.raises(CodecError, match=r"features\.9.*blocks: features\.0, features\.3"):
        load_codec(path, base, "lenet5", SHAPE)


def test_load_codec_refuses_another_block_structure(checkpoint):
    model = LeNet5()
    model.features[3] = torch.nn.Conv2d(6, 8, 5)  # 8 output channels instead of 16
    with pytest.raises(CodecError, match=r"features\.3.*another structure"):
        load_codec(checkpoint[0], model.eval(), "lenet5", SHAPE)


def test_load_codec_refuses_another_input_size(base, checkpoint):
    with pytest.raises(CodecError, match=r"receives \(6, 16, 16\).*\(6, 14, 14\)"):
        load_codec(checkpoint[0], base, "lenet5", (1, 36, 36))


def test_load_codec_refuses_weights_that_do_not_fit(base, checkpoint, tmp_path):
    payload = torch.load(checkpoint[0], map_location="cpu", weights_only=True)
    state_dict = dict(payload["state_dict"])
    state_dict.pop(next(iter(state_dict)))
    path = tampered(checkpoint[0], tmp_path / "w.pt", state_dict=state_dict)
    with pytest.raises(CodecError, match="codec weights do not load"):
        load_codec(path, base, "lenet5", SHAPE)


def test_save_codec_leaves_no_temp_file(checkpoint, tmp_path):
    _, cb, state = checkpoint
    path = tmp_path / "sub" / "codec.pt"
    save_codec(path, cb, state)
    save_codec(path, cb, state)  # overwriting too
    assert os.listdir(tmp_path / "sub") == ["codec.pt"]
    assert read_codec(path)["epoch"] == 1


def failing_save(obj, f, *args, **kwargs):
    """torch.save that dies half-way through writing the file (path or open file)."""
    if hasattr(f, "write"):
        f.write(b"PK\x03\x04 half a checkpoint")
    else:
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
    raise OSError("disk full")


def test_interrupted_save_keeps_the_previous_checkpoint(checkpoint, tmp_path, monkeypatch):
    _, cb, state = checkpoint
    path = tmp_path / "codec.pt"
    save_codec(path, cb, state)
    good = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_codec(path, cb, state)
    assert path.read_bytes() == good


def test_interrupted_save_leaves_no_temp_file(checkpoint, tmp_path, monkeypatch):
    _, cb, state = checkpoint
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_codec(tmp_path / "codec.pt", cb, state)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Base weights and a codec, both written by `cocoi train` (one epoch each)."""
    folder = tmp_path_factory.mktemp("cli")
    weights, codec = folder / "lenet5.pt", folder / "codec.pt"
    runner = CliRunner()
    base_run = runner.invoke(main, ["train", "--base", "--epochs", "1", "--out", str(weights)])
    codec_run = runner.invoke(
        main,
        ["train", "--weights", str(weights), "--block", BLOCK, "--k", "2", "--r", "1"]
        + ["--epochs", "1", "--out", str(codec)],
    )
    return weights, codec, base_run, codec_run


def test_cli_train_base_writes_loadable_weights(cli_files):
    weights, _, run, _ = cli_files
    assert run.exit_code == 0, run.output
    assert f"wrote {weights}" in run.output and "epoch 1/1" in run.output
    model = load_weights(build_model("lenet5", seed=9), weights)  # another seed: overwritten
    got = accuracy(model.eval(), load_dataset("digits", "test"))
    assert f"base lenet5 on digits: test accuracy {got:.2f}%" in run.output
    assert not torch.equal(model.features[0].weight, build_model("lenet5").features[0].weight)


def test_cli_train_codec_writes_a_codec(cli_files):
    weights, codec, _, run = cli_files
    assert run.exit_code == 0, run.output
    assert "test accuracy with 0..1 of 3 outputs lost" in run.output
    model = load_weights(build_model("lenet5"), weights).eval()
    cb, state = load_codec(codec, model, "lenet5", SHAPE)
    assert (cb.name, cb.codec.k, cb.codec.r, cb.codec.arch) == (BLOCK, 2, 1, "sparsemlp")
    assert state.epoch == 1 and len(state.history) == 1
    assert sorted(p.name for p in codec.parent.iterdir()) == ["codec.pt", "lenet5.pt"]


def test_cli_codec_without_weights_is_a_usage_error(tmp_path):
    out = tmp_path / "c.pt"
    run = CliRunner().invoke(main, ["train", "--block", BLOCK, "--epochs", "1", "--out", str(out)])
    assert run.exit_code == 2
    assert "cocoi: error:" in run.output and "--weights" in run.output
    assert not out.exists()


def test_cli_unknown_block_names_the_available_ones(cli_files, tmp_path):
    weights = cli_files[0]
    out = tmp_path / "c.pt"
    run = CliRunner().invoke(
        main,
        ["train", "--weights", str(weights), "--block", "features.9"]
        + ["--epochs", "1", "--out", str(out)],
    )
    assert run.exit_code == 2
    assert "cocoi: error:" in run.output
    assert "features.9" in run.output and "features.0, features.3" in run.output
    assert not out.exists()


def test_cli_accuracy_markdown_table(cli_files):
    weights, codec, _, _ = cli_files
    run = CliRunner().invoke(
        main, ["accuracy", "--weights", str(weights), "--codec", str(codec), "--markdown"]
    )
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0].startswith("base accuracy on digits test (450 images): ")
    assert "| codec | block | k | r | lost |" in run.output
    rows = [line for line in lines if line.startswith("| sparsemlp |")]
    assert [row.split("|")[5].strip() for row in rows] == ["0", "1"]
    assert all(row.split("|")[2].strip() == BLOCK for row in rows)
    assert rows[0].split("|")[-2].strip() == "0.00"  # nothing lost: no drop


def test_cli_accuracy_with_lost_rows_prints_one_line(cli_files):
    weights, codec, _, _ = cli_files
    run = CliRunner().invoke(
        main, ["accuracy", "--weights", str(weights), "--codec", str(codec), "--lost-rows", "0"]
    )
    assert run.exit_code == 0, run.output
    lines = run.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("base ") and "rows 0 lost in every block:" in lines[0]


def test_cli_module_runs_every_command():
    run = subprocess.run(
        [sys.executable, "-m", "cocoi_mpi.cli", "accuracy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
