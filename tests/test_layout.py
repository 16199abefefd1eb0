"""Width-major feature maps (geometry/layout.py): the layout, the transposed conv a
worker and the master run, and pools that keep the layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cocoi_mpi.geometry.conv import conv_spec, master_conv
from cocoi_mpi.geometry.layout import (
    WidthMajorNorm,
    WidthMajorPool,
    column_rows,
    empty_width_major,
    install_layout,
    is_width_major,
    transposed_conv,
    transposed_weight,
    width_major,
)


def test_width_major_is_a_copy_only_when_needed_and_keeps_values():
    x = torch.randn(1, 3, 4, 5)
    wide = width_major(x)
    assert is_width_major(wide) and not is_width_major(x)
    assert torch.equal(wide, x)
    assert width_major(wide) is wide
    assert wide.stride() == (60, 1, 3, 12)


def test_column_rows_are_the_columns_in_order():
    x = width_major(torch.randn(1, 3, 4, 5))
    rows = column_rows(x)
    assert rows.shape == (5, 12) and rows.data_ptr() == x.data_ptr()
    for w in range(5):
        assert torch.equal(rows[w].view(4, 3), x[0, :, :, w].T)
    with pytest.raises(ValueError, match="width-major"):
        column_rows(torch.randn(1, 3, 4, 5))


def test_empty_width_major_has_the_logical_shape():
    out = empty_width_major(3, 4, 5, torch.float64)
    assert out.shape == (1, 3, 4, 5) and out.dtype == torch.float64 and is_width_major(out)


def test_elementwise_layers_keep_the_layout():
    x = width_major(torch.randn(1, 3, 4, 5))
    assert is_width_major(F.relu(x))
    assert is_width_major(x + x)
    y = x.clone()
    assert is_width_major(y) and is_width_major(F.relu_(y))


@pytest.mark.parametrize(
    "kernel,stride,dilation,pad_h,pad_w,groups",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), 1),
        ((3, 5), (2, 1), (1, 2), (0, 0), (2, 2), 1),
        ((4, 4), (1, 1), (1, 1), (1, 2), (2, 1), 1),  # asymmetric ("same", even kernel)
        ((1, 1), (2, 2), (1, 1), (0, 0), (0, 0), 2),
        ((7, 3), (2, 2), (1, 1), (3, 3), (0, 1), 1),
    ],
)
def test_transposed_conv_is_conv2d(kernel, stride, dilation, pad_h, pad_w, groups):
    gen = torch.Generator().manual_seed(sum(kernel))
    x = torch.randn(2, 4, 11, 13, generator=gen)
    weight = torch.randn(6, 4 // groups, *kernel, generator=gen)
    bias = torch.randn(6, generator=gen)
    want = F.conv2d(F.pad(x, (*pad_w, *pad_h)), weight, bias, stride, 0, dilation, groups)
    stored = x.permute(0, 3, 2, 1).contiguous()
    got = transposed_conv(
        stored, transposed_weight(weight), bias, stride, dilation, groups, pad_h, pad_w
    )
    assert got.shape == (2, want.shape[3], want.shape[2], 6)
    torch.testing.assert_close(got.permute(0, 3, 2, 1), want, rtol=1e-4, atol=1e-4)


def test_master_conv_gives_the_layer_width_major():
    conv = nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2))
    x = torch.randn(1, 3, 9, 17)
    with torch.no_grad():
        got = master_conv(conv_spec(0, "c", conv), x)
        want = conv(x)
    assert is_width_major(got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1),  # ResNet's stem
        nn.MaxPool2d((2, 3), stride=(2, 1)),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.MaxPool2d(3, stride=1, dilation=2, padding=1),
    ],
)
def test_width_major_pool_is_the_pool_bit_for_bit(pool):
    x = torch.randn(1, 5, 15, 13)
    wrapped = WidthMajorPool(pool)
    got = wrapped(width_major(x))
    want = pool(x)
    assert torch.equal(got, want)
    assert is_width_major(got)
    assert torch.equal(wrapped(x), want)  # another layout goes to the pool unchanged


def test_width_major_norm_is_the_norm_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    norm = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        for t in (norm.running_mean, norm.weight, norm.bias):
            t.copy_(torch.randn(5, generator=gen))
        norm.running_var.copy_(torch.rand(5, generator=gen) + 0.5)
        x = torch.randn(1, 5, 9, 7, generator=gen)
        wrapped = WidthMajorNorm(norm)
        got = wrapped(width_major(x))
        assert torch.equal(got, norm(x)) and is_width_major(got)
        assert torch.equal(wrapped(x), norm(x))


def test_install_layout_wraps_pools_and_norms_and_changes_no_output():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.MaxPool2d(2)),
        nn.Flatten(),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        assert install_layout(model) == 3
        assert isinstance(model[1], WidthMajorNorm) and isinstance(model[3], WidthMajorPool)
        assert isinstance(model[4][1], WidthMajorPool)
        assert torch.equal(model(x), want)
        torch.testing.assert_close(model(width_major(x)), want)
