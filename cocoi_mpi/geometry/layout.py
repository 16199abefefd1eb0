"""Width-major feature maps: the memory layout the master keeps activations in.

A coded conv is cut along the width, so the master's work is moving column windows:
each piece's input columns into a send buffer, each piece's output columns into the
layer's output. In torch's usual layout (N, C, H, W) a window of w columns is C*H
rows of w floats, a few bytes each for the narrow layers; the copies then cost 2-3x
what their bytes need (docs/master.md). Here an image's memory is ordered
(W, H, C): a window of columns is one contiguous block, copied at memory speed, and
a reply lands in its place with one copy.

The tensors stay ordinary torch tensors of logical shape (1, C, H, W), with strides
(W*H*C, 1, C, H*C), so the model's own code runs on them unchanged: element-wise
layers keep the layout, and torch computes everything else correctly in any layout.
Transposing H and W turns this layout into torch's ``channels_last`` of the
transposed map, which its convs and pools run natively: that is how a worker
convolves a piece, how the master runs a conv it keeps, and how ``WidthMajorPool``
pools without leaving the layout (``channels_last`` max pooling measured 15x faster
than the (N, C, H, W) one on one thread here, 1.4 ms against 21 ms for VGG16's first
pool). Pure torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def is_width_major(x: torch.Tensor) -> bool:
    """Is ``x`` one (1, C, H, W) image stored (W, H, C), with no gaps?"""
    return x.dim() == 4 and x.shape[0] == 1 and x.permute(0, 3, 2, 1).is_contiguous()


def empty_width_major(channels: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised (1, C, H, W) tensor stored (W, H, C)."""
    return torch.empty((1, width, height, channels), dtype=dtype).permute(0, 3, 2, 1)


def width_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (1, C, H, W) stored (W, H, C): itself when it already is, else a copy."""
    if is_width_major(x):
        return x
    return x.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)


def column_rows(x: torch.Tensor) -> torch.Tensor:
    """A width-major image as a (W, H*C) matrix, one row per column (same memory)."""
    if not is_width_major(x):
        raise ValueError(f"expected a width-major (1, C, H, W) tensor, got strides {x.stride()}")
    return x.permute(0, 3, 2, 1).reshape(x.shape[3], -1)


def as_numpy(t: torch.Tensor) -> np.ndarray | None:
    """``t``'s memory seen by numpy (no copy), or None where numpy cannot see it
    (autograd, bfloat16, another device). Why: the windows of narrow layers are small,
    and a numpy slice and copy cost about a microsecond where the same torch calls cost
    several; on ResNet18's 7- and 14-wide layers those fixed costs are most of a
    round's copying."""
    if t.requires_grad:
        return None
    try:
        return t.numpy()
    except (RuntimeError, TypeError):
        return None


def copy_window(dst, src, start: int, stop: int, lo: int) -> None:
    """dst[start:stop] = src[lo:lo + stop - start], for numpy arrays or torch tensors."""
    if stop <= start:
        return
    if isinstance(dst, np.ndarray):
        np.copyto(dst[start:stop], src[lo : lo + stop - start])
    else:
        dst[start:stop].copy_(src[lo : lo + stop - start])


def zero_rows(dst, start: int, stop: int) -> None:
    """dst[start:stop] = 0, for numpy arrays or torch tensors."""
    if stop <= start:
        return
    if isinstance(dst, np.ndarray):
        dst[start:stop] = 0
    else:
        dst[start:stop].zero_()


def transposed(x: torch.Tensor) -> torch.Tensor:
    """Pieces stored (P, w, H, C) as the logical (P, C, w, H) tensor they are in
    ``channels_last``: the transposed maps torch's convs and pools run natively."""
    return x.permute(0, 3, 1, 2)


def transposed_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    pad_h: tuple[int, int],
    pad_w: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """conv2d of maps stored (P, W, H, C), returning (P, W_out, H_out, C_out) storage.

    ``weight`` is the layer's (C_out, C_in/g, K_h, K_w) weight with its two spatial
    dims swapped (``transposed_weight``); strides and dilations are the layer's own
    (height, width). The height padding (top, bottom) and width padding (left, right)
    are added here: through the conv itself where both sides are equal, else by F.pad."""
    t = transposed(x)
    pad_h_conv = pad_h[0] if pad_h[0] == pad_h[1] else 0
    pad_w_conv = pad_w[0] if pad_w[0] == pad_w[1] else 0
    if pad_h_conv == 0 and any(pad_h) or pad_w_conv == 0 and any(pad_w):
        extra_h = (0, 0) if pad_h_conv else pad_h
        extra_w = (0, 0) if pad_w_conv else pad_w
        t = F.pad(t, (*extra_h, *extra_w)).contiguous(memory_format=torch.channels_last)
    out = F.conv2d(
        t,
        weight,
        bias,
        (stride[1], stride[0]),
        (pad_w_conv, pad_h_conv),
        (dilation[1], dilation[0]),
        groups,
    )
    return out.permute(0, 2, 3, 1)


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight with its spatial dims swapped, stored ``channels_last`` (the
    layout torch's channels_last convs read fastest)."""
    return weight.transpose(2, 3).contiguous(memory_format=torch.channels_last)


class WidthMajorPool(nn.Module):
    """A MaxPool2d that keeps a width-major input width-major.

    Max pooling is exact in any layout, so the result is the pool's own, bit for bit;
    only where it runs changes: on the transposed map in ``channels_last``, which
    torch pools natively, where (N, C, H, W) pooling of a width-major input would
    first copy it back. Other inputs go to the pool as they are."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_width_major(x) or self.pool.return_indices:
            return self.pool(x)
        p = self.pool
        out = F.max_pool2d(
            x.transpose(2, 3),
            _swap(p.kernel_size),
            _swap(p.stride if p.stride is not None else p.kernel_size),
            _swap(p.padding),
            _swap(p.dilation),
            ceil_mode=p.ceil_mode,
        )
        return out.transpose(2, 3)


class WidthMajorNorm(nn.Module):
    """A BatchNorm2d that keeps a width-major input width-major.

    Batch norm is per channel, so it commutes with swapping H and W: it runs on the
    transposed map in ``channels_last`` (1.2 ms for a 64x112x112 map on one thread
    here, bit for bit the (N, C, H, W) result), where torch would otherwise copy a
    width-major input back to (N, C, H, W) (4 ms) and hand the next coded round an
    input it must transpose again."""

    def __init__(self, norm: nn.BatchNorm2d):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_width_major(x):
            return self.norm(x)
        return self.norm(x.transpose(2, 3)).transpose(2, 3)


def _swap(value) -> tuple[int, int]:
    """A pool parameter (int or (h, w)) as (w, h)."""
    h, w = (value, value) if isinstance(value, int) else value
    return w, h


WRAPPERS = {nn.MaxPool2d: WidthMajorPool, nn.BatchNorm2d: WidthMajorNorm}


def install_layout(model: nn.Module) -> int:
    """Wrap every MaxPool2d and BatchNorm2d of ``model`` (in place) so that they keep
    width-major maps width-major; returns how many. Their state_dict keys gain one
    level (``.pool.`` / ``.norm.``), as the conv proxies' gain ``.conv.``."""
    found = [(name, m) for name, m in model.named_modules() if type(m) in WRAPPERS and name]
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, WRAPPERS[type(module)](module))
    return len(found)
