"""Inference inputs: .npy/.pt image files become finite float32 (N, C, H, W) batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoi_mpi.models.inputs import InputError, as_batch, check_shape, load_input, seeded_inputs

SHAPES = {"chw": (3, 5, 7), "1chw": (1, 3, 5, 7), "nchw": (4, 3, 5, 7)}


def save(tmp_path: Path, data: np.ndarray, suffix: str, name: str = "img") -> Path:
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        torch.save(torch.from_numpy(data), path)
    return path


def images(shape, dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".pth"])
@pytest.mark.parametrize("layout", list(SHAPES))
def test_image_files_load_as_float32_nchw(tmp_path, suffix, layout):
    data = images(SHAPES[layout])
    batch = load_input(save(tmp_path, data, suffix))
    expected = data if data.ndim == 4 else data[None]
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert tuple(batch.shape) == expected.shape
    np.testing.assert_array_equal(batch.numpy(), expected)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_converted(tmp_path, suffix, dtype):
    data = images((2, 3, 4, 4), dtype)
    batch = load_input(save(tmp_path, data, suffix))
    assert batch.dtype == torch.float32
    np.testing.assert_allclose(batch.numpy(), data.astype(np.float32), rtol=0, atol=0)


def test_path_may_be_a_string(tmp_path):
    path = save(tmp_path, images((1, 2, 3)), ".npy")
    assert load_input(str(path)).shape == (1, 1, 2, 3)


def test_non_contiguous_tensor_file_loads(tmp_path):
    data = torch.randn(3, 7, 5).transpose(1, 2)
    path = tmp_path / "t.pt"
    torch.save(data, path)
    batch = load_input(path)
    assert batch.is_contiguous() and torch.equal(batch[0], data)


# --------------------------------------------------------------------------- bad contents


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32, np.bool_])
def test_non_float_dtype_is_rejected(tmp_path, suffix, dtype):
    path = save(tmp_path, np.ones((3, 4, 4), dtype=dtype), suffix)
    with pytest.raises(InputError, match="floating-point"):
        load_input(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_is_rejected(tmp_path, suffix, bad):
    data = images((2, 3, 4, 4))
    data[1, 2, 3, 0] = bad
    with pytest.raises(InputError, match="NaN or Inf"):
        load_input(save(tmp_path, data, suffix))


def test_float64_values_overflowing_float32_are_rejected():
    data = torch.zeros(1, 2, 2, dtype=torch.float64)
    data[0, 0, 0] = 1e39
    with pytest.raises(InputError, match="NaN or Inf"):
        as_batch(data, "big")


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("shape", [(7,), (4, 4), (1, 1, 3, 4, 4), ()])
def test_wrong_rank_is_rejected(tmp_path, suffix, shape):
    path = save(tmp_path, images(shape), suffix)
    with pytest.raises(InputError, match="expected C×H×W or N×C×H×W"):
        load_input(path)


def test_pt_file_holding_a_dict_is_rejected(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"x": torch.zeros(3, 4, 4)}, path)
    with pytest.raises(InputError, match="not a tensor"):
        load_input(path)


def test_pickled_object_array_is_rejected(tmp_path):
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read input"):
        load_input(path)


# --------------------------------------------------------------------------- bad files


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_input(tmp_path / "missing.npy")


def test_directory_is_rejected(tmp_path):
    folder = tmp_path / "dir.npy"
    folder.mkdir()
    with pytest.raises(InputError, match="not found"):
        load_input(folder)


@pytest.mark.parametrize("suffix", [".png", ".npz", ".txt", ""])
def test_wrong_suffix_is_rejected(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    np.save(tmp_path / "real.npy", images((3, 4, 4)))
    path.write_bytes((tmp_path / "real.npy").read_bytes())
    with pytest.raises(InputError, match="expected a .npy or .pt file"):
        load_input(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupt_file_is_rejected(tmp_path, suffix, seed):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(np.random.default_rng(seed).bytes(512 + 97 * seed))
    with pytest.raises(InputError, match="cannot read input"):
        load_input(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_truncated_file_is_rejected(tmp_path, suffix):
    path = save(tmp_path, images((3, 16, 16)), suffix)
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(InputError, match="cannot read input"):
        load_input(path)


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="cannot read input"):
        load_input(path)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------- as_batch / shape


def test_as_batch_adds_the_batch_dimension():
    data = torch.randn(3, 4, 5)
    batch = as_batch(data, "x")
    assert batch.shape == (1, 3, 4, 5) and torch.equal(batch[0], data)


def test_as_batch_names_the_input_in_errors():
    with pytest.raises(InputError, match="my-image"):
        as_batch(torch.zeros(4, 4), "my-image")


def test_check_shape_accepts_matching_and_unknown_shapes():
    batch = torch.zeros(2, 3, 32, 32)
    check_shape(batch, (3, 32, 32), "lenet")
    check_shape(batch, [3, 32, 32], "lenet")
    check_shape(batch, None, "custom")


def test_check_shape_mismatch_names_both_shapes_and_the_model():
    with pytest.raises(InputError) as info:
        check_shape(torch.zeros(1, 1, 28, 28), (1, 32, 32), "lenet5")
    message = str(info.value)
    assert "(1, 28, 28)" in message and "(1, 32, 32)" in message and "lenet5" in message


# --------------------------------------------------------------------------- seeded inputs


def test_seeded_inputs_are_deterministic_per_seed():
    a = seeded_inputs((3, 8, 8), seed=7, count=3)
    b = seeded_inputs((3, 8, 8), seed=7, count=3)
    c = seeded_inputs((3, 8, 8), seed=8, count=3)
    assert a.shape == (3, 3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each request gets its own image


def test_seeded_inputs_ignore_the_global_rng():
    torch.manual_seed(0)
    a = seeded_inputs((1, 4, 4), seed=3, count=2)
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(a, seeded_inputs((1, 4, 4), seed=3, count=2))


def test_seeded_inputs_first_images_do_not_depend_on_count():
    few = seeded_inputs((2, 4, 4), seed=1, count=1)
    many = seeded_inputs((2, 4, 4), seed=1, count=5)
    assert torch.equal(few[0], many[0])
