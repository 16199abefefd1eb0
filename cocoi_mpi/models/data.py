"""Local image datasets for training and evaluating the base CNNs; nothing is downloaded.

A dataset *spec* is ``"digits"`` (scikit-learn's 1,797 8x8 digits, shipped inside the
sklearn package), ``"mnist:DIR"`` (the four standard IDX files in DIR, optionally .gz) or
``"cifar10:DIR"`` (the extracted ``cifar-10-batches-py`` folder). Every dataset comes out
as normalised float32 (N, C, 32, 32) images with int64 labels, the input size of LeNet-5
(digits, MNIST) and of the CIFAR-10 models.

Split ``"all"`` is the train items followed by the test items.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataError",
    "Dataset",
    "batches",
    "fit_to_input",
    "load_dataset",
]

DATASETS = ("digits", "mnist", "cifar10")
SPLITS = ("train", "test", "all")
IMAGE_SIZE = 32


class DataError(UserError, ValueError):
    """A dataset spec, split or file is unknown, missing, or not in the expected format."""


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous: compare by identity
class Dataset:
    """Normalised images with their labels; the shapes are checked once, here."""

    name: str
    images: torch.Tensor  # float32 (N, C, 32, 32), normalised
    labels: torch.Tensor  # int64 (N,)
    classes: int

    def __post_init__(self) -> None:
        _check_dataset(self)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, count: int) -> Dataset:
        """The first ``count`` items: a quick, deterministic smaller dataset."""
        if not 1 <= count <= len(self):
            raise DataError(f"dataset {self.name}: subset of {count} items; it has {len(self)}")
        return Dataset(
            f"{self.name}[:{count}]", self.images[:count], self.labels[:count], self.classes
        )


def _check_dataset(data: Dataset) -> None:
    images, labels = data.images, data.labels
    if images.dtype != torch.float32 or images.dim() != 4:
        raise DataError(
            f"dataset {data.name}: images are {images.dtype} {tuple(images.shape)}; "
            "expected float32 (N, C, H, W)"
        )
    if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        raise DataError(
            f"dataset {data.name}: labels are {labels.dtype} {tuple(labels.shape)}; "
            f"expected int64 ({images.shape[0]},)"
        )
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < data.classes:
        raise DataError(
            f"dataset {data.name}: labels span {int(labels.min())}..{int(labels.max())}; "
            f"expected 0..{data.classes - 1}"
        )


def fit_to_input(data: Dataset, shape: tuple[int, ...]) -> Dataset:
    """The dataset as a model with input ``shape`` (C, H, W) sees it.

    The shipped data is 32x32 (digits, MNIST, CIFAR-10); VGG16 and ResNet18 take
    3x224x224. Images are resized bilinearly and a single channel is repeated, so a
    VGG16 sees the digits as large grey images: real images, not a benchmark the
    model was trained for (docs/fig8.md says what accuracy means then). A dataset
    that already fits is returned as it is.
    """
    channels, height, width = (int(d) for d in shape)
    have = tuple(data.images.shape[1:])
    if have == (channels, height, width):
        return data
    if have[0] not in (1, channels):
        raise DataError(f"dataset {data.name} has {have[0]} channels; the model takes {channels}")
    images = F.interpolate(data.images, size=(height, width), mode="bilinear", align_corners=False)
    images = images.expand(-1, channels, -1, -1).contiguous()
    name = f"{data.name}@{channels}x{height}x{width}"
    return Dataset(name, images, data.labels, data.classes)


# --------------------------------------------------------------------------- entry points


def load_dataset(spec: str, split: str = "test") -> Dataset:
    """Load ``spec`` ("digits", "mnist:DIR" or "cifar10:DIR") for ``split``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    kind, _, folder = spec.partition(":")
    if kind not in DATASETS:
        raise DataError(
            f"unknown dataset {spec!r}; expected 'digits', 'mnist:DIR' or 'cifar10:DIR'"
        )
    if kind == "digits":
        if folder:
            raise DataError(f"dataset {spec!r}: digits ships with scikit-learn and takes no DIR")
        return _load_digits(split)
    if not folder:
        raise DataError(f"dataset {spec!r}: give the folder holding the files, as '{kind}:DIR'")
    directory = Path(folder)
    if not directory.is_dir():
        raise DataError(f"dataset {spec!r}: folder not found: {directory}")
    loader = _load_mnist if kind == "mnist" else _load_cifar10
    return loader(directory, split)


def batches(
    data: Dataset, batch_size: int, shuffle: bool, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches covering every item once; the last may be smaller.

    Arguments are checked at the call, not at the first ``next()``. Shuffling draws from
    a private generator, so the order depends on ``seed`` only and the caller's global RNG
    state is left alone.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if shuffle:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(len(data))
    return _batches_in_order(data, order, batch_size)


def _batches_in_order(
    data: Dataset, order: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch_size):
        index = order[start : start + batch_size]
        yield data.images[index], data.labels[index]


def _select(name: str, split: str, parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Dataset:
    """Pick the train/test parts for ``split`` ("all" = train then test)."""
    names = ("train", "test") if split == "all" else (split,)
    images = torch.cat([parts[part][0] for part in names])
    labels = torch.cat([parts[part][1] for part in names])
    return Dataset(f"{name}/{split}", images, labels, classes=10)


def _normalise(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return ((images - mean_t) / std_t).contiguous()


# --------------------------------------------------------------------------- digits

# Mean and std of all 1,797 digits after /16 and the bilinear upsampling to 28x28 (before
# the padding, as for MNIST's 0.1307/0.3081), computed once in float64 with:
#   x = F.interpolate(torch.from_numpy(load_digits().images)[:, None] / 16, size=(28, 28),
#                     mode="bilinear", align_corners=False); x.mean(), x.std()
# -> 0.30526, 0.32469. tests/test_data.py recomputes them.
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3247
# The train/test split must not depend on any run seed, nor on the torch version:
# numpy's legacy RandomState stream is frozen, so this permutation is the same everywhere.
DIGITS_SPLIT_SEED = 20240601
DIGITS_TRAIN = 1347  # of 1,797; the other 450 are the test split


def digits_upsampled() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits in sklearn's order: float32 (1797, 1, 28, 28) images in [0, 1] (8x8 /16,
    bilinear to 28x28) and int64 labels."""
    from sklearn.datasets import load_digits  # local: sklearn takes ~1.5 s to import

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1) / 16
    images = F.interpolate(pixels, size=(28, 28), mode="bilinear", align_corners=False)
    return images, torch.from_numpy(digits.target).to(torch.int64)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) index arrays into sklearn's digits order."""
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(1797)
    return order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]


def _load_digits(split: str) -> Dataset:
    images, labels = digits_upsampled()
    images = _normalise(_pad_to_32(images), (DIGITS_MEAN,), (DIGITS_STD,))
    train, test = (torch.from_numpy(index) for index in digits_split())
    parts = {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
    return _select("digits", split, parts)


def _pad_to_32(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad 28x28 images by 2 px on every side, the MNIST layout LeNet-5 expects."""
    return F.pad(images, (2, 2, 2, 2))


# --------------------------------------------------------------------------- MNIST (IDX)

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _load_mnist(directory: Path, split: str) -> Dataset:
    names = ("train", "test") if split == "all" else (split,)
    parts = {name: _mnist_part(directory, *MNIST_FILES[name]) for name in names}
    return _select("mnist", split, parts)


def _mnist_part(
    directory: Path, image_name: str, label_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    image_path, label_path = _idx_path(directory, image_name), _idx_path(directory, label_name)
    pixels = _read_idx(image_path, IDX_IMAGES_MAGIC, dims=3)
    labels = _read_idx(label_path, IDX_LABELS_MAGIC, dims=1)
    if pixels.shape[1:] != (28, 28):
        raise DataError(f"MNIST file {image_path}: images are {pixels.shape[1:]}; expected 28x28")
    if len(pixels) != len(labels):
        raise DataError(
            f"MNIST files {image_path.name} and {label_path.name} disagree: "
            f"{len(pixels)} images but {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST file {label_path}: label {int(labels.max())} is not a digit 0-9")
    images = torch.from_numpy(pixels.astype(np.float32) / 255).unsqueeze(1)
    images = _normalise(_pad_to_32(images), (MNIST_MEAN,), (MNIST_STD,))
    return images, torch.from_numpy(labels.astype(np.int64))


def _idx_path(directory: Path, name: str) -> Path:
    """The raw file if present, else its .gz."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file not found: {directory / name} (nor {name}.gz)")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking magic number, dimensions and length."""
    raw = _read_bytes(path)
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise DataError(f"MNIST file {path}: {len(raw)} bytes is shorter than its header")
    found, *shape = struct.unpack(f">{1 + dims}I", raw[:header])
    if found != magic:
        raise DataError(f"MNIST file {path}: magic number {found}; expected {magic}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"MNIST file {path}: {len(raw)} bytes; a {'x'.join(map(str, shape))} file "
            f"needs {expected} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------- CIFAR-10

# Per-channel mean and std of the 50,000 CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)

# The only globals a CIFAR-10 batch pickle needs: numpy's array reconstruction, under its
# numpy 1 (numpy.core) and numpy 2 (numpy._core) names; _frombuffer is what pickle
# protocol 5 uses for arrays. All of them only build arrays from bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy", "ndarray"): (None, "ndarray"),
    ("numpy", "dtype"): (None, "dtype"),
}


def _numpy_global(submodule: str | None, name: str) -> object:
    """Resolve a numpy internal without touching the deprecated numpy.core alias."""
    if submodule is None:
        return getattr(np, name)
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {submodule}.{name} to rebuild CIFAR-10 arrays")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-building globals.

    A pickle can name any importable callable (os.system, ...) and unpickling calls it, so
    a tampered file on disk could run code; CIFAR-10 batches need only numpy arrays,
    lists, ints and bytes, so every other global is refused.
    """

    def find_class(self, module: str, name: str) -> object:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return _numpy_global(*target)


def _load_cifar10(directory: Path, split: str) -> Dataset:
    files = {"train": CIFAR10_TRAIN, "test": CIFAR10_TEST}
    names = ("train", "test") if split == "all" else (split,)
    parts = {name: _cifar_files(directory, files[name]) for name in names}
    return _select("cifar10", split, parts)


def _cifar_files(directory: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    loaded = [_cifar_batch(directory / name) for name in names]
    pixels = np.concatenate([pixels for pixels, _ in loaded])
    labels = np.concatenate([labels for _, labels in loaded])
    images = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    return _normalise(images, CIFAR10_MEAN, CIFAR10_STD), torch.from_numpy(labels)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (N, 3072) uint8 pixels and (N,) int64 labels, validated."""
    batch = _unpickle_batch(path)
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"CIFAR-10 file {path}: expected a dict with b'data', b'labels'; {keys}")
    pixels, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise DataError(f"CIFAR-10 file {path}: b'data' is {_describe(pixels)}; expected uint8")
    if pixels.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR-10 file {path}: b'data' has shape {pixels.shape}; expected (N, 3072)"
        )
    return pixels, _cifar_labels(path, labels, len(pixels))


def _cifar_labels(path: Path, labels: object, count: int) -> np.ndarray:
    try:
        values = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"CIFAR-10 file {path}: b'labels' are not integers ({exc})") from exc
    if values.shape != (count,):
        raise DataError(
            f"CIFAR-10 file {path}: {values.shape} labels for {count} images; expected ({count},)"
        )
    if count and not 0 <= values.min() <= values.max() <= 9:
        raise DataError(
            f"CIFAR-10 file {path}: labels span {values.min()}..{values.max()}; expected 0..9"
        )
    return values


def _unpickle_batch(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file not found: {path}")
    try:
        with path.open("rb") as handle:
            # encoding="bytes": the official batches were written by Python 2.
            return _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # pickle raises many types for corrupt or hostile files
        raise DataError(f"cannot unpickle CIFAR-10 file {path}: {exc}") from exc


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
