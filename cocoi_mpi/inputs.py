"""Inference inputs: a user's .npy/.pt tensor file, or seeded images. Pure torch/numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class InputError(ValueError):
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
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise InputError(f"input {path}: expected a .npy or .pt file")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, torch.Tensor):
        raise InputError(f"input {path} holds a {type(data).__name__}, not a tensor")
    return as_batch(data, str(path))


def as_batch(data: torch.Tensor, what: str) -> torch.Tensor:
    """Check dtype, values and rank; return a float32 (N, C, H, W) batch."""
    if not data.is_floating_point():
        raise InputError(f"input {what} has dtype {data.dtype}; expected a floating-point tensor")
    if data.dim() == 3:
        data = data.unsqueeze(0)
    if data.dim() != 4:
        raise InputError(f"input {what} has shape {tuple(data.shape)}; expected C×H×W or N×C×H×W")
    data = data.to(torch.float32).contiguous()
    if not torch.isfinite(data).all():  # after the cast: float64 beyond float32 is Inf
        raise InputError(f"input {what} contains NaN or Inf values (as float32)")
    return data


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
