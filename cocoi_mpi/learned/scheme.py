"""Learned (non-linear) erasure codes over conv-block pieces.

A conv block with ReLUs is not linear, so the MDS trick of linear.py does not apply.
Instead a small encoder network makes r parity input pieces from the k source pieces,
workers run the block on all n = k + r pieces, and a decoder network estimates the
missing source outputs from whatever arrived (zeros stand in for the rest).

Three architectures, each applied to every channel separately with shared weights:
- ``mlp`` (Tables I/II of the learned-code paper): fully connected over all k pieces.
- ``conv`` (same tables): 3x3 convs with growing dilation over the k pieces as channels.
- ``sparsemlp`` (CoCoI non-linear draft): a small MLP per spatial position, i.e.
  fully connected across pieces but with a separate weight at each (h, w).

The code is systematic: the first k subtasks carry the source pieces unchanged, so
when they all arrive decoding is exact and the decoder is not run.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch
from torch import nn

from ..codes.base import DecodeError, Scheme

ARCHS = ("mlp", "conv", "sparsemlp")
CONV_DILATIONS = (1, 1, 2, 4, 8, 1)  # the 3x3 layers of Table I; a 1x1 conv follows
CONV_HIDDEN = 16

Shape = tuple[int, int, int]


def parse_arch(arch: str) -> tuple[str, str]:
    """'sparsemlp' -> both sides sparsemlp; 'conv-mlp' -> conv encoder, mlp decoder."""
    parts = arch.split("-")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p not in ARCHS for p in parts):
        raise ValueError(
            f"unknown codec architecture {arch!r}; use one of {', '.join(ARCHS)} "
            "or 'ENCODER-DECODER' built from them (e.g. conv-sparsemlp)"
        )
    return parts[0], parts[1]


def canonical_arch(encoder: str, decoder: str) -> str:
    """One spelling per pair, so equal codecs have equal names in metadata."""
    return encoder if encoder == decoder else f"{encoder}-{decoder}"


def check_kind(kind: str) -> None:
    if kind not in ARCHS:
        raise ValueError(f"unknown network kind {kind!r}; use one of {', '.join(ARCHS)}")


def default_hidden(kind: str, k: int, r: int) -> int:
    """Hidden width: channels for conv, features per position for sparsemlp; mlp has none."""
    check_kind(kind)
    if kind == "conv":
        return CONV_HIDDEN
    if kind == "sparsemlp":
        return 2 * (k + r)
    return 0


class SparseLinear(nn.Module):
    """A linear map across features with its own weight at every spatial position.

    y[..., o, h, w] = sum_i W[h, w, o, i] x[..., i, h, w] + b[h, w, o]; one einsum, so
    the cost is that of a batched matmul, not a Python loop over positions.
    """

    def __init__(self, in_features: int, out_features: int, positions: tuple[int, int]):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.positions = tuple(positions)
        height, width = self.positions
        self.weight = nn.Parameter(torch.empty(height, width, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(height, width, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform +-1/sqrt(in), the scale nn.Linear starts from."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hwoi,...ihw->...ohw", self.weight, x) + self.bias.permute(2, 0, 1)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, positions={self.positions}"


class ChannelWise(nn.Module):
    """Runs ``core`` on every channel separately, with the pieces as its channels.

    (B, p_in, C, H, W) -> (B*C, p_in, H, W) -> core -> (B, p_out, C, H, W): channels
    share weights, so the network size does not grow with the block's width.
    """

    def __init__(self, core: nn.Module, pieces_in: int, pieces_out: int, shape: Shape):
        super().__init__()
        self.core = core
        self.pieces_in, self.pieces_out, self.shape = pieces_in, pieces_out, tuple(shape)
        self.sparse = is_sparse_chain(core)  # SparseMLP: runs position-major (sparse_chain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.pieces_in, *self.shape):
            raise ValueError(
                f"expected (B, {self.pieces_in}, {', '.join(map(str, self.shape))}), "
                f"got {tuple(x.shape)}"
            )
        if self.sparse:
            return sparse_chain(self.core, x)
        batch, _, channels, height, width = x.shape
        per_channel = x.transpose(1, 2).reshape(batch * channels, self.pieces_in, height, width)
        y = self.core(per_channel)
        return y.reshape(batch, channels, self.pieces_out, height, width).transpose(1, 2)


def is_sparse_chain(core: nn.Module) -> bool:
    """A SparseMLP core: SparseLinear layers with a ReLU between each two (sparse_core)."""
    if not isinstance(core, nn.Sequential) or not len(core) % 2:
        return False
    return all(isinstance(m, SparseLinear if i % 2 == 0 else nn.ReLU) for i, m in enumerate(core))


def sparse_chain(
    core: nn.Sequential, x: torch.Tensor, last_rows: list[int] | None = None
) -> torch.Tensor:
    """A SparseMLP core on (B, p_in, C, H, W) pieces, position-major throughout.

    Equal to running each SparseLinear's einsum per channel (tests check it), but the
    features move once into a contiguous (H*W, p, B*C) layout, every layer is one
    batched matmul of each position's own (out, in) weight, as stored, with its
    (B*C)-wide block of features, bias added and ReLU applied in place, and the result
    moves back once at the end. The einsum permutes in and out at every layer and
    handed its matmul a transposed weight and, with one sample, a layout whose batch
    stride is 1: on VGG16's first block this path decodes several times faster.

    ``last_rows``: compute only these outputs of the last layer (the master rebuilding
    just the missing pieces); the result then has ``len(last_rows)`` pieces.
    """
    batch, pieces, channels, height, width = x.shape
    positions = height * width
    y = x.permute(3, 4, 1, 0, 2).reshape(positions, pieces, batch * channels).contiguous()
    linears = [m for m in core if isinstance(m, SparseLinear)]
    for index, module in enumerate(linears):
        weight = module.weight.reshape(positions, module.out_features, module.in_features)
        bias = module.bias.reshape(positions, module.out_features, 1)
        if last_rows is not None and index == len(linears) - 1:
            weight, bias = weight[:, last_rows], bias[:, last_rows]
        y = torch.bmm(weight, y)
        y.add_(bias)
        if index < len(linears) - 1:
            y.relu_()
    out = y.reshape(height, width, -1, batch, channels)
    return out.permute(3, 2, 4, 0, 1)


def encoder_mlp_widths(k: int, r: int, shape: Shape) -> list[int]:
    """Table I MLPEncoder: kHW -> kHW -> rHW."""
    plane = shape[1] * shape[2]
    return [k * plane, k * plane, r * plane]


def decoder_mlp_widths(k: int, r: int, shape: Shape) -> list[int]:
    """Table II MLPDecoder: nHW -> kHW -> kHW -> kHW (on the output piece plane)."""
    plane = shape[1] * shape[2]
    return [(k + r) * plane, k * plane, k * plane, k * plane]


def mlp_params(widths: list[int]) -> int:
    """Weights and biases of the Linear chain ``widths`` (known without building it)."""
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def mlp_flops(widths: list[int], channels: int, batch: int = 1) -> int:
    """2 * MACs of the Linear chain run once per channel and sample."""
    return 2 * batch * channels * sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def with_relus(layers: list[nn.Module]) -> list[nn.Module]:
    """ReLU between layers, none after the last: outputs may be negative."""
    out: list[nn.Module] = []
    for layer in layers:
        out += [layer, nn.ReLU()]
    return out[:-1]


def mlp_core(widths: list[int], pieces_out: int, shape: Shape) -> nn.Module:
    linears = [nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)]
    unflatten = nn.Unflatten(1, (pieces_out, shape[1], shape[2]))
    return nn.Sequential(nn.Flatten(1), *with_relus(linears), unflatten)


def conv_core(pieces_in: int, pieces_out: int, hidden: int) -> nn.Module:
    """Table I/II ConvEncoder/ConvDecoder; padding = dilation keeps H and W."""
    layers: list[nn.Module] = []
    channels = pieces_in
    for dilation in CONV_DILATIONS:
        layers += [nn.Conv2d(channels, hidden, 3, padding=dilation, dilation=dilation), nn.ReLU()]
        channels = hidden
    return nn.Sequential(*layers, nn.Conv2d(hidden, pieces_out, 1))


def sparse_core(pieces_in: int, pieces_out: int, hidden: int, positions) -> nn.Module:
    widths = [pieces_in, hidden, hidden, pieces_out]
    layers = [SparseLinear(a, b, positions) for a, b in zip(widths, widths[1:], strict=False)]
    return nn.Sequential(*with_relus(layers))


def make_core(kind, pieces_in, pieces_out, shape: Shape, hidden: int, widths) -> nn.Module:
    check_kind(kind)
    if kind != "mlp" and hidden < 1:
        raise ValueError(f"{kind} needs a hidden width >= 1, got {hidden}")
    if kind == "mlp":
        return mlp_core(widths, pieces_out, shape)
    if kind == "conv":
        return conv_core(pieces_in, pieces_out, hidden)
    return sparse_core(pieces_in, pieces_out, hidden, shape[1:])


def make_encoder(kind: str, k: int, r: int, shape: Shape, hidden: int) -> nn.Module:
    """(B, k, C, H, W) -> (B, r, C, H, W); ``shape`` is the input piece (C, H, W)."""
    core = make_core(kind, k, r, shape, hidden, encoder_mlp_widths(k, r, shape))
    return ChannelWise(core, k, r, shape)


def make_decoder(kind: str, k: int, r: int, shape: Shape, hidden: int) -> nn.Module:
    """(B, k+r, C_o, H_o, W_o) -> (B, k, C_o, H_o, W_o); ``shape`` is the output piece."""
    core = make_core(kind, k + r, k, shape, hidden, decoder_mlp_widths(k, r, shape))
    return ChannelWise(core, k + r, k, shape)


def check_shape(name: str, shape) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be a positive (C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


class Codec(nn.Module):
    """An encoder/decoder pair for one block: k source pieces, r parity pieces."""

    def __init__(
        self,
        arch: str,
        k: int,
        r: int,
        in_shape,
        out_shape,
        hidden_enc: int | None = None,
        hidden_dec: int | None = None,
    ):
        super().__init__()
        if k < 1 or r < 1:
            raise ValueError(f"need k >= 1 and r >= 1, got k={k}, r={r}")
        enc_kind, dec_kind = parse_arch(arch)
        self.arch = canonical_arch(enc_kind, dec_kind)
        self.k, self.r, self.n = k, r, k + r
        self.in_shape = check_shape("in_shape", in_shape)
        self.out_shape = check_shape("out_shape", out_shape)
        self.hidden_enc = resolve_hidden(enc_kind, k, r, hidden_enc)
        self.hidden_dec = resolve_hidden(dec_kind, k, r, hidden_dec)
        self.encoder = make_encoder(enc_kind, k, r, self.in_shape, self.hidden_enc)
        self.decoder = make_decoder(dec_kind, k, r, self.out_shape, self.hidden_dec)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def parity(self, pieces: torch.Tensor) -> torch.Tensor:
        """(B, k, C, H, W) -> (B, r, C, H, W) in the pieces' dtype."""
        return self.encoder(pieces.to(self.dtype)).to(pieces.dtype)

    def reconstruct(self, outputs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, n, C_o, H_o, W_o) outputs, (B, n) bool -> (B, k, C_o, H_o, W_o) estimate.

        Absent entries are replaced by zeros with ``where`` (not a multiply), so even
        NaN or inf left there cannot reach the decoder. Present source outputs are
        returned as they are; only missing ones come from the decoder.
        """
        if present.shape != outputs.shape[:1] + (self.n,):
            raise ValueError(f"present must be (B, {self.n}), got {tuple(present.shape)}")
        mask = present.bool()[:, :, None, None, None]
        masked = torch.where(mask, outputs, torch.zeros((), dtype=outputs.dtype))
        estimate = self.decoder(masked.to(self.dtype)).to(outputs.dtype)
        return torch.where(mask[:, : self.k], outputs[:, : self.k], estimate)

    def meta(self) -> dict:
        """JSON-able description, enough to rebuild an identically shaped codec."""
        return {
            "arch": self.arch,
            "k": self.k,
            "r": self.r,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "hidden_enc": self.hidden_enc,
            "hidden_dec": self.hidden_dec,
        }

    @classmethod
    def from_meta(cls, meta: Mapping) -> Codec:
        return cls(
            meta["arch"],
            int(meta["k"]),
            int(meta["r"]),
            tuple(meta["in_shape"]),
            tuple(meta["out_shape"]),
            meta.get("hidden_enc"),
            meta.get("hidden_dec"),
        )

    def decode_one(self, outputs: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """(k, C_o, H_o, W_o) source outputs of one round from the subtask outputs that
        arrived (index -> (1, C_o, H_o, W_o) or (C_o, H_o, W_o)), computing only the
        missing ones: a SparseMLP decoder gets its position-major input written straight
        from the arrived outputs (no zero-filled stack, no masking pass) and runs its
        last layer for the missing rows alone; present source outputs are copied. Equal
        to :meth:`reconstruct` (tests check it); other decoders run it."""
        channels, height, width = self.out_shape
        some = next(iter(outputs.values()))
        if not self.decoder.sparse:
            stacked = torch.zeros((1, self.n, *self.out_shape), dtype=some.dtype)
            present = torch.zeros((1, self.n), dtype=torch.bool)
            for i, out in outputs.items():
                stacked[0, i], present[0, i] = out.reshape(self.out_shape), True
            return self.reconstruct(stacked, present)[0]
        missing = [i for i in range(self.k) if i not in outputs]
        result = torch.empty((self.k, *self.out_shape), dtype=some.dtype)
        for i in range(self.k):
            if i in outputs:
                result[i] = outputs[i].reshape(self.out_shape)
        if not missing:
            return result
        features = torch.empty((height, width, self.n, 1, channels), dtype=self.dtype)
        for i in range(self.n):  # every slot written once: arrived outputs, zeros for the rest
            if i in outputs:
                features[:, :, i, 0] = outputs[i].reshape(self.out_shape).permute(1, 2, 0)
            else:
                features[:, :, i].zero_()
        pieces = features.permute(3, 2, 4, 0, 1)  # (1, n, C, H, W) view, position-major
        rows = sparse_chain(self.decoder.core, pieces, last_rows=missing)[0]
        result[missing] = rows.to(some.dtype)
        return result


def resolve_hidden(kind: str, k: int, r: int, hidden: int | None) -> int:
    """The default when unset; mlp has no width to choose, so it is always 0."""
    if kind == "mlp" or hidden is None:
        return default_hidden(kind, k, r)
    return int(hidden)


class LearnedScheme(Scheme):
    """Systematic learned code: any k of n outputs give an estimate, the first k are exact."""

    name = "learned"
    pieces_per_task = 1
    systematic = True  # rows 0..k-1 are the pieces themselves: all back means no decoding

    def __init__(self, codec: Codec):
        self.codec = codec
        self.k, self.n = codec.k, codec.n

    def encode(self, pieces: torch.Tensor) -> torch.Tensor:
        """(k, C, H, W) -> (n, 1, C, H, W): the source pieces as they are, then parity."""
        if tuple(pieces.shape) != (self.k, *self.codec.in_shape):
            expected = (self.k, *self.codec.in_shape)
            raise ValueError(f"expected pieces of shape {expected}, got {tuple(pieces.shape)}")
        with torch.no_grad():
            parity = self.codec.parity(pieces.unsqueeze(0))[0]
        return torch.cat([pieces, parity]).unsqueeze(1).contiguous()

    def decodable(self, arrived: Collection[int]) -> bool:
        return len({i for i in arrived if 0 <= i < self.n}) >= self.k

    def decode(self, outputs: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        if not self.decodable(outputs):
            raise DecodeError(f"{self.describe()} needs {self.k} outputs, got {len(outputs)}")
        if all(i in outputs for i in range(self.k)):
            return torch.cat([outputs[i] for i in range(self.k)]), list(range(self.k))
        used = list(outputs)
        if any(not 0 <= i < self.n for i in used):
            raise ValueError(f"{self.describe()} has subtasks 0..{self.n - 1}, got {used}")
        with torch.no_grad():
            return self.codec.decode_one(outputs), used

    def describe(self) -> str:
        return f"{self.name}-{self.codec.arch}(n={self.n}, k={self.k})"


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


FLOP_LAYERS = (nn.Conv2d, nn.Linear, SparseLinear)


def layer_macs(layer: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call, from its output size and fan-in."""
    if isinstance(layer, nn.Conv2d):
        fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    else:
        fan_in = layer.in_features
    return output.numel() * fan_in


def count_flops(module: nn.Module, input_shape: tuple) -> int:
    """2 * MACs of the Conv2d, Linear and SparseLinear calls on a zero input.

    Measured with forward hooks, so it counts what forward really runs (reshapes
    into per-channel batches included); biases and ReLUs are not counted.
    """
    macs = [0]

    def hook(layer, _inputs, output):
        macs[0] += layer_macs(layer, output)

    def sparse_hook(wise, inputs, _output):  # sparse_chain runs no SparseLinear.forward
        batch, _, channels, height, width = inputs[0].shape
        fan = sum(m.in_features * m.out_features for m in wise.core if isinstance(m, SparseLinear))
        macs[0] += batch * channels * height * width * fan

    chains = [m for m in module.modules() if isinstance(m, ChannelWise) and m.sparse]
    inside = {id(layer) for chain in chains for layer in chain.core}
    layers = [m for m in module.modules() if isinstance(m, FLOP_LAYERS) and id(m) not in inside]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    handles += [chain.register_forward_hook(sparse_hook) for chain in chains]
    try:
        dtype = next(module.parameters()).dtype
        with torch.no_grad():
            module(torch.zeros(input_shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * macs[0]
