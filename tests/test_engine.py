"""The in-process engine: coded convs inside real nn.Modules give the model's own logits.

Every pattern of silent workers that an (n, k) code tolerates is tried on three small CNNs
with awkward geometry, then the registry's LeNet-5 and ResNet18 run once each. The trace
rows the engine records are checked against geometry computed independently here.
"""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cocoi_mpi.engine.core import LocalEngine
from cocoi_mpi.engine.proxies import CodedConv, install, type1_convs
from cocoi_mpi.engine.rows import RoundShortfall
from cocoi_mpi.geometry.split import split_layer, tightest_pieces
from cocoi_mpi.models import build_model, input_shape

N = 6
REL_TOL = 1e-5

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]


# --------------------------------------------------------------------------- models


class OddNet(nn.Module):
    """A user's CNN with every geometry the split must reproduce exactly."""

    input_shape = (3, 13, 29)  # width 29: odd, prime

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.odd = nn.Conv2d(4, 6, 5, stride=2, dilation=2, padding=3)  # width 29 -> 14
        self.bn = nn.BatchNorm2d(6)
        self.same = nn.Conv2d(6, 6, 4, padding="same")  # even kernel: pads 1 left, 2 right
        self.grouped = nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=False)
        self.pool = nn.MaxPool2d(2)  # width 14 -> 7
        self.rect = nn.Conv2d(8, 8, (3, 5), stride=(2, 1), padding=(1, 2))  # 7 < k*m for k > 3
        self.squeeze = nn.AdaptiveAvgPool2d((3, 1))
        self.narrow = nn.Conv2d(8, 4, 1)  # width 1 < m = 2: cannot be split, runs locally
        self.head = nn.Linear(12, 5)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(self.bn(self.odd(x)))
        x = self.relu(self.same(x))
        x = self.pool(self.relu(self.grouped(x)))
        x = self.squeeze(self.relu(self.rect(x)))
        return self.head(torch.flatten(self.narrow(x), 1))


class SmallVGG(nn.Module):
    input_shape = (3, 16, 22)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 5, 32), nn.ReLU())
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(self.classifier(self.features(x)))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    input_shape = (3, 12, 18)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)  # 1x1 stride-2 downsample on the shortcut
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS = {"odd": OddNet, "vgg": SmallVGG, "resnet": SmallResNet}


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # BN must not be an identity
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_input(model: nn.Module, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, *model.input_shape, generator=gen)


def coded(model: nn.Module, n: int, k: int, **kw) -> tuple[nn.Module, LocalEngine, list]:
    """A deep copy of ``model`` with its type-1 convs behind a fresh LocalEngine."""
    skip_first = kw.pop("skip_first", True)
    clone = copy.deepcopy(model)
    engine = LocalEngine(n, k, **kw)
    specs = install(clone, engine, skip_first=skip_first)
    return clone, engine, specs


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def references():
    """Each model, its input, and its plain logits."""
    out = {}
    with torch.no_grad():
        for name in MODELS:
            model = make_model(name)
            x = make_input(model)
            out[name] = (model, x, model(x))
    return out


def conv_trace(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int, int]]:
    """(name, input width, output width) of every conv, in execution order."""
    trace, hooks = [], []
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            hooks.append(
                conv.register_forward_hook(
                    lambda mod, inp, out, name=name: trace.append(
                        (name, inp[0].shape[-1], out.shape[-1])
                    )
                )
            )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return trace


def silent_patterns(n: int, k: int):
    for size in range(n - k + 1):
        yield from itertools.combinations(range(n), size)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("k", range(1, N + 1))
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_for_every_tolerated_silent_pattern(references, name, k):
    model, x, want = references[name]
    patterns = list(silent_patterns(N, k))
    assert len(patterns) == sum(
        len(list(itertools.combinations(range(N), s))) for s in range(N - k + 1)
    )
    with torch.no_grad():
        for silent in patterns:
            net, _, _ = coded(model, N, k, silent=frozenset(silent))
            got = net(x)
            assert rel_diff(got, want) < REL_TOL, (name, k, silent)


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_for_shuffled_arrival_orders(references, name):
    model, x, want = references[name]
    rng = random.Random(name)
    with torch.no_grad():
        for k in range(1, N + 1):
            for _ in range(4):
                order = list(range(N))
                rng.shuffle(order)
                silent = frozenset(rng.sample(range(N), rng.randint(0, N - k)))
                net, _, _ = coded(model, N, k, silent=silent, order=order)
                assert rel_diff(net(x), want) < REL_TOL, (name, k, order, silent)


@pytest.mark.parametrize("name", list(MODELS))
def test_systematic_rotation_code_matches(references, name):
    model, x, want = references[name]
    with torch.no_grad():
        for silent in [(), (0,), (1, 4)]:
            net, engine, _ = coded(
                model, N, 3, silent=frozenset(silent), systematic=True, code="rotation"
            )
            assert rel_diff(net(x), want) < REL_TOL, silent
            rows, _ = engine.take_rows()
            assert all(row["systematic_shortcut"] == (not silent) for row in rows)


@pytest.mark.parametrize("name", list(MODELS))
def test_vandermonde_code_matches_at_small_n(references, name):
    model, x, want = references[name]
    with torch.no_grad():
        for k in (1, 2, 3):
            net, _, _ = coded(model, 3, k, code="vandermonde", silent=frozenset(range(3 - k)))
            assert rel_diff(net(x), want) < 1e-4, k


@pytest.mark.parametrize("name", list(MODELS))
def test_first_conv_can_be_distributed_too(references, name):
    model, x, want = references[name]
    net, engine, specs = coded(model, 4, 2, skip_first=False, silent=frozenset({1}))
    assert specs[0].name == type1_convs(model, skip_first=False)[0][0]
    with torch.no_grad():
        assert rel_diff(net(x), want) < REL_TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_more_silent_workers_than_n_minus_k_cannot_decode(references, name):
    """Such a round is a shortfall: an error when asked for, else the master computes
    the layer itself (exact, and flagged as a fallback in the round's row)."""
    model, x, want = references[name]
    for k, lost in ((1, N), (3, N - 1), (N, N - 1)):  # narrow layers may use a smaller k
        silent = frozenset(range(lost))
        net, engine, _ = coded(model, N, k, silent=silent)
        engine.on_shortfall = "error"
        with torch.no_grad(), pytest.raises(RoundShortfall, match="cannot decode"):
            net(x)
        engine.on_shortfall = "local"
        engine.take_rows()
        with torch.no_grad():
            got = net(x)
        assert rel_diff(got, want) < 1e-5
        rounds, _ = engine.take_rows()
        assert any(r["fallback"] for r in rounds)  # narrow layers use a smaller k


def test_coded_layers_take_one_image(references):
    model, x, _ = references["vgg"]
    net, _, _ = coded(model, 4, 2)
    with torch.no_grad(), pytest.raises(ValueError, match="one image"):
        net(torch.cat([x, x]))


# --------------------------------------------------------------------------- install


@pytest.mark.parametrize("name", list(MODELS))
def test_install_replaces_every_conv_but_the_first(references, name):
    """Every conv but the first is distributed; the first runs on the master through a
    local proxy (its output width-major, geometry/layout.py) and ships to no worker."""
    model = references[name][0]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    net, _, specs = coded(model, N, 2)
    assert [s.name for s in specs] == convs[1:]
    assert [s.layer_id for s in specs] == list(range(len(convs) - 1))
    first = net.get_submodule(convs[0])
    assert isinstance(first, CodedConv) and first.local
    assert all(not net.get_submodule(c).local for c in convs[1:])
    for conv_name in convs[1:]:
        proxy = net.get_submodule(conv_name)
        assert isinstance(proxy, CodedConv)
        assert proxy.conv is not model.get_submodule(conv_name)  # the copy, not the original
    # the engine is not registered as a submodule: state_dict keys only gain the '.conv' level
    keys = {k.replace(".conv.", ".") for k in net.state_dict()}
    assert keys == set(model.state_dict())


def test_install_reads_same_padding_as_asymmetric(references):
    model = references["odd"][0]
    _, _, specs = coded(model, N, 2)
    same = next(s for s in specs if s.name == "same")
    assert same.pad_w == (1, 2) and same.pad_h == (1, 2)
    odd = next(s for s in specs if s.name == "odd")
    assert (odd.stride, odd.dilation, odd.pad_w) == ((2, 2), (2, 2), (3, 3))
    assert next(s for s in specs if s.name == "grouped").groups == 2


def test_install_skips_convs_that_cannot_be_split():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding=1),
    ).eval()
    net, _, specs = coded(model, 4, 2)
    assert [s.name for s in specs] == ["2"]
    assert type(net[1]) is nn.Conv2d and isinstance(net[2], CodedConv)
    x = torch.randn(1, 3, 6, 9)
    with torch.no_grad():
        assert rel_diff(net(x), model(x)) < REL_TOL


@pytest.mark.parametrize("name", list(MODELS))
def test_local_only_runs_the_original_convs(references, name):
    model, x, want = references[name]
    net, engine, _ = coded(model, N, 3)
    proxies = [m for m in net.modules() if isinstance(m, CodedConv)]
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad(), engine.local_only():
        assert torch.equal(net(x), want)
        for proxy in proxies:
            c_in = proxy.conv.in_channels
            inp = torch.randn(1, c_in, 9, 11, generator=gen)
            assert torch.equal(proxy(inp), proxy.conv(inp))
    assert engine.take_rows() == ([], [])
    assert not engine.bypass
    with torch.no_grad():
        net(x)
    assert engine.take_rows()[0]  # coded again once the context is left


def test_local_only_restores_bypass_after_an_exception():
    engine = LocalEngine(4, 2)
    with pytest.raises(RuntimeError), engine.local_only():
        raise RuntimeError("boom")
    assert engine.bypass is False


# --------------------------------------------------------------------------- trace rows


def expected_rows(model, x, n, k, m=2):
    """One row per distributed conv in execution order, with its geometry."""
    rows = []
    for name, w_in, w_out in conv_trace(model, x)[1:]:
        k_layer = min(k, w_out // m)
        if k_layer < 1:
            continue  # cannot be split: runs locally, no round
        k_layer = -(-tightest_pieces(w_out, k_layer * m) // m)  # same width, fewer pieces
        pieces = k_layer * m
        rows.append(
            dict(
                layer=name,
                w_in=w_in,
                width_out=w_out,
                k=k_layer,
                piece_width=-(-w_out // pieces),
                remainder_width=0,  # the pieces cover the whole width
            )
        )
    return rows


@pytest.mark.parametrize("k", [1, 3, 4, 5, 6])
@pytest.mark.parametrize("name", list(MODELS))
def test_rows_record_one_round_per_type1_conv_with_its_geometry(references, name, k):
    model, x, _ = references[name]
    silent = frozenset(range(0, 2 * (N - k), 2)[:2])  # e.g. workers 1 and 3 never reply
    net, engine, specs = coded(model, N, k, silent=silent, code="rotation")
    want = expected_rows(model, x, N, k)
    spec_by_name = {s.name: s for s in specs}
    with torch.no_grad():
        for request in range(2):
            engine.request = request
            net(x)
            rows, subtasks = engine.take_rows()
            assert [r["layer"] for r in rows] == [w["layer"] for w in want]
            for row, exp in zip(rows, want, strict=True):
                assert row["request"] == request
                assert row["k"] == exp["k"] and row["n"] == N and row["r"] == N - exp["k"]
                assert row["pieces_per_worker"] == 2
                for key in ("width_out", "piece_width", "remainder_width"):
                    assert row[key] == exp[key], (row["layer"], key)
                split = split_layer(
                    spec_by_name[row["layer"]].width_geom, exp["w_in"], 2 * exp["k"]
                )
                assert (split.width_out, split.piece_width, split.remainder_width) == (
                    row["width_out"],
                    row["piece_width"],
                    row["remainder_width"],
                )
                assert row["n_used"] == row["k"]
                used = [int(w) for w in row["used_workers"].split(",")]
                alive = [i + 1 for i in range(N) if i not in silent]
                assert used == alive[: row["k"]]
                assert row["n_failed"] == len(silent)
                assert row["layer_index"] == spec_by_name[row["layer"]].layer_id
            assert [r["round"] for r in rows] == list(
                range(request * len(want) + 1, (request + 1) * len(want) + 1)
            )
            assert subtasks == []
    assert engine.take_rows() == ([], [])


def test_odd_model_caps_k_on_narrow_layers_and_skips_unsplittable(references):
    model, x, _ = references["odd"]
    net, engine, _ = coded(model, N, 6, code="rotation")
    with torch.no_grad():
        net(x)
    rows = {r["layer"]: r for r in engine.take_rows()[0]}
    assert set(rows) == {"odd", "same", "grouped", "rect"}  # 'narrow' has output width 1
    # 14 columns in 12 pieces would be 2 columns each: 7 pieces of 2 cover them, k = 4
    assert rows["odd"]["k"] == 4 and rows["odd"]["width_out"] == 14
    assert rows["odd"]["piece_width"] == 2 and rows["odd"]["remainder_width"] == 0
    # 7 columns: at most 7 // 2 = 3 subtasks of 2 pieces, of 2 columns; 2 subtasks cover
    assert rows["rect"]["k"] == 2 and rows["rect"]["width_out"] == 7
    assert rows["rect"]["remainder_width"] == 0 and rows["rect"]["piece_width"] == 2


def test_used_workers_follow_the_arrival_order(references):
    model, x, _ = references["vgg"]
    order = [5, 2, 0, 4, 1, 3]
    net, engine, _ = coded(model, N, 3, order=order, silent=frozenset({2}), code="rotation")
    with torch.no_grad():
        net(x)
    for row in engine.take_rows()[0]:
        assert row["used_workers"] == "6,1,5"
        assert row["systematic_shortcut"] is False


def test_systematic_decoding_uses_every_arrived_source_then_the_first_parities(references):
    """The default code keeps sources 0 and 1 (they arrived) and rebuilds only piece 2
    from the first parity to arrive (subtask 5): used in arrival order is 5, 0, 1."""
    model, x, _ = references["vgg"]
    net, engine, _ = coded(model, N, 3, order=[5, 2, 0, 4, 1, 3], silent=frozenset({2}))
    with torch.no_grad():
        net(x)
    for row in engine.take_rows()[0]:
        assert row["used_rows"] == "5,0,1" and row["used_workers"] == "6,1,2"
        assert row["systematic_shortcut"] is False


# --------------------------------------------------------------------------- registry models


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_lenet5_through_the_engine(k):
    model = build_model("lenet5")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, *input_shape("lenet5"), generator=gen)
    silent = frozenset(range(4 - k))
    net, engine, specs = coded(model, 4, k, silent=silent)
    with torch.no_grad():
        want, got = model(x), net(x)
    assert rel_diff(got, want) < 1e-4
    rows = engine.take_rows()[0]
    assert [r["layer"] for r in rows] == ["features.3"] == [s.name for s in specs]
    assert rows[0]["width_out"] == 10 and rows[0]["k"] == k


def test_resnet18_through_the_engine():
    model = build_model("resnet18")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, *input_shape("resnet18"), generator=gen)
    net, engine, specs = coded(model, 4, 2, silent=frozenset({0}), order=[3, 0, 1, 2])
    with torch.no_grad():
        want, got = model(x), net(x)
    assert rel_diff(got, want) < 1e-4
    rows = engine.take_rows()[0]
    assert len(rows) == len(specs) == 19  # 20 convs, the first stays local
    assert all(r["used_workers"] == "4,2" for r in rows)
    assert {r["width_out"] for r in rows} == {56, 28, 14, 7}


@pytest.mark.parametrize("k", range(1, N + 1))
def test_every_erasure_pattern_is_exact_with_no_column_left_to_the_master(references, k):
    """Issue 15: for the odd-geometry model, every set of up to n - k silent workers
    decodes exactly, and every round's pieces cover the whole output width."""
    model, x, want = references["odd"]
    with torch.no_grad():
        for lost in range(N - k + 1):
            for silent in itertools.combinations(range(N), lost):
                net, engine, _ = coded(model, N, k, silent=frozenset(silent))
                assert rel_diff(net(x), want) < REL_TOL, (k, silent)
                rows, _ = engine.take_rows()
                assert rows and all(r["remainder_width"] == 0 for r in rows), (k, silent)
                assert all(r["piece_width"] * r["k"] >= r["width_out"] for r in rows)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_lenet5_rounds_leave_no_columns_to_the_master(k):
    model = build_model("lenet5")
    x = torch.randn(1, *input_shape("lenet5"), generator=torch.Generator().manual_seed(5))
    net, engine, _ = coded(model, 4, k, silent=frozenset(range(4 - k)))
    with torch.no_grad():
        assert rel_diff(net(x), model(x)) < 1e-4
    rows = engine.take_rows()[0]
    assert rows and all(r["remainder_width"] == 0 for r in rows)


# --------------------------------------------------------------------------- master's copies
# fill_piece and Assembly copy column windows of width-major maps (geometry/layout.py);
# the reference here is plain torch slicing and F.pad, bit for bit.


INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_OF_SIZE[t.element_size()])


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (NaN payloads included), not just equal values."""
    return a.shape == b.shape and torch.equal(as_bits(a), as_bits(b))


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Any bit pattern of the dtype: NaNs, infinities, subnormals and -0.0 included."""
    kind = INT_OF_SIZE[torch.empty((), dtype=dtype).element_size()]
    info = torch.iinfo(kind)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(info.min, info.max, shape, dtype=kind, generator=gen).view(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "kernel,stride,dilation,pad,width",
    [
        (3, 1, 1, (1, 1), 7),  # 7 wide at k = 7: pieces of 3 input columns
        (3, 2, 1, (1, 1), 14),
        (1, 2, 1, (0, 0), 14),  # a 1x1 stride-2 downsample
        (5, 2, 2, (3, 3), 29),
        (4, 1, 1, (1, 2), 11),  # asymmetric ("same", even kernel)
        (3, 1, 1, (1, 1), 56),
        (7, 2, 1, (3, 3), 33),
    ],
)
def test_fill_piece_and_round_match_torch_slicing_bit_for_bit(
    dtype, kernel, stride, dilation, pad, width
):
    """Every piece is the padded input's columns stored (w, H, C), bit for bit, from a
    width-major input and from one in torch's usual layout (made width-major first)."""
    from dataclasses import replace

    from cocoi_mpi.codes.linear import LinearCode
    from cocoi_mpi.geometry.conv import conv_spec, layer_k
    from cocoi_mpi.geometry.layout import column_rows, is_width_major, width_major
    from cocoi_mpi.geometry.rounds import ConvRound, fill_piece

    conv = nn.Conv2d(5, 3, (3, kernel), stride=(1, stride), dilation=(1, dilation))
    spec = replace(conv_spec(0, "c", conv), pad_w=pad)
    x = random_bits((1, 5, 4, width), dtype, seed=width + kernel)
    wide = width_major(x)
    assert is_width_major(wide) and not is_width_major(x) and bit_equal(wide, x)
    padded = nn.functional.pad(as_bits(x), pad)  # zero bits are 0.0
    for k in range(1, layer_k(spec, width, 8, 1) + 1):
        round_ = ConvRound(spec, x, LinearCode(k + 2, k))
        other = ConvRound(spec, wide, LinearCode(k + 2, k))
        for i, (a, b) in enumerate(round_.split.ins):
            want = padded[0, :, :, a:b]  # the last piece may reach past the padded input
            want = nn.functional.pad(want, (0, b - a - want.shape[2]))
            want = want.permute(2, 1, 0).contiguous().view(dtype)
            dst = torch.full((b - a, 4, 5), float("nan"), dtype=dtype)
            fill_piece(spec, column_rows(wide), (a, b), dst)
            assert bit_equal(dst, want), (k, i)
            assert bit_equal(round_.subtask_input(i)[0], want), (k, i)
            assert bit_equal(other.subtask_input(i)[0], want), (k, i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "width,k", [(7, 7), (14, 7), (28, 7), (56, 8), (29, 4), (13, 5), (56, 2), (112, 7)]
)
def test_assembly_places_pieces_bit_for_bit(dtype, width, k):
    """Pieces (w, H, C) land in their columns of the width-major output, the last one
    cropped, from contiguous outputs and from strided ones alike."""
    from cocoi_mpi.codes.linear import LinearCode
    from cocoi_mpi.geometry.assembly import Assembly
    from cocoi_mpi.geometry.split import AxisGeom

    code = LinearCode(k + 2, k)
    split = split_layer(AxisGeom(1), width, k)
    w = split.outs[0][1] - split.outs[0][0]
    pieces = random_bits((k, w, 3, 6), dtype, seed=width)
    want = torch.cat([p.permute(2, 1, 0) for p in pieces], dim=2)[:, :, :width].unsqueeze(0)
    for strided in (False, True):
        outputs = [torch.cat([p, p], dim=2)[..., :6] if strided else p for p in pieces]
        assembly = Assembly(split, (1, 6, 3, width), dtype)
        assembly.place(0, outputs[0])  # as a decoded piece is placed
        for index in range(1, k):
            assembly.place_subtask(code, index, outputs[index].unsqueeze(0))
        assert bit_equal(assembly.out, want), strided


@pytest.mark.parametrize("e", [1, 2, 3])
def test_decode_without_stacking_matches_the_stacked_product(monkeypatch, e):
    """Past STACK_BYTES decode adds rank-1 products instead of stacking the outputs:
    the same sums in the same order (on MKL bit for bit; checked to float rounding)."""
    from cocoi_mpi.codes import linear

    gen = torch.Generator().manual_seed(e)
    k, m = 5, 2
    blocks = [torch.randn(m, 3, 4, 25, generator=gen) for _ in range(k)]
    coef = torch.randn(e, k * m, generator=gen)
    stacked = linear.combine_outputs(coef, blocks)
    want = coef @ torch.cat(blocks).reshape(k * m, -1)
    torch.testing.assert_close(stacked, want, rtol=0, atol=0)
    monkeypatch.setattr(linear, "STACK_BYTES", 0)
    summed = linear.combine_outputs(coef, blocks)
    torch.testing.assert_close(summed, stacked, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scales", [(1.0,), (2.5,), (1.0, -0.75), (0.0, 0.0)])
def test_worker_conv_adds_the_bias_scaled_per_piece(scales):
    """Piece p of a subtask gets scales[p] times the bias, fused into the conv when all
    pieces share one scale: the same as convolving without bias and adding it."""
    from cocoi_mpi.geometry.conv import conv_spec, worker_conv

    gen = torch.Generator().manual_seed(len(scales))
    conv = nn.Conv2d(3, 5, 3, padding=1)
    spec = conv_spec(0, "c", conv)
    x = torch.randn(len(scales), 3, 6, 7, generator=gen)
    stored = x.permute(0, 3, 2, 1).contiguous()  # the (m, w, H, C) a worker gets
    with torch.no_grad():
        plain = F.conv2d(F.pad(x, (0, 0, 1, 1)), conv.weight)
        want = plain + torch.tensor(scales).view(-1, 1, 1, 1) * conv.bias.view(1, -1, 1, 1)
        got = worker_conv(spec, stored, scales)
        assert got.is_contiguous() and got.shape == (len(scales), 5, 6, 5)
        torch.testing.assert_close(got.permute(0, 3, 2, 1), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            worker_conv(spec, stored).permute(0, 3, 2, 1), plain, rtol=1e-5, atol=1e-5
        )


def test_coded_outputs_carry_the_codes_combination_of_biased_pieces():
    """The property decoding relies on: a parity worker's output, with its bias scale,
    equals the generator row applied to the biased source outputs."""
    from cocoi_mpi.codes.linear import LinearCode
    from cocoi_mpi.geometry.conv import conv_spec, worker_conv

    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.bias.normal_(0, 3.0, generator=gen)
    spec = conv_spec(0, "c", conv)
    code = LinearCode(10, 7)
    pieces = torch.randn(7, 6, 5, 4, generator=gen)  # (w, H, C_in) each
    coded = code.encode(pieces)
    with torch.no_grad():
        biased = torch.stack([worker_conv(spec, p.unsqueeze(0), (1.0,))[0] for p in pieces])
        for i in range(code.n):
            got = worker_conv(spec, coded[i], code.bias_scales(i))[0]
            want = torch.tensordot(torch.tensor(code.generator[i], dtype=torch.float32), biased, 1)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
