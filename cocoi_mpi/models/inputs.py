"""Inference inputs: a user's .npy/.pt tensor file, or seeded images. Pure torch/numpy."""

from __future__ import annotations

import errno
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


class InputError(UserError, ValueError):
    """The input file is missing, unreadable, or not an image batch this model takes."""


def load_input(path: str | Path) -> torch.Tensor:
    """Read C×H×W, 1×C×H×W or N×C×H×W from .npy or .pt; N images make N requests."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        if path.suffix == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix in (".pt", ".pth"):
            data = torch_load(path)
        else:
            raise InputError(f"input {path}: expected a .npy or .pt file")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input {path}: {read_error(exc)}") from None
    if not isinstance(data, torch.Tensor):
        raise InputError(f"input {path} holds a {type(data).__name__}, not a tensor")
    return as_batch(data, str(path))


def torch_load(path: Path) -> object:
    """torch.load of tensors only; its warnings about a foreign file's pickle protocol
    would print on stderr beside the one-line error that follows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def read_error(exc: BaseException) -> str:
    """One line on why np.load/torch.load failed; torch's own text spans many lines of
    advice (weights_only=False, safe globals) that would be wrong to follow here."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+\.\w+) was not", text)
    if found:
        return f"it holds a pickled {found.group(1)} object; only tensors (and dicts of them) load"
    foreign = isinstance(exc, KeyError) or type(exc).__name__ == "UnpicklingError"
    if foreign or "Weights only load failed" in text:
        return "not a PyTorch tensor file (corrupt, or not made by torch.save)"
    bad_seek = isinstance(exc, OSError) and exc.errno == errno.EINVAL  # torch, big files
    if "zip archive" in text or bad_seek:
        return "truncated or corrupt PyTorch file (its zip archive does not read)"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def as_batch(data: torch.Tensor, what: str) -> torch.Tensor:
    """Check dtype, values and rank; return a float32 (N, C, H, W) batch.

    Any floating dtype (float16, bfloat16, float64) is cast to the models' float32;
    integer, bool and complex data are refused: their scale (0..255? 0/1?) is a guess.
    """
    if not data.is_floating_point():
        raise InputError(
            f"input {what} has dtype {str(data.dtype).removeprefix('torch.')}; expected a "
            "floating-point tensor (cast to float32); integer, bool and complex inputs are "
            "refused: convert and scale them first (e.g. uint8 images / 255)"
        )
    if data.dim() == 3:
        data = data.unsqueeze(0)
    if data.dim() != 4:
        raise InputError(f"input {what} has shape {tuple(data.shape)}; expected C×H×W or N×C×H×W")
    if data.numel() == 0:
        raise InputError(f"input {what} has shape {tuple(data.shape)}: it holds no image")
    data = data.to(torch.float32).contiguous()
    check_finite(data, what)  # after the cast: float64 beyond float32 is Inf
    return data


def check_finite(data: torch.Tensor, what: str) -> None:
    """NaN/Inf would flow through the coded layers and the check alike: refuse them."""
    nan = int(torch.isnan(data).sum())
    inf = int(torch.isinf(data).sum())
    if nan or inf:
        raise InputError(
            f"input {what} contains {nan + inf} NaN or Inf values of {data.numel()} "
            f"({nan} NaN, {inf} Inf, as float32); every value must be finite"
        )


def check_shape(batch: torch.Tensor, expected: tuple[int, ...] | None, model: str) -> None:
    """A registry model's input size is fixed: say so before anything is distributed."""
    if expected is not None and tuple(batch.shape[1:]) != tuple(expected):
        raise InputError(
            f"input shape {tuple(batch.shape[1:])} does not match {model}'s expected "
            f"{tuple(expected)} (C×H×W)"
        )


def seeded_inputs(shape: tuple[int, ...], seed: int, count: int) -> torch.Tensor:
    """``count`` standard-normal images, the same for the same seed on any machine."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((count, *shape), generator=gen)
