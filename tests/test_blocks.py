"""Conv blocks as the learned code's unit: geometry, exactness, and the in-process engine.

The split of a block is checked against the block run whole (``block_reference``) on
randomly drawn blocks with awkward geometry; the engine check compares a run with
silent subtasks to the offline replay of ``learning.coded_predictions``.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

from cocoi_mpi.engine.core import LocalEngine
from cocoi_mpi.engine.proxies import CodedBlock, install_blocks
from cocoi_mpi.geometry.blocks import (
    BlockError,
    BlockLoc,
    block_reference,
    block_spec,
    cut_block,
    find_blocks,
    merge_block,
    piece_shapes,
    probe_block,
    run_block,
    run_pieces,
    run_rest,
    split_block,
)
from cocoi_mpi.learned.accuracy import coded_predictions
from cocoi_mpi.learned.coded_block import make_coded_block
from cocoi_mpi.learned.scheme import LearnedScheme
from cocoi_mpi.models import build_model
from cocoi_mpi.models.vgg16 import vgg16

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]

TOL = 1e-5
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Identity)


# --------------------------------------------------------------------------- random blocks


def random_bn(channels: int, gen: torch.Generator) -> nn.BatchNorm2d:
    """BatchNorm in eval mode with random affine and running stats (not an identity)."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(0.0, 0.3, generator=gen)
        bn.running_mean.normal_(0.0, 0.3, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
    return bn.eval()


def random_padding(rng: random.Random, kernel, stride, dilation, tight: bool):
    """An int, an (h, w) tuple (different per axis), 'same' or 'valid'.

    ``tight``: padding never wider than the dilated kernel span minus one (as in every
    real CNN), so no piece window lies entirely in the padding.
    """
    if tight:
        limit = [min(3, d * (k - 1)) for k, d in zip(kernel, dilation, strict=True)]
    else:
        limit = [3, 3]
    draw = rng.random()
    if draw < 0.15 and stride == (1, 1):
        return "same"
    if draw < 0.25:
        return "valid"
    if draw < 0.45:
        return rng.randint(0, min(limit))
    return (rng.randint(0, limit[0]), rng.randint(0, limit[1]))


def random_conv(
    rng: random.Random, gen: torch.Generator, c_in: int, tight: bool, pad: bool = True
) -> nn.Conv2d:
    kernel = (rng.randint(1, 5), rng.randint(1, 5))
    stride = (rng.randint(1, 2), rng.randint(1, 2))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    divisors = [g for g in range(2, c_in + 1) if c_in % g == 0]
    if divisors and rng.random() < 0.35:
        groups = rng.choice(divisors)
        c_out = groups * rng.randint(1, 2)
    else:
        groups, c_out = 1, rng.randint(1, 6)
    padding = random_padding(rng, kernel, stride, dilation, tight) if pad else 0
    conv = nn.Conv2d(
        c_in, c_out, kernel, stride, padding, dilation, groups, bias=rng.random() < 0.5
    )
    fan_in = c_in // groups * kernel[0] * kernel[1]
    with torch.no_grad():
        conv.weight.normal_(0.0, 1.5 / math.sqrt(fan_in), generator=gen)
        if conv.bias is not None:
            conv.bias.normal_(0.0, 0.3, generator=gen)
    return conv


def random_block(
    rng: random.Random, gen: torch.Generator, tight: bool = False, pad: bool = True
) -> tuple[list[nn.Module], int]:
    """1-4 convs, each maybe followed by BN and an activation; returns (modules, C_in).

    A leading activation may come first: ReLU, Tanh and Identity map 0 to 0, so the
    zero columns the split adds stay zero (a leading BN is tested on its own below).
    """
    c_in = rng.randint(1, 4)
    modules: list[nn.Module] = []
    if rng.random() < 0.2:
        modules.append(rng.choice(ACTIVATIONS)())
    channels = c_in
    for _ in range(rng.randint(1, 4)):
        conv = random_conv(rng, gen, channels, tight, pad)
        modules.append(conv)
        channels = conv.out_channels
        if rng.random() < 0.5:
            modules.append(random_bn(channels, gen))
        if rng.random() < 0.8:
            modules.append(rng.choice(ACTIVATIONS)())
    return modules, c_in


def merged(spec, split, x: torch.Tensor) -> torch.Tensor:
    """The block output rebuilt from its k systematic pieces and the master's rest."""
    return merge_block(run_pieces(spec, split, cut_block(split, x)), run_rest(spec, split, x))


def draw_case(seed: int, tight: bool = False, pad: bool = True):
    """A random block, its input and a k; None when the block itself cannot run."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    modules, c_in = random_block(rng, gen, tight, pad)
    spec = block_spec(seed, f"case{seed}", modules)
    x = torch.randn(2, c_in, rng.randint(5, 20), rng.randint(6, 48), generator=gen)
    try:
        reference = block_reference(spec, x)
    except RuntimeError:  # too small for its kernels, strides and dilations
        return None
    k = rng.randint(1, 6)
    try:
        split = split_block(spec, x.shape[3], k)
    except BlockError:  # k exceeds the output width
        return None
    return spec, split, x, reference, k


def test_split_block_is_exact_on_random_blocks():
    checked, failures = 0, []
    for seed in range(150):
        case = draw_case(seed)
        if case is None:
            continue
        spec, split, x, reference, k = case
        out = merged(spec, split, x)
        checked += 1
        if out.shape != reference.shape:
            failures.append(f"seed {seed} k={k}: shape {tuple(out.shape)} != {reference.shape}")
            continue
        err = (out - reference).abs().max().item()
        if err > TOL:
            failures.append(f"seed {seed} k={k} W={x.shape[3]}: max err {err:.3g}\n{spec.layers}")
    assert not failures, "\n".join(failures)
    assert checked >= 100, f"only {checked} of 150 random blocks could be checked"


def test_split_covers_the_output_width_with_k_equal_pieces():
    for seed in range(150, 200):
        case = draw_case(seed)
        if case is None:
            continue
        spec, split, x, reference, k = case
        width = reference.shape[3]
        assert split.k == k and split.width_out == width
        assert split.piece_width == width // k
        assert split.remainder_width == width - k * (width // k)
        assert (split.rest is None) == (width % k == 0)
        outs = [p.out for p in split.pieces] + ([split.rest.out] if split.rest else [])
        assert outs[0][0] == 0 and outs[-1][1] == width
        assert all(a[1] == b[0] for a, b in zip(outs, outs[1:], strict=False))


def local_widths(spec, piece_in: int) -> list[int]:
    """Width of the input of every conv of a piece run valid in width."""
    widths = [piece_in]
    for conv in spec.convs:
        span = conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
        widths.append((widths[-1] - span) // conv.stride[1] + 1)
    return widths[:-1]


def test_pieces_share_one_width_hold_the_true_columns_and_have_masks_in_range():
    checked = 0
    for seed in range(200, 320):
        case = draw_case(seed, tight=True)
        if case is None:
            continue
        spec, split, x, _, k = case
        pieces = cut_block(split, x)
        assert pieces.shape == (x.shape[0], k, x.shape[1], x.shape[2], split.piece_in)
        width = x.shape[3]
        inner = local_widths(spec, split.piece_in)
        for i, piece in enumerate(split.pieces):
            # every column is the block input's own column, or a zero outside it
            for col in range(split.piece_in):
                g = piece.start + col
                expected = x[..., g] if 0 <= g < width else torch.zeros_like(x[..., 0])
                assert torch.equal(pieces[:, i, ..., col], expected), (seed, i, col)
            assert len(piece.masks) == len(spec.convs)  # one per conv, the first included
            for (lo, hi), local in zip(piece.masks, inner, strict=True):
                assert 0 <= lo <= hi <= local, (seed, i, piece.masks, inner)
        checked += 1
    assert checked >= 60


def test_masks_stay_in_range_when_padding_exceeds_the_kernel_span():
    spec = block_spec(0, "b", [nn.Conv2d(2, 3, 1), nn.Conv2d(3, 3, 1, padding=3)])
    split = split_block(spec, 6, 12)
    x = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged(spec, split, x), block_reference(spec, x))  # still exact
    for piece in split.pieces:
        (lo, hi) = piece.masks[1]
        assert 0 <= lo <= hi <= split.piece_in, piece


def test_no_padding_means_no_masking():
    checked = 0
    for seed in range(320, 400):
        case = draw_case(seed, pad=False)
        if case is None:
            continue
        spec, _, x, reference, _ = case
        for k in (1, 2):
            try:
                split = split_block(spec, x.shape[3], k)
            except BlockError:
                continue
            widths = local_widths(spec, split.piece_in)
            pieces = cut_block(split, x)
            for i, piece in enumerate(split.pieces):
                assert piece.masks == tuple((0, w) for w in widths)
                assert torch.equal(
                    run_block(spec, pieces[:, i], piece.masks), run_block(spec, pieces[:, i])
                )
            if k == 1:
                assert split.pad_left == split.pad_right == 0 and split.rest is None
                assert split.pieces[0].start == 0 and split.piece_in <= x.shape[3]
                torch.testing.assert_close(merged(spec, split, x), reference, atol=TOL, rtol=0)
            checked += 1
    assert checked >= 40


def test_asymmetric_same_padding_and_wide_padding_are_exact():
    """Even kernels under padding='same' pad 1 left and 2 right; padding 3 on a 1x1 conv
    makes columns that read only zeros: both must survive the split."""
    gen = torch.Generator().manual_seed(5)
    layers = [
        nn.Conv2d(3, 4, 4, padding="same"),
        random_bn(4, gen),
        nn.Tanh(),
        nn.Conv2d(4, 4, (2, 4), padding="same", bias=False),
        nn.Conv2d(4, 2, 1, padding=3),
        nn.ReLU(),
    ]
    spec = block_spec(0, "b", layers)
    x = torch.randn(1, 3, 7, 13, generator=gen)
    for k in range(1, 20):
        split = split_block(spec, 13, k)
        torch.testing.assert_close(merged(spec, split, x), spec.layers(x), atol=TOL, rtol=0)


def test_block_starting_with_batchnorm_is_exact():
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.MaxPool2d(2), random_bn(3, gen), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
    )
    (loc,) = find_blocks(model)
    assert loc == BlockLoc("", 1, 4)  # the block starts at the BatchNorm
    spec = block_spec(0, loc.name, list(model.children())[1:4])
    x = torch.randn(1, 3, 8, 12, generator=gen)
    split = split_block(spec, 12, 3)
    torch.testing.assert_close(merged(spec, split, x), spec.layers(x), atol=TOL, rtol=0)


# --------------------------------------------------------------------------- find_blocks


def test_find_blocks_lenet5_stops_at_max_pool():
    model = build_model("lenet5")
    assert find_blocks(model) == [BlockLoc("features", 0, 2), BlockLoc("features", 3, 5)]
    assert [loc.name for loc in find_blocks(model)] == ["features.0", "features.3"]


def test_find_blocks_vgg16_gives_its_five_blocks():
    with torch.device("meta"):  # structure only: no 138M weights to initialise
        model = vgg16()
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]
    locs = find_blocks(model)
    assert [loc.name for loc in locs] == [
        "features.0",
        "features.5",
        "features.10",
        "features.17",
        "features.24",
    ]
    assert [(loc.start, loc.stop) for loc in locs] == [
        (0, 4),
        (5, 9),
        (10, 16),
        (17, 23),
        (24, 30),
    ]
    # the classifier holds ReLU and Dropout but no conv: not a block
    assert all(loc.container == "features" for loc in locs)


def test_find_blocks_splits_at_a_linear_and_ignores_runs_without_conv():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.Linear(4, 4),
        nn.BatchNorm2d(2),
        nn.Conv2d(2, 2, 1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Tanh(),
    )
    assert find_blocks(model) == [BlockLoc("", 0, 2), BlockLoc("", 3, 5)]
    assert [loc.name for loc in find_blocks(model)] == ["0", "3"]


def test_find_blocks_nested_sequential_uses_its_path():
    model = nn.Module()
    model.stem = nn.Conv2d(1, 2, 3)  # not in a Sequential: never a block
    model.body = nn.Sequential(nn.Identity(), nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()))
    assert find_blocks(model) == [BlockLoc("body.1", 0, 2)]
    assert find_blocks(model)[0].name == "body.1.0"


def test_find_blocks_without_sequential_is_empty():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.conv2(self.relu(self.conv1(x)))

    assert find_blocks(Plain()) == []


# --------------------------------------------------------------------------- block_spec


def test_block_spec_refuses_reflect_padding_naming_the_block():
    modules = [nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU()]
    with pytest.raises(BlockError, match=r"features\.7.*reflect"):
        block_spec(0, "features.7", modules)


def test_block_spec_refuses_a_non_elementwise_module():
    with pytest.raises(BlockError, match="features.2.*MaxPool2d"):
        block_spec(0, "features.2", [nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)])


def test_block_spec_copies_the_layers():
    model = build_model("lenet5", seed=3)
    loc = find_blocks(model)[1]
    modules = list(model.features.children())[loc.start : loc.stop]
    spec = block_spec(0, loc.name, modules)
    x = torch.randn(1, 6, 14, 14, generator=torch.Generator().manual_seed(0))
    before = block_reference(spec, x)
    weight = spec.layers[0].weight.clone()
    with torch.no_grad():
        model.features[3].weight.mul_(-2.0)
        model.features[3].bias.add_(1.0)
    assert spec.layers[0] is not model.features[3]
    assert torch.equal(spec.layers[0].weight, weight)
    assert torch.equal(block_reference(spec, x), before)
    assert not any(p.requires_grad for p in spec.layers.parameters())
    assert not spec.layers.training
    assert model.features[3].weight.requires_grad  # the model's own layers are untouched


# --------------------------------------------------------------------------- split_block


def test_split_block_refuses_k_above_output_width():
    spec = block_spec(0, "features.3", [nn.Conv2d(6, 16, 5), nn.ReLU()])
    assert split_block(spec, 14, 10).piece_width == 1  # width 14 -> 10: k = 10 still fits
    with pytest.raises(BlockError, match=r"features\.3"):
        split_block(spec, 14, 11)
    with pytest.raises(BlockError):
        split_block(spec, 14, 0)


# --------------------------------------------------------------------------- probe_block


def test_probe_block_flops_by_hand():
    layers = [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, (3, 1), stride=(1, 2), padding=(1, 0), groups=2),
        nn.BatchNorm2d(2),
    ]
    spec = block_spec(0, "b", layers)
    shape, flops = probe_block(spec, (3, 8, 10))
    # conv 1: height 8 (padded), width 10 -> 8 (valid): 4*8*8 outputs of 3*3*3 MACs
    # conv 2: height 8, width (8 - 1) // 2 + 1 = 4: 2*8*4 outputs of (4/2)*3*1 MACs
    assert shape == (1, 2, 8, 4)
    assert flops == 2 * (4 * 8 * 8) * 27 + 2 * (2 * 8 * 4) * 6


def test_piece_shapes_match_the_pieces_workers_get():
    spec = block_spec(0, "b", [nn.Conv2d(6, 16, 5), nn.ReLU()])
    piece_in, piece_out = piece_shapes(spec, (6, 14, 14), 3)
    # output width 10 -> 3 pieces of 3 (one column left for the master): input 3 + 4
    assert piece_in == (6, 14, 7) and piece_out == (16, 10, 3)
    split = split_block(spec, 14, 3)
    x = torch.randn(1, 6, 14, 14, generator=torch.Generator().manual_seed(0))
    out = run_pieces(spec, split, cut_block(split, x))
    assert tuple(out.shape[2:]) == piece_out and split.remainder_width == 1


# --------------------------------------------------------------------------- the engine


def lenet_and_codec(k: int, r: int = 1):
    model = build_model("lenet5", seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        cb = make_coded_block(model, "features.3", (1, 32, 32), k=k, r=r, arch="sparsemlp")
    return model, cb


def engine_model(model, cb, n: int, k: int, silent=frozenset(), scheme: str = "learned"):
    coded = copy.deepcopy(model)
    engine = LocalEngine(n=n, k=k, silent=frozenset(silent))
    engine.use(scheme, k)
    install_blocks(coded, engine, [cb.loc])
    engine.codecs = {cb.name: LearnedScheme(cb.codec)}
    return coded, engine


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def one_by_one(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits image by image: the engine takes one image per request, and a Linear's
    rounding can depend on the batch size, so bit-equality compares like with like."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1]) for i in range(len(x))])


def test_install_blocks_replaces_the_block_by_one_proxy():
    model, cb = lenet_and_codec(2)
    coded, _ = engine_model(model, cb, 3, 2)
    assert isinstance(coded.features[3], CodedBlock)
    assert isinstance(coded.features[4], nn.Identity)
    assert isinstance(coded.features[0], nn.Conv2d)  # only the located block is installed
    assert coded.features[3].spec.name == "features.3"
    assert not isinstance(model.features[3], CodedBlock)  # the original model is untouched


@pytest.mark.parametrize("k", [2, 3])
def test_engine_without_silent_subtasks_gives_the_plain_logits(k):
    model, cb = lenet_and_codec(k)
    coded, engine = engine_model(model, cb, k + 1, k)
    x = images(3)
    assert torch.equal(one_by_one(coded, x), one_by_one(model, x))
    rounds, subtasks = engine.take_rows()
    assert len(rounds) == len(x)
    for row in rounds:
        assert row["layer"] == "features.3"
        assert row["used_rows"] == ",".join(map(str, range(k)))
        assert (row["k"], row["n"], row["r"]) == (k, k + 1, 1)
        assert row["width_out"] == 10 and row["piece_width"] == 10 // k
        assert row["remainder_width"] == 10 - k * (10 // k)
        assert row["n_failed"] == 0
    assert engine.take_rows() == ([], [])  # rows are handed out once


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("lost", [0, 1, "parity"])
def test_engine_with_a_silent_subtask_matches_the_offline_replay(k, lost):
    lost = k if lost == "parity" else lost
    model, cb = lenet_and_codec(k)
    coded, engine = engine_model(model, cb, k + 1, k, silent={lost})
    x = images(4, seed=1)
    online = one_by_one(coded, x)
    offline = coded_predictions(model, [cb], x, lost=[lost])
    torch.testing.assert_close(online, offline, atol=TOL, rtol=0)
    if lost == k:  # only the parity row is missing: the systematic outputs are exact
        assert torch.equal(online, one_by_one(model, x))
    else:  # a source row is missing: the untrained decoder's estimate differs
        assert not torch.allclose(online, one_by_one(model, x), atol=1e-4)
    rounds, _ = engine.take_rows()
    assert [row["layer"] for row in rounds] == ["features.3"] * len(x)
    used = [i for i in range(k + 1) if i != lost]
    assert {row["used_rows"] for row in rounds} == {",".join(map(str, used))}
    assert all(row["n_failed"] == 1 for row in rounds)


def test_engine_logs_the_systematic_shortcut_of_a_learned_code():
    model, cb = lenet_and_codec(2)
    coded, engine = engine_model(model, cb, 3, 2)
    with torch.no_grad():
        coded(images(1))
    (row,), _ = engine.take_rows()
    assert row["used_rows"] == "0,1"
    assert row["systematic_shortcut"] is True


def test_non_learned_scheme_runs_the_original_layers():
    model, cb = lenet_and_codec(2)
    coded, engine = engine_model(model, cb, 3, 2, silent={0}, scheme="cocoi")
    x = images(2, seed=2)
    assert torch.equal(one_by_one(coded, x), one_by_one(model, x))
    assert engine.take_rows() == ([], [])  # no coded round ran
    engine.use("learned", 2)  # the same proxy codes the block once the scheme is learned
    with torch.no_grad():
        coded(x[:1])
    assert len(engine.take_rows()[0]) == 1


def test_learned_scheme_without_a_codec_for_the_block_runs_it_locally():
    model, cb = lenet_and_codec(2)
    coded, engine = engine_model(model, cb, 3, 2, silent={0})
    engine.codecs = {}
    x = images(2, seed=3)
    with torch.no_grad():
        assert torch.equal(coded(x), model(x))
    with torch.no_grad(), engine.local_only():
        engine.codecs = {cb.name: LearnedScheme(cb.codec)}
        assert torch.equal(coded(x), model(x))  # bypass: the reference forward pass
    assert engine.take_rows() == ([], [])
