"""Learned erasure codes: shapes, per-channel weight sharing, exactness where promised.

The networks are tiny and seeded; the one training test checks that a sparsemlp code
can learn the identity block's parity well enough to rebuild a missing piece.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from cocoi_mpi.codes import DecodeError
from cocoi_mpi.learned.scheme import (
    ARCHS,
    Codec,
    LearnedScheme,
    SparseLinear,
    count_flops,
    count_params,
    decoder_mlp_widths,
    default_hidden,
    encoder_mlp_widths,
    make_decoder,
    make_encoder,
    mlp_flops,
    mlp_params,
    parse_arch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_SHAPE = (3, 10, 4)  # (C, H, W) of an input piece; not square on purpose
OUT_SHAPE = (5, 8, 2)
KR = [(1, 1), (2, 1), (4, 1), (4, 2)]
ALL_ARCHS = [*ARCHS, "conv-mlp", "conv-sparsemlp", "sparsemlp-mlp", "mlp-conv"]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded_codec(arch: str, k: int, r: int, seed: int = 0, **kw) -> Codec:
    torch.manual_seed(seed)
    return Codec(arch, k, r, IN_SHAPE, OUT_SHAPE, **kw)


@pytest.mark.parametrize("arch", ["mlp", "conv", "sparsemlp", "conv-mlp", "conv-sparsemlp"])
def test_parse_arch(arch):
    enc, dec = parse_arch(arch)
    assert f"{enc}-{dec}" == arch or enc == dec == arch


@pytest.mark.parametrize("bad", ["lstm", "conv-lstm", "conv-mlp-mlp", "", "conv-"])
def test_parse_arch_rejects_unknown(bad):
    with pytest.raises(ValueError, match="sparsemlp") as err:
        parse_arch(bad)
    assert repr(bad) in str(err.value)


def test_default_hidden():
    assert default_hidden("conv", 4, 2) == 16
    assert default_hidden("sparsemlp", 4, 2) == 12
    assert default_hidden("mlp", 4, 2) == 0
    with pytest.raises(ValueError):
        default_hidden("rnn", 4, 2)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("k,r", KR)
def test_encoder_decoder_shapes(kind, k, r):
    hidden = default_hidden(kind, k, r)
    enc = make_encoder(kind, k, r, IN_SHAPE, hidden)
    dec = make_decoder(kind, k, r, OUT_SHAPE, hidden)
    assert enc(randn(2, k, *IN_SHAPE)).shape == (2, r, *IN_SHAPE)
    assert dec(randn(2, k + r, *OUT_SHAPE)).shape == (2, k, *OUT_SHAPE)


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("k,r", KR)
def test_codec_shapes(arch, k, r):
    codec = seeded_codec(arch, k, r)
    assert (codec.k, codec.r, codec.n) == (k, r, k + r)
    assert codec.parity(randn(2, k, *IN_SHAPE)).shape == (2, r, *IN_SHAPE)
    present = torch.ones(2, k + r, dtype=torch.bool)
    present[:, 0] = False
    assert codec.reconstruct(randn(2, k + r, *OUT_SHAPE), present).shape == (2, k, *OUT_SHAPE)


def test_wrong_piece_shape_is_rejected():
    codec = seeded_codec("conv", 2, 1)
    with pytest.raises(ValueError, match="expected"):
        codec.parity(randn(1, 2, 3, 10, 5))


def test_sparse_linear_matches_per_position_loop():
    torch.manual_seed(0)
    layer = SparseLinear(3, 5, positions=(4, 2))
    x = randn(6, 3, 4, 2)
    expected = torch.empty(6, 5, 4, 2)
    for h, w in itertools.product(range(4), range(2)):
        expected[:, :, h, w] = x[:, :, h, w] @ layer.weight[h, w].T + layer.bias[h, w]
    torch.testing.assert_close(layer(x), expected)


def test_sparse_linear_init_bound():
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, positions=(5, 5))
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= 0.25  # 1/sqrt(16)
        assert p.abs().max() > 0.2  # uniform over the whole range, not a narrower init


@pytest.mark.parametrize("kind", ARCHS)
def test_channels_are_independent(kind):
    torch.manual_seed(0)
    enc = make_encoder(kind, 2, 2, IN_SHAPE, default_hidden(kind, 2, 2))
    x = randn(1, 2, *IN_SHAPE)
    bumped = x.clone()
    bumped[:, :, 1] += randn(1, 2, *IN_SHAPE[1:], seed=1)
    diff = (enc(bumped) - enc(x)).abs().amax(dim=(0, 1, 3, 4))
    assert diff[1] > 1e-4
    assert diff[0] == 0 and diff[2] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruct_ignores_absent_values(arch):
    codec = seeded_codec(arch, 4, 2)
    outputs = randn(3, 6, *OUT_SHAPE)
    present = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 1, 1]]).bool()
    garbage = outputs.clone()
    garbage[~present] = 1e6 * randn(int((~present).sum()), *OUT_SHAPE, seed=2)
    garbage[0, 1, 0, 0, 0] = float("nan")
    garbage[1, 0, 0, 0, 0] = float("inf")
    torch.testing.assert_close(
        codec.reconstruct(garbage, present), codec.reconstruct(outputs, present)
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruct_keeps_present_systematic_outputs(arch):
    codec = seeded_codec(arch, 4, 2)
    outputs = randn(2, 6, *OUT_SHAPE)
    present = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]]).bool()
    rebuilt = codec.reconstruct(outputs, present)
    for b, i in itertools.product(range(2), range(4)):
        if present[b, i]:
            assert torch.equal(rebuilt[b, i], outputs[b, i])
        else:
            assert not torch.allclose(rebuilt[b, i], outputs[b, i])


def identity_block_outputs(scheme: LearnedScheme, pieces: torch.Tensor) -> dict:
    """Subtask outputs when the block is the identity and in/out shapes agree."""
    coded = scheme.encode(pieces)
    return {i: coded[i] for i in range(scheme.n)}


def square_scheme(arch: str = "sparsemlp", k: int = 4, r: int = 2) -> LearnedScheme:
    torch.manual_seed(0)
    return LearnedScheme(Codec(arch, k, r, OUT_SHAPE, OUT_SHAPE))


def test_decodable_with_any_k_of_n():
    scheme = square_scheme()
    for size in range(scheme.n + 1):
        for subset in itertools.combinations(range(scheme.n), size):
            assert scheme.decodable(subset) == (size >= 4), subset
    assert not scheme.decodable([0, 1, 2, 6, 7])  # out-of-range subtasks do not count


def test_encode_keeps_source_pieces_bit_identical():
    scheme = LearnedScheme(seeded_codec("conv", 4, 2))
    pieces = randn(4, *IN_SHAPE)
    coded = scheme.encode(pieces)
    assert coded.shape == (6, 1, *IN_SHAPE) and coded.is_contiguous()
    assert torch.equal(coded[:4, 0], pieces)
    torch.testing.assert_close(coded[4:, 0], scheme.codec.parity(pieces[None])[0].detach())
    assert not coded.requires_grad


def test_decode_with_all_systematic_is_exact_and_ignores_parity():
    scheme = square_scheme()
    outputs = identity_block_outputs(scheme, randn(4, *OUT_SHAPE))
    arrival = {5: outputs[5], 2: outputs[2], 0: outputs[0], 3: outputs[3], 1: outputs[1]}
    decoded, used = scheme.decode(arrival)
    arrival[5] = randn(1, *OUT_SHAPE, seed=9)
    again, _ = scheme.decode(arrival)
    expected = torch.cat([outputs[i] for i in range(4)])
    assert used == [0, 1, 2, 3]
    assert torch.equal(decoded, expected) and torch.equal(again, expected)


def test_decode_with_missing_systematic_uses_the_decoder():
    scheme = square_scheme()
    outputs = identity_block_outputs(scheme, randn(4, *OUT_SHAPE))
    arrival = {i: outputs[i] for i in (4, 2, 0, 5)}
    decoded, used = scheme.decode(arrival)
    assert used == [4, 2, 0, 5]
    assert decoded.shape == (4, *OUT_SHAPE)
    assert torch.equal(decoded[0], outputs[0][0]) and torch.equal(decoded[2], outputs[2][0])
    stacked = torch.stack(
        [outputs[i][0] if i in arrival else torch.zeros(OUT_SHAPE) for i in range(6)]
    )
    present = torch.tensor([[i in arrival for i in range(6)]])
    torch.testing.assert_close(decoded, scheme.codec.reconstruct(stacked[None], present)[0])


def test_decode_below_k_raises():
    scheme = square_scheme()
    outputs = identity_block_outputs(scheme, randn(4, *OUT_SHAPE))
    with pytest.raises(DecodeError):
        scheme.decode({i: outputs[i] for i in (0, 1, 5)})


def test_meta_round_trip():
    codec = seeded_codec("conv-sparsemlp", 4, 2, hidden_enc=5, hidden_dec=7)
    meta = json.loads(json.dumps(codec.meta()))
    assert meta["arch"] == "conv-sparsemlp" and (meta["hidden_enc"], meta["hidden_dec"]) == (5, 7)
    torch.manual_seed(123)
    rebuilt = Codec.from_meta(meta)
    rebuilt.load_state_dict(codec.state_dict())
    pieces, outputs = randn(2, 4, *IN_SHAPE), randn(2, 6, *OUT_SHAPE)
    present = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 0, 1]]).bool()
    assert torch.equal(rebuilt.parity(pieces), codec.parity(pieces))
    assert torch.equal(rebuilt.reconstruct(outputs, present), codec.reconstruct(outputs, present))


def test_meta_canonicalises_arch_and_mlp_width():
    codec = seeded_codec("mlp-mlp", 2, 1, hidden_enc=99)
    assert codec.meta()["arch"] == "mlp" and codec.meta()["hidden_enc"] == 0


def test_counts_sparsemlp_by_hand():
    enc = make_encoder("sparsemlp", 2, 1, (3, 2, 2), hidden=4)
    # 4 positions x (2->4, 4->4, 4->1 weights + biases) = 4 * (12 + 20 + 5)
    assert count_params(enc) == 148
    # 3 channels x 4 positions x (2*4 + 4*4 + 4*1) MACs, doubled
    assert count_flops(enc, (1, 2, 3, 2, 2)) == 672


def test_counts_conv_by_hand():
    enc = make_encoder("conv", 2, 1, (1, 3, 3), hidden=2)
    # six 3x3 convs 2->2 (36 weights + 2 biases each), then a 1x1 conv 2->1 (2 + 1)
    assert count_params(enc) == 231
    # six 3x3 convs: 2 out channels x 9 positions x 18 fan-in; 1x1: 9 x 2; doubled
    assert count_flops(enc, (1, 2, 1, 3, 3)) == 3924


def test_counts_mlp_by_hand():
    enc = make_encoder("mlp", 2, 1, (2, 2, 3), hidden=0)
    # Linear(12, 12) + Linear(12, 6): 156 + 78; two channels, batch 1: 2 * 2 * (144 + 72)
    assert count_params(enc) == 234
    assert count_flops(enc, (1, 2, 2, 2, 3)) == 864
    assert mlp_params(encoder_mlp_widths(2, 1, (2, 2, 3))) == 234
    assert mlp_flops(encoder_mlp_widths(2, 1, (2, 2, 3)), channels=2) == 864


def test_mlp_formulas_match_the_built_decoder():
    dec = make_decoder("mlp", 4, 2, OUT_SHAPE, hidden=0)
    widths = decoder_mlp_widths(4, 2, OUT_SHAPE)
    assert count_params(dec) == mlp_params(widths)
    assert count_flops(dec, (3, 6, *OUT_SHAPE)) == mlp_flops(widths, OUT_SHAPE[0], batch=3)


def missing_piece_mse(codec: Codec, x: torch.Tensor, missing: int) -> torch.Tensor:
    """Identity block: outputs are the coded inputs; erase source piece ``missing``."""
    outputs = torch.cat([x, codec.parity(x)], dim=1)
    present = torch.ones(x.shape[0], codec.n, dtype=torch.bool)
    present[:, missing] = False
    estimate = codec.reconstruct(outputs, present)
    return (estimate[:, missing] - x[:, missing]).pow(2).mean()


def mean_missing_mse(codec: Codec, x: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(missing_piece_mse(codec, x, i).item() for i in range(codec.k)) / codec.k


def test_sparsemlp_learns_identity_parity():
    shape = (2, 4, 3)
    torch.manual_seed(0)
    codec = Codec("sparsemlp", 2, 1, shape, shape)
    gen = torch.Generator().manual_seed(0)
    held_out = torch.randn(256, 2, *shape, generator=gen)
    initial = mean_missing_mse(codec, held_out)
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    for _ in range(300):
        batch = torch.randn(32, 2, *shape, generator=gen)
        missing = int(torch.randint(2, (1,), generator=gen))
        loss = missing_piece_mse(codec, batch, missing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_missing_mse(codec, held_out) < 0.2 * initial


# --------------------------------------------------------------------------- the fast path


def per_channel(chain, x: torch.Tensor) -> torch.Tensor:
    """ChannelWise's plain path: the core's layers (SparseLinear's einsum) per channel."""
    batch, pieces, channels, height, width = x.shape
    flat = x.transpose(1, 2).reshape(batch * channels, pieces, height, width)
    y = chain.core(flat)
    return y.reshape(batch, channels, -1, height, width).transpose(1, 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_chain_equals_the_per_channel_einsum(batch):
    torch.manual_seed(0)
    enc = make_encoder("sparsemlp", 4, 2, IN_SHAPE, hidden=6)
    dec = make_decoder("sparsemlp", 4, 2, OUT_SHAPE, hidden=5)
    assert enc.sparse and dec.sparse
    for chain, shape, pieces in [(enc, IN_SHAPE, 4), (dec, OUT_SHAPE, 6)]:
        x = torch.randn(batch, pieces, *shape)
        assert torch.allclose(chain(x), per_channel(chain, x), atol=1e-6)


def test_sparse_chain_trains_like_the_einsum():
    """Gradients through the position-major path equal the plain path's."""
    torch.manual_seed(1)
    dec = make_decoder("sparsemlp", 2, 1, OUT_SHAPE, hidden=4)
    x = torch.randn(2, 3, *OUT_SHAPE)
    fast = torch.autograd.grad(dec(x).square().sum(), list(dec.parameters()))
    plain = torch.autograd.grad(per_channel(dec, x).square().sum(), list(dec.parameters()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast, plain, strict=True))


@pytest.mark.parametrize("arch", ["sparsemlp", "conv-mlp", "conv-sparsemlp", "mlp"])
def test_decode_one_equals_reconstruct_for_every_erasure(arch):
    """The master's decode (only missing rows, written straight from the arrivals)
    rebuilds exactly what the batched reconstruct does, for every pattern of 4 of 6."""
    torch.manual_seed(2)
    codec = Codec(arch, 4, 2, IN_SHAPE, OUT_SHAPE).eval()
    outs = torch.randn(1, 6, *OUT_SHAPE)
    for lost in itertools.chain(
        [()], itertools.combinations(range(6), 1), itertools.combinations(range(6), 2)
    ):
        arrived = {i: outs[:, i] for i in range(6) if i not in lost}
        present = torch.tensor([[i not in lost for i in range(6)]])
        with torch.no_grad():
            want = codec.reconstruct(outs, present)[0]
            got = codec.decode_one(arrived)
        assert torch.allclose(got, want, atol=1e-6), lost
        for i in range(4):
            if i not in lost:
                assert torch.equal(got[i], outs[0, i])  # present sources untouched
