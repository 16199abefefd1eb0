"""Base-model training: LeNet-5 learns digits, runs repeat per seed, checkpoints save atomically."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cocoi_mpi.models.training as training
from cocoi_mpi.models import build_model, load_weights
from cocoi_mpi.models.data import Dataset, load_dataset
from cocoi_mpi.models.lenet5 import lenet5
from cocoi_mpi.models.training import CHECKPOINT_KIND, TrainLog, accuracy, save_base, train_base

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_train() -> Dataset:
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def digits_test() -> Dataset:
    return load_dataset("digits", "test")


def seeded_lenet5(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return lenet5()


class ConstantClass(nn.Module):
    """Always predicts ``label``; has one parameter so it looks like a real model."""

    def __init__(self, label: int, classes: int = 10):
        super().__init__()
        self.label, self.classes = label, classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.classes)
        logits[:, self.label] = self.scale
        return logits


# --------------------------------------------------------------------------- training


def test_lenet5_learns_digits_in_three_epochs(digits_train, digits_test):
    # About 1 s on one thread; seed 0 reaches ~92% (57.6, 82.7, 92.0 per epoch).
    rows = []
    model = seeded_lenet5(0)
    log = train_base(model, digits_train, digits_test, epochs=3, seed=0, progress=rows.append)
    assert rows == log.epochs and [row["epoch"] for row in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "loss", "train_acc", "test_acc", "seconds"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert log.final_test_acc > 85.0
    assert log.final_test_acc == pytest.approx(accuracy(model, digits_test))
    assert not model.training


def test_same_seed_gives_identical_weights(digits_train):
    small = digits_train.subset(256)
    first, second, other = seeded_lenet5(1), seeded_lenet5(1), seeded_lenet5(1)
    log = train_base(first, small, None, epochs=2, seed=5)
    train_base(second, small, None, epochs=2, seed=5)
    train_base(other, small, None, epochs=2, seed=6)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert "test_acc" not in log.epochs[0] and log.final_test_acc is None


def test_train_base_leaves_the_callers_rng_alone(digits_train):
    model = seeded_lenet5(3)
    torch.manual_seed(42)
    expected = torch.rand(4)
    torch.manual_seed(42)
    train_base(model, digits_train.subset(64), None, epochs=1, seed=9)
    assert torch.equal(torch.rand(4), expected)


def test_train_base_refuses_bad_settings(digits_train):
    model = seeded_lenet5(0)
    with pytest.raises(ValueError, match=r"epochs must be at least 1, got 0.*lr must be"):
        train_base(model, digits_train, None, epochs=0, lr=-1.0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        train_base(model, digits_train, None, epochs=1, batch_size=0)


def test_model_with_the_wrong_class_count_is_refused(digits_test):
    with pytest.raises(ValueError, match=r"model outputs shape \(256, 3\).*10 classes"):
        accuracy(ConstantClass(0, classes=3), digits_test)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("label", [0, 7])
def test_accuracy_of_a_constant_model_is_that_class_share(digits_test, label):
    share = 100.0 * (digits_test.labels == label).sum().item() / len(digits_test)
    assert 0 < share < 100
    model = ConstantClass(label).train()
    assert accuracy(model, digits_test, batch_size=64) == pytest.approx(share)
    assert model.training  # accuracy() restores the mode it found


# --------------------------------------------------------------------------- save_base


def make_log() -> TrainLog:
    rows = [
        {"epoch": 1, "loss": 1.5, "train_acc": 40.0, "test_acc": 60.0, "seconds": 0.5},
        {"epoch": 2, "loss": 0.5, "train_acc": 85.0, "test_acc": 91.5, "seconds": 0.4},
    ]
    return TrainLog(rows)


def test_save_base_checkpoint_loads_back(tmp_path):
    model = seeded_lenet5(4).eval()
    path = tmp_path / "nested" / "lenet5-digits.pt"
    save_base(path, model, "lenet5", "digits", make_log())
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"kind", "model", "data", "state_dict", "log", "accuracy"}
    assert checkpoint["kind"] == CHECKPOINT_KIND
    assert (checkpoint["model"], checkpoint["data"]) == ("lenet5", "digits")
    assert checkpoint["log"] == make_log().epochs and checkpoint["accuracy"] == 91.5
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_save_base_checkpoint_fits_load_weights(tmp_path):
    model = seeded_lenet5(4).eval()
    path = tmp_path / "base.pt"
    save_base(path, model, "lenet5", "digits", make_log())
    rebuilt = load_weights(build_model("lenet5", seed=99), path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(rebuilt(x), model(x))


def test_interrupted_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "base.pt"
    save_base(path, seeded_lenet5(4), "lenet5", "digits", make_log())
    before = path.read_bytes()

    def half_write_then_die(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(training.torch, "save", half_write_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_base(path, seeded_lenet5(5), "lenet5", "digits", make_log())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["base.pt"]


def test_interrupted_first_save_leaves_no_file(tmp_path, monkeypatch):
    def die(obj, handle):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(training.torch, "save", die)
    with pytest.raises(OSError, match="disk full"):
        save_base(tmp_path / "base.pt", seeded_lenet5(4), "lenet5", "digits", make_log())
    assert list(tmp_path.iterdir()) == []
