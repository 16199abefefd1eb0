"""Width-splitting geometry (eq. 1-2, footnote 2) checked against torch's conv2d.

Every property is checked on a few hundred random layer shapes: odd kernels and even ones,
strides and dilations up to 3, asymmetric padding, widths that the piece count does not
divide. The arithmetic must be exact, so everything runs in float64.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cocoi_mpi.geometry.split import (
    AxisGeom,
    SubtaskGeom,
    block_subtask,
    equal_pieces,
    overlap_columns,
    split_layer,
    tightest_pieces,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_LAYER_CASES = 300
N_CHAIN_CASES = 150
HEIGHT = 4
C_IN, C_OUT = 2, 3


def random_geom(rng: random.Random) -> AxisGeom:
    return AxisGeom(
        kernel=rng.randint(1, 7),
        stride=rng.randint(1, 3),
        dilation=rng.randint(1, 3),
        pad_before=rng.randint(0, 3),
        pad_after=rng.randint(0, 3),
    )


def random_in_width(rng: random.Random, geom: AxisGeom) -> int:
    smallest = max(1, geom.span - geom.pad_before - geom.pad_after)
    return rng.randint(smallest, smallest + 40)


def layer_cases() -> list[tuple[AxisGeom, int, int]]:
    rng = random.Random(20240601)
    cases = []
    for _ in range(N_LAYER_CASES):
        geom = random_geom(rng)
        width = random_in_width(rng, geom)
        pieces = rng.randint(1, min(12, geom.out_size(width)))
        cases.append((geom, width, pieces))
    return cases


LAYER_CASES = layer_cases()


def reference_conv(x: torch.Tensor, weight: torch.Tensor, geom: AxisGeom) -> torch.Tensor:
    """torch's own conv with this width geometry (height: kernel 3, padding 1)."""
    if geom.pad_before == geom.pad_after:
        return F.conv2d(x, weight, None, (1, geom.stride), (1, geom.pad_before), (1, geom.dilation))
    x = F.pad(x, (geom.pad_before, geom.pad_after, 0, 0))
    return F.conv2d(x, weight, None, (1, geom.stride), (1, 0), (1, geom.dilation))


def conv_no_width_pad(x: torch.Tensor, weight: torch.Tensor, geom: AxisGeom) -> torch.Tensor:
    return F.conv2d(x, weight, None, (1, geom.stride), (1, 0), (1, geom.dilation))


def layer_tensors(geom: AxisGeom, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, C_IN, HEIGHT, width, generator=gen, dtype=torch.float64)
    w = torch.randn(C_OUT, C_IN, 3, geom.kernel, generator=gen, dtype=torch.float64)
    return x, w


# --------------------------------------------------------------------------- single layer


def test_random_cases_cover_the_interesting_geometry():
    geoms = [g for g, _, _ in LAYER_CASES]
    assert {g.kernel for g in geoms} == set(range(1, 8))
    assert {g.stride for g in geoms} == {1, 2, 3}
    assert {g.dilation for g in geoms} == {1, 2, 3}
    assert any(g.pad_before != g.pad_after for g in geoms)
    assert any(geom.out_size(w) % p for geom, w, p in LAYER_CASES)
    assert any(p == 12 for _, _, p in LAYER_CASES)


def test_out_size_matches_torch_output_width():
    for i, (geom, width, _) in enumerate(LAYER_CASES):
        x, w = layer_tensors(geom, width, i)
        assert geom.out_size(width) == reference_conv(x, w, geom).shape[-1], (geom, width)


def test_each_piece_convolved_alone_equals_its_columns_of_the_full_conv():
    """Pieces cover the whole output; the last reads zeros past the padded input
    (the master adds them) and its columns past the output width are cropped."""
    for i, (geom, width, pieces) in enumerate(LAYER_CASES):
        x, w = layer_tensors(geom, width, i)
        full = reference_conv(x, w, geom)
        padded = F.pad(x, (geom.pad_before, geom.pad_after, 0, 0))
        split = split_layer(geom, width, pieces)
        extra = max(0, split.ins[-1][1] - padded.shape[-1])
        padded = F.pad(padded, (0, extra, 0, 0))
        assert split.rest_out is None and split.remainder_width == 0
        for (a_o, b_o), (a_i, b_i) in zip(split.outs, split.ins, strict=True):
            assert 0 <= a_i < b_i <= padded.shape[-1], (geom, width, pieces)
            part = conv_no_width_pad(padded[..., a_i:b_i], w, geom)
            assert part.shape[-1] == b_o - a_o, (geom, width, pieces)
            keep = min(b_o, split.width_out) - a_o  # <= 0: wholly past (layer_k avoids it)
            if keep > 0:
                torch.testing.assert_close(
                    part[..., :keep], full[..., a_o : a_o + keep], rtol=1e-12, atol=1e-12
                )


def test_pieces_are_equal_contiguous_and_cover_the_whole_width():
    for geom, width, pieces in LAYER_CASES:
        split = split_layer(geom, width, pieces)
        w_out = geom.out_size(width)
        piece = -(-w_out // pieces)
        assert split.width_out == w_out
        assert len(split.outs) == pieces
        assert split.piece_width == piece
        assert list(split.outs) == [(i * piece, (i + 1) * piece) for i in range(pieces)]
        assert split.outs[-1][1] >= w_out
        assert split.rest_out is None and split.rest_in is None
        assert split.remainder_width == 0


@pytest.mark.parametrize("width", range(1, 60))
def test_tightest_pieces_keep_the_width_and_cover(width):
    for pieces in range(1, width + 1):
        tight = tightest_pieces(width, pieces)
        piece = -(-width // pieces)
        assert tight <= pieces
        assert -(-width // tight) == piece  # the same piece width
        assert tight * piece >= width > (tight - 1) * piece  # covers, none wholly past


def test_piece_input_width_is_span_plus_stride_times_piece_width_minus_one():
    for geom, width, pieces in LAYER_CASES:
        split = split_layer(geom, width, pieces)
        expected = geom.span + (split.piece_width - 1) * geom.stride
        assert {b - a for a, b in split.ins} == {expected}, (geom, width, pieces)
        assert all(a == o[0] * geom.stride for (a, _), o in zip(split.ins, split.outs, strict=True))


def test_overlap_columns_is_what_adjacent_piece_inputs_share():
    for geom, width, pieces in LAYER_CASES:
        split = split_layer(geom, width, pieces)
        for (_, end), (start, _) in zip(split.ins, split.ins[1:], strict=False):
            assert overlap_columns(geom) == max(0, end - start), (geom, width, pieces)


@pytest.mark.parametrize(
    "width,pieces,expected",
    [
        (10, 1, ([(0, 10)], None)),
        (10, 3, ([(0, 3), (3, 6), (6, 9)], (9, 10))),
        (10, 4, ([(0, 2), (2, 4), (4, 6), (6, 8)], (8, 10))),
        (12, 4, ([(0, 3), (3, 6), (6, 9), (9, 12)], None)),
        (5, 5, ([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], None)),
    ],
)
def test_equal_pieces_examples(width, pieces, expected):
    assert equal_pieces(width, pieces) == expected


def test_span_is_dilated_kernel_extent():
    assert AxisGeom(kernel=3, dilation=2).span == 5
    assert AxisGeom(kernel=1, dilation=3).span == 1
    assert AxisGeom(kernel=7).span == 7


# --------------------------------------------------------------------------- conv blocks


def chain_in_width(layers: list[AxisGeom], rng: random.Random) -> int | None:
    width = rng.randint(8, 60)
    try:
        size = width
        for geom in layers:
            size = geom.out_size(size)
    except ValueError:
        return None
    return width


class Chain:
    """Torch tensors for a chain of width geometries: convs get weights, pools don't."""

    def __init__(self, layers: list[AxisGeom], pools: list[bool], seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.layers, self.pools = layers, pools
        self.weights = [
            None if pool else torch.randn(C_IN, C_IN, 3, g.kernel, generator=gen).double()
            for g, pool in zip(layers, pools, strict=True)
        ]
        self.gen = gen

    def layer(self, i: int, x: torch.Tensor, left: int, right: int) -> torch.Tensor:
        geom, weight = self.layers[i], self.weights[i]
        if weight is None:
            assert (left, right) == (0, 0), "a pool without padding never needs zero columns"
            return F.max_pool2d(x, (1, geom.kernel), (1, geom.stride))
        x = F.pad(x, (left, right, 1, 1))
        return F.conv2d(x, weight, None, (1, geom.stride), 0, (1, geom.dilation))

    def full(self, x: torch.Tensor) -> torch.Tensor:
        for i, geom in enumerate(self.layers):
            x = self.layer(i, x, geom.pad_before, geom.pad_after)
        return x

    def sliced(self, x: torch.Tensor, sub: SubtaskGeom) -> torch.Tensor:
        a, b = sub.inp
        assert 0 <= a <= b <= x.shape[-1]
        x = x[..., a:b]
        for i, (left, right) in enumerate(sub.pads):
            x = self.layer(i, x, left, right)
        return x


def chain_cases(max_pad_over_span: bool, count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        layers = []
        pools = []
        for _ in range(rng.randint(1, 4)):
            kernel, dilation = rng.randint(1, 5), rng.randint(1, 3)
            span = dilation * (kernel - 1) + 1
            top = 3 if max_pad_over_span else min(3, span - 1)
            layers.append(
                AxisGeom(
                    kernel, rng.randint(1, 3), dilation, rng.randint(0, top), rng.randint(0, top)
                )
            )
            pools.append(False)
        if rng.random() < 0.6:
            at = rng.randint(0, len(layers))
            kernel = rng.randint(2, 3)
            layers.insert(at, AxisGeom(kernel, rng.choice([kernel, 1])))
            pools.insert(at, True)
        if max_pad_over_span and not any(
            g.pad_before >= g.span or g.pad_after >= g.span for g in layers
        ):
            continue
        width = chain_in_width(layers, rng)
        if width is None:
            continue
        cases.append((layers, pools, width, rng.randrange(1 << 30)))
    return cases


def out_width(layers: list[AxisGeom], width: int) -> int:
    for geom in layers:
        width = geom.out_size(width)
    return width


def random_ranges(rng: random.Random, width: int, count: int) -> list[tuple[int, int]]:
    ranges = [(0, width), (0, 1), (width - 1, width)]
    for _ in range(count):
        a = rng.randrange(width)
        ranges.append((a, rng.randint(a + 1, width)))
    return ranges


def check_chain(layers, pools, width, seed) -> None:
    chain = Chain(layers, pools, seed)
    x = torch.randn(1, C_IN, HEIGHT, width, generator=chain.gen, dtype=torch.float64)
    full = chain.full(x)
    assert full.shape[-1] == out_width(layers, width)
    rng = random.Random(seed)
    for out in random_ranges(rng, full.shape[-1], 5):
        sub = block_subtask(layers, width, out)
        assert sub.out == out and len(sub.pads) == len(layers)
        got = chain.sliced(x, sub)
        assert got.shape[-1] == out[1] - out[0], (layers, width, out, sub)
        torch.testing.assert_close(got, full[..., out[0] : out[1]], rtol=1e-12, atol=1e-12)


CHAIN_CASES = chain_cases(max_pad_over_span=False, count=N_CHAIN_CASES, seed=7)


def test_block_subtask_slices_reproduce_requested_output_columns_of_the_chain():
    for layers, pools, width, seed in CHAIN_CASES:
        check_chain(layers, pools, width, seed)


def test_block_cases_include_pools_strides_and_deep_chains():
    assert any(any(pools) for _, pools, _, _ in CHAIN_CASES)
    assert any(len(layers) >= 4 for layers, _, _, _ in CHAIN_CASES)
    assert any(any(g.stride > 1 for g in layers) for layers, _, _, _ in CHAIN_CASES)


def test_block_subtask_of_a_single_layer_matches_input_range():
    geom = AxisGeom(3, 2, 1, 1, 1)
    sub = block_subtask([geom], 10, (0, 2))
    assert sub.inp == (0, 4) and sub.pads == ((1, 0),) and sub.in_width == 4
    sub = block_subtask([geom], 10, (4, 5))
    assert sub.inp == (7, 10) and sub.pads == ((0, 0),)


def test_single_layer_output_reading_only_padding_equal_to_span():
    sub = block_subtask([AxisGeom(kernel=3, pad_before=3, pad_after=3)], 4, (0, 1))
    assert sub.inp == (0, 0) and sub.pads == ((3, 0),)


def test_input_range_when_outputs_read_only_padding_wider_than_span():
    geom = AxisGeom(kernel=1, pad_before=2, pad_after=2)
    assert geom.input_range((0, 1), 5) == ((0, 0), 1, 0)
    assert geom.input_range((8, 9), 5) == ((5, 5), 0, 1)


def test_block_subtask_when_a_layer_reads_only_padding_is_a_clear_error():
    """Padding wider than a kernel's span inside a block is not supported: say so."""
    layers = [AxisGeom(kernel=3, pad_before=1, pad_after=1), AxisGeom(kernel=1, pad_before=1)]
    with pytest.raises(ValueError, match="reads only zero padding"):
        block_subtask(layers, 6, (0, 1))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel=0),
        dict(kernel=3, stride=0),
        dict(kernel=3, dilation=0),
        dict(kernel=3, pad_before=-1),
        dict(kernel=3, pad_after=-1),
    ],
)
def test_axis_geom_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        AxisGeom(**kwargs)


@pytest.mark.parametrize("out", [(0, 0), (3, 2), (-1, 2)])
def test_padded_input_range_rejects_bad_ranges(out):
    with pytest.raises(ValueError, match="bad output range"):
        AxisGeom(3).padded_input_range(out)


@pytest.mark.parametrize("out", [(0, 9), (8, 9), (-1, 2), (2, 2), (5, 3)])
def test_block_subtask_rejects_ranges_outside_the_output(out):
    with pytest.raises(ValueError):
        block_subtask([AxisGeom(3)], 10, out)  # output width 8


@pytest.mark.parametrize("width,pieces", [(5, 6), (0, 1), (5, 0), (5, -1)])
def test_equal_pieces_rejects_impossible_cuts(width, pieces):
    with pytest.raises(ValueError):
        equal_pieces(width, pieces)


def test_split_layer_rejects_more_pieces_than_output_columns():
    with pytest.raises(ValueError, match="cannot cut"):
        split_layer(AxisGeom(3, 1, 1, 1, 1), 7, 8)


@pytest.mark.parametrize(
    "geom,width",
    [(AxisGeom(5), 4), (AxisGeom(3, dilation=3), 6), (AxisGeom(7, pad_before=1, pad_after=1), 4)],
)
def test_kernel_larger_than_input_is_rejected(geom, width):
    with pytest.raises(ValueError, match="smaller than the kernel"):
        geom.out_size(width)
    with pytest.raises(ValueError):
        split_layer(geom, width, 1)
    with pytest.raises(ValueError):
        block_subtask([geom], width, (0, 1))
