"""Local datasets: digits from sklearn, MNIST IDX and CIFAR-10 pickles written here in tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cocoi_mpi.models.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    Dataset,
    batches,
    digits_split,
    digits_upsampled,
    load_dataset,
)

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> dict[str, Dataset]:
    return {split: load_dataset("digits", split) for split in ("train", "test", "all")}


@pytest.mark.parametrize(("split", "count"), [("train", 1347), ("test", 450), ("all", 1797)])
def test_digits_splits_have_mnist_layout(digits, split, count):
    data = digits[split]
    assert len(data) == count and data.classes == 10
    assert data.images.shape == (count, 1, 32, 32) and data.images.dtype == torch.float32
    assert data.labels.shape == (count,) and data.labels.dtype == torch.int64
    assert set(data.labels.tolist()) == set(range(10))


def test_digits_padding_is_normalised_zero(digits):
    images = digits["all"].images
    border = torch.cat([images[..., :2, :].flatten(), images[..., :, :2].flatten()])
    assert torch.allclose(border, torch.tensor(-DIGITS_MEAN / DIGITS_STD))


def test_digits_train_and_test_are_disjoint_and_cover_all():
    train, test = digits_split()
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1797))


def test_digits_split_is_pinned(digits):
    # The split must not change with the run seed, the machine or the torch version.
    assert digits_split()[1][:5].tolist() == [401, 520, 1222, 782, 206]
    assert digits["test"].labels[:8].tolist() == [5, 4, 6, 6, 8, 8, 9, 9]


def test_digits_load_is_deterministic(digits):
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, digits["test"].images)
    assert torch.equal(again.labels, digits["test"].labels)


def test_digits_all_is_train_then_test(digits):
    joined = torch.cat([digits["train"].images, digits["test"].images])
    assert torch.equal(digits["all"].images, joined)


def test_digits_normalisation_constants_match_the_data():
    images, _ = digits_upsampled()
    pixels = images.to(torch.float64)
    assert pixels.mean().item() == pytest.approx(DIGITS_MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(DIGITS_STD, abs=5e-5)


def test_digits_images_are_the_upsampled_sklearn_digits(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    index = int(digits_split()[1][0])
    small = torch.from_numpy(raw.images[index]).float()[None, None] / 16
    expected = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)[0]
    got = digits["test"].images[0, :, 2:30, 2:30] * DIGITS_STD + DIGITS_MEAN
    assert torch.allclose(got, expected, atol=1e-5)
    assert digits["test"].labels[0].item() == raw.target[index]


# --------------------------------------------------------------------------- MNIST IDX


def write_idx(path: Path, magic: int, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8) in the IDX format: big-endian magic, dims, then bytes."""
    raw = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def mnist_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


def write_mnist(folder: Path, gz: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = {"train": mnist_arrays(5, seed=1), "test": mnist_arrays(3, seed=2)}
    prefixes = {"train": "train", "test": "t10k"}
    for split, (images, labels) in parts.items():
        write_idx(folder / f"{prefixes[split]}-images-idx3-ubyte", 2051, images, gz)
        write_idx(folder / f"{prefixes[split]}-labels-idx1-ubyte", 2049, labels, gz)
    return parts


def unnormalise_mnist(images: torch.Tensor) -> np.ndarray:
    """Undo pad + normalise: back to uint8 28x28 pixels."""
    pixels = (images[:, 0, 2:30, 2:30] * MNIST_STD + MNIST_MEAN) * 255
    return pixels.round().to(torch.uint8).numpy()


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_round_trips_pixels_and_labels(tmp_path, gz, split):
    images, labels = write_mnist(tmp_path, gz)[split]
    data = load_dataset(f"mnist:{tmp_path}", split)
    assert data.images.shape == (len(labels), 1, 32, 32) and data.classes == 10
    np.testing.assert_array_equal(unnormalise_mnist(data.images), images)
    assert data.labels.tolist() == labels.tolist()
    border = data.images[..., :2, :]
    assert torch.allclose(border, torch.tensor(-MNIST_MEAN / MNIST_STD))


def test_mnist_all_is_train_then_test(tmp_path):
    parts = write_mnist(tmp_path)
    data = load_dataset(f"mnist:{tmp_path}", "all")
    assert data.labels.tolist() == parts["train"][1].tolist() + parts["test"][1].tolist()


def test_mnist_wrong_magic_names_the_file(tmp_path):
    write_mnist(tmp_path)
    images, _ = mnist_arrays(5, seed=1)
    write_idx(tmp_path / "train-images-idx3-ubyte", 2049, images)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: magic number 2049"):
        load_dataset(f"mnist:{tmp_path}", "train")


def test_mnist_truncated_file_names_the_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_dataset(f"mnist:{tmp_path}", "test")


def test_mnist_file_shorter_than_header_is_refused(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*header"):
        load_dataset(f"mnist:{tmp_path}", "test")


def test_mnist_count_mismatch_names_both_files(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images.*t10k-labels.*3 images but 4 labels"):
        load_dataset(f"mnist:{tmp_path}", "test")


def test_mnist_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"not found: .*train-labels-idx1-ubyte"):
        load_dataset(f"mnist:{tmp_path}", "train")


def test_mnist_corrupt_gzip_is_named(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset(f"mnist:{tmp_path}", "test")


def test_mnist_wrong_image_size_is_refused(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, np.zeros((3, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*expected 28x28"):
        load_dataset(f"mnist:{tmp_path}", "test")


def test_mnist_label_above_nine_is_refused(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.array([1, 10, 2], np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 10"):
        load_dataset(f"mnist:{tmp_path}", "test")


# --------------------------------------------------------------------------- CIFAR-10

CIFAR_FILES = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}


def cifar_batch(count: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, size=count).tolist(),
        b"batch_label": b"written by the test",
    }


def write_cifar(folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> dict[str, dict]:
    batches_written = {}
    for seed, (name, count) in enumerate(CIFAR_FILES.items()):
        batches_written[name] = cifar_batch(count, seed)
        (folder / name).write_bytes(pickle.dumps(batches_written[name], protocol=protocol))
    return batches_written


def unnormalise_cifar(images: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().to(torch.uint8).reshape(len(images), -1).numpy()


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_cifar_round_trips_pixels_and_labels(tmp_path, protocol):
    written = write_cifar(tmp_path, protocol)
    train = load_dataset(f"cifar10:{tmp_path}", "train")
    test = load_dataset(f"cifar10:{tmp_path}", "test")
    names = [f"data_batch_{i}" for i in range(1, 6)]
    expected_train = np.concatenate([written[name][b"data"] for name in names])
    assert train.images.shape == (10, 3, 32, 32) and train.classes == 10
    np.testing.assert_array_equal(unnormalise_cifar(train.images), expected_train)
    assert train.labels.tolist() == sum((written[name][b"labels"] for name in names), [])
    np.testing.assert_array_equal(unnormalise_cifar(test.images), written["test_batch"][b"data"])
    assert test.labels.tolist() == written["test_batch"][b"labels"]


def test_cifar_channels_are_channel_major(tmp_path):
    write_cifar(tmp_path)
    pixels = np.zeros((3, 3072), np.uint8)
    pixels[:, 1024:2048] = 255  # green plane only
    batch = {b"data": pixels, b"labels": [0, 1, 2]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    images = load_dataset(f"cifar10:{tmp_path}", "test").images
    raw = unnormalise_cifar(images).reshape(3, 3, 32, 32)
    assert (raw[:, 1] == 255).all() and (raw[:, 0] == 0).all() and (raw[:, 2] == 0).all()


def test_cifar_legacy_numpy_core_pickles_load(tmp_path):
    # The official batches (numpy 1 era) name numpy.core.multiarray, not numpy._core.
    write_cifar(tmp_path)
    blob = pickle.dumps(cifar_batch(3, seed=9), protocol=3)
    legacy = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert legacy != blob
    (tmp_path / "test_batch").write_bytes(legacy)
    assert len(load_dataset(f"cifar10:{tmp_path}", "test")) == 3


class RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_naming_other_globals_is_refused(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "code-ran"
    hostile = {b"data": RunsAShellCommand(marker), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(hostile))
    with pytest.raises(DataError, match=r"test_batch.*system is not allowed"):
        load_dataset(f"cifar10:{tmp_path}", "test")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(2, 3000\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"float32.*uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels span 0..10"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"\(1,\) labels for 2"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"expected a dict with b'data', b'labels'"),
        ([1, 2, 3], r"expected a dict.*list"),
    ],
    ids=["shape", "dtype", "label-range", "label-count", "missing-key", "not-a-dict"],
)
def test_cifar_malformed_batches_are_refused(tmp_path, batch, message):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=rf"test_batch.*{message}"):
        load_dataset(f"cifar10:{tmp_path}", "test")


def test_cifar_missing_and_corrupt_files_are_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"not found: .*data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}", "train")
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"cannot unpickle .*test_batch"):
        load_dataset(f"cifar10:{tmp_path}", "test")


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "split", "message"),
    [
        ("imagenet", "test", r"unknown dataset 'imagenet'"),
        ("digits", "val", r"unknown split 'val'"),
        ("digits:/tmp", "test", r"takes no DIR"),
        ("mnist", "test", r"'mnist:DIR'"),
        ("cifar10:/no/such/folder", "test", r"folder not found: /no/such/folder"),
    ],
)
def test_bad_specs_and_splits_are_refused(spec, split, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec, split)


# --------------------------------------------------------------------------- Dataset, batches


def numbered(count: int) -> Dataset:
    """Item i has every pixel equal to i, so batches can be traced back to items."""
    images = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(-1, 1, 2, 2)
    return Dataset("numbered", images.contiguous(), torch.arange(count) % 10, classes=10)


def item_ids(batch_list) -> list[int]:
    return [int(v) for images, _ in batch_list for v in images[:, 0, 0, 0]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_item_once(shuffle):
    data = numbered(23)
    out = list(batches(data, batch_size=5, shuffle=shuffle, seed=3))
    assert [len(labels) for _, labels in out] == [5, 5, 5, 5, 3]
    assert sorted(item_ids(out)) == list(range(23))
    for images, labels in out:  # images and labels stay paired
        assert labels.tolist() == [int(v) % 10 for v in images[:, 0, 0, 0]]
    if not shuffle:
        assert item_ids(out) == list(range(23))


def test_batches_shuffle_depends_only_on_the_seed():
    data = numbered(50)
    first = item_ids(batches(data, 8, shuffle=True, seed=7))
    torch.manual_seed(123)  # the global RNG must not matter
    assert item_ids(batches(data, 8, shuffle=True, seed=7)) == first
    assert item_ids(batches(data, 8, shuffle=True, seed=8)) != first
    assert first != list(range(50))


def test_batches_refuse_a_zero_batch_size():
    with pytest.raises(DataError, match="batch size must be at least 1, got 0"):
        batches(numbered(3), 0, shuffle=False)  # refused before iterating


def test_subset_takes_the_first_items_and_checks_the_count():
    small = numbered(10).subset(4)
    assert len(small) == 4 and small.labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match="subset of 11 items; it has 10"):
        numbered(10).subset(11)


def test_dataset_checks_labels():
    images = torch.zeros(2, 1, 4, 4)
    with pytest.raises(DataError, match="int64"):
        Dataset("bad", images, torch.zeros(2, dtype=torch.int32), classes=10)
    with pytest.raises(DataError, match=r"labels span 0..10; expected 0..9"):
        Dataset("bad", images, torch.tensor([0, 10]), classes=10)
