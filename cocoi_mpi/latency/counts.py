"""The scales N of one layer (or conv block) split into k: CoCoI eq. 8-12, appendix C.

Pure numpy. The scales of one layer split into k (eq. 8-12) are generalised to m
width pieces per subtask (m = 2 for the ``rotation`` code, whose generator is
(n*m x k*m)). The runtime cuts k*m pieces of ceil(W_O/(k*m)) columns that cover the
whole width (the paper's floor leaves columns for the master, footnote 2). With
m = 1 and k*m dividing W_O every count is the paper's. The phase times they scale are
in :mod:`cocoi_mpi.latency.profile`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry.split import AxisGeom, block_subtask, equal_pieces

if TYPE_CHECKING:
    from ..geometry.conv import ConvSpec

BYTES_PER_VALUE = 4  # float32 feature maps (the 4 in eq. 10-11)


# --------------------------------------------------------------------------- shapes, eq. 8-12


@dataclass(frozen=True)
class LayerShape:
    """One conv's geometry as the latency model needs it (batch B = 1).

    ``h_in`` is the unpadded input height (what is transmitted: workers pad the
    height), ``w_in`` the width after the layer's width padding ``pad_w``.
    """

    c_in: int
    h_in: int
    w_in: int
    c_out: int
    h_out: int
    w_out: int
    k_h: int
    k_w: int
    stride_w: int = 1
    dilation_w: int = 1
    groups: int = 1
    pad_w: tuple[int, int] = (0, 0)
    name: str = ""

    def __post_init__(self) -> None:
        ints = (self.c_in, self.h_in, self.w_in, self.c_out, self.h_out, self.w_out)
        if min(ints) < 1 or min(self.k_h, self.k_w, self.stride_w, self.dilation_w) < 1:
            raise ValueError(f"non-positive size in {self}")
        if (self.w_in - self.span) // self.stride_w + 1 != self.w_out:
            raise ValueError(f"w_out={self.w_out} does not follow from w_in={self.w_in} in {self}")

    @property
    def span(self) -> int:
        """Input columns one output column reads: dilation*(K_w - 1) + 1."""
        return self.dilation_w * (self.k_w - 1) + 1

    @property
    def width_geom(self) -> AxisGeom:
        return AxisGeom(self.k_w, self.stride_w, self.dilation_w, *self.pad_w)

    @property
    def flops_per_column(self) -> float:
        """FLOPs of one output column: C_out*H_out*2*C_in*K_h*K_w/groups."""
        return self.c_out * self.h_out * 2.0 * self.c_in * self.k_h * self.k_w / self.groups

    @property
    def local_flops(self) -> float:
        """FLOPs of the whole layer on the master (appendix A's local run)."""
        return self.flops_per_column * self.w_out

    def max_k(self, m: int = 1) -> int:
        """Largest k whose k*m pieces are at least one output column each."""
        return self.w_out // m

    @classmethod
    def conv(
        cls,
        c_in: int,
        h: int,
        w: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        name: str = "",
    ) -> LayerShape:
        """From Conv2d-style arguments and the unpadded input size (symmetric padding)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            _pair(kernel),
            _pair(stride),
            _pair(padding),
            _pair(dilation),
        )
        h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return cls(c_in, h, w + 2 * pw, c_out, h_out, w_out, kh, kw, sw, dw, groups, (pw, pw), name)

    @classmethod
    def from_spec(cls, spec: ConvSpec, height: int, width: int) -> LayerShape:
        """From a :class:`cocoi_mpi.geometry.conv.ConvSpec` and its unpadded input size."""
        c_out, c_in_g, kh, kw = (int(s) for s in spec.weight.shape)
        hg, wg = spec.height_geom, spec.width_geom
        return cls(
            c_in=c_in_g * spec.groups,
            h_in=height,
            w_in=width + wg.pad_before + wg.pad_after,
            c_out=c_out,
            h_out=hg.out_size(height),
            w_out=wg.out_size(width),
            k_h=kh,
            k_w=kw,
            stride_w=wg.stride,
            dilation_w=wg.dilation,
            groups=spec.groups,
            pad_w=(wg.pad_before, wg.pad_after),
            name=spec.name,
        )


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Counts:
    """Scales N of the five phases (eq. 8-12); arrays over k when k is an array.

    ``rest`` is not in the paper: the FLOPs of columns the master computes itself while
    the workers run (footnote 2), modelled as max(T^w_{n:k}, T^rest). A conv's pieces
    now cover its whole width (ceil widths, the last cropped), so it is 0 for convs; a
    learned-code block (equal floor-width pieces, trained for that width) keeps one.
    """

    enc: np.ndarray
    cmp: np.ndarray
    rec: np.ndarray
    sen: np.ndarray
    dec: np.ndarray
    rest: np.ndarray | float = 0.0
    code_bytes: np.ndarray | float = 0.0  # bytes the master's coding touches (0: FLOP-priced)

    def at(self, idx: Any) -> Counts:
        """The counts of some of the k values (indexing every field alike)."""
        return Counts(*(np.asarray(getattr(self, f))[idx] for f in _COUNT_FIELDS))


_COUNT_FIELDS = ("enc", "cmp", "rec", "sen", "dec", "rest", "code_bytes")


def piece_width(shape: LayerShape, k: Any, m: int = 1, relaxed: bool = False) -> np.ndarray:
    """W_O^p(k) = ceil(W_O/(k*m)), as the runtime cuts (pieces cover the whole width,
    the last one cropped); W_O/(k*m) when ``relaxed`` (section IV-A)."""
    k = np.asarray(k, dtype=float)
    w = shape.w_out / (k * m)
    return w if relaxed else np.ceil(w)


def layer_counts(shape: LayerShape, n: int, k: Any, m: int = 1, relaxed: bool = False) -> Counts:
    """N^enc, N^cmp, N^rec, N^sen, N^dec of one conv split into k (eq. 8-12, m pieces).

    W_I^p = span + (W_O^p - 1)*stride is the padded input width of one piece, so the
    halo overlap between pieces (appendix C's I_ov) is part of N^rec and N^enc.
    """
    w_op = piece_width(shape, k, m, relaxed)
    if not relaxed and np.any(np.asarray(k) * m > shape.w_out):
        raise ValueError(f"{shape.name or 'layer'}: k*m exceeds the output width {shape.w_out}")
    k = np.asarray(k, dtype=float)
    w_ip = shape.span + (w_op - 1.0) * shape.stride_w
    plane_in = shape.c_in * shape.h_in * w_ip
    plane_out = shape.c_out * shape.h_out * w_op
    km = k * m
    return Counts(
        enc=2.0 * km * (n * m) * plane_in,
        cmp=m * shape.flops_per_column * w_op,
        rec=float(BYTES_PER_VALUE * m) * plane_in,
        sen=float(BYTES_PER_VALUE * m) * plane_out,
        dec=2.0 * km**2 * plane_out,
        rest=np.zeros_like(w_op),  # the pieces cover the width: nothing left for the master
        code_bytes=coding_bytes(n, k, m, plane_in, plane_out),
    )


def coding_bytes(n: int, k: Any, m: int, plane_in: Any, plane_out: Any) -> np.ndarray:
    """Bytes the master's coding of one round touches, as the runtime does it.

    Cut: read + write the k*m source pieces into their send buffers. Encode: read the
    sources, write the parities (n - k for the systematic m = 1 code; n*m coded pieces
    otherwise). Decode: read the k*m used outputs, write the missing pieces (expected
    k(n-k)/n of them when any k of n arrive first in random order; all k*m for a
    non-systematic code). Place: read + write every output piece."""
    k = np.asarray(k, dtype=float)
    km = k * m
    if m == 1:
        encode = (km + (n - k)) * plane_in
        decode = (km + k * (n - k) / n) * plane_out
    else:
        encode = (km + n * m) * plane_in
        decode = 2.0 * km * plane_out
    cut, place = 2.0 * km * plane_in, 2.0 * km * plane_out
    return BYTES_PER_VALUE * (cut + encode + decode + place)


def block_counts(layers: Sequence[LayerShape], n: int, k: Any, m: int = 1) -> Counts:
    """Counts of a conv block (several convs in a row) split into k*m output pieces.

    Each piece's block input range comes from :func:`cocoi_mpi.geometry.split.block_subtask`;
    its per-layer widths follow from running the chain forward on that slice. The
    pieces differ at the edges (padding), so the widest piece sets W_I^p (the coded
    inputs must have one shape) and the costliest sets N^cmp. A one-layer block gives
    exactly :func:`layer_counts`.
    """
    if not layers:
        raise ValueError("a block needs at least one conv")
    geoms = [s.width_geom for s in layers]
    in_size = layers[0].w_in - sum(layers[0].pad_w)
    first, last = layers[0], layers[-1]
    ks = np.atleast_1d(np.asarray(k, dtype=int))
    out = {f: np.empty(ks.shape) for f in _COUNT_FIELDS}
    for i, kk in enumerate(ks):
        ranges, rest = equal_pieces(last.w_out, int(kk) * m)
        w_in_max, flops_max = 0, 0.0
        for rng in ranges:
            width, flops = _block_piece(layers, geoms, in_size, rng)
            w_in_max, flops_max = max(w_in_max, width), max(flops_max, flops)
        out["rest"][i] = 0.0 if rest is None else _block_piece(layers, geoms, in_size, rest)[1]
        w_op = ranges[0][1] - ranges[0][0]
        plane_in = first.c_in * first.h_in * w_in_max
        plane_out = last.c_out * last.h_out * w_op
        km = kk * m
        out["enc"][i] = 2.0 * km * (n * m) * plane_in
        out["cmp"][i] = m * flops_max
        out["rec"][i] = BYTES_PER_VALUE * m * plane_in
        out["sen"][i] = BYTES_PER_VALUE * m * plane_out
        out["dec"][i] = 2.0 * km**2 * plane_out
    if np.ndim(k) == 0:
        return Counts(*(out[f][0] for f in _COUNT_FIELDS))
    return Counts(*(out[f] for f in _COUNT_FIELDS))


def _block_piece(
    layers: Sequence[LayerShape], geoms: Sequence[AxisGeom], in_size: int, out: tuple[int, int]
) -> tuple[int, float]:
    """(padded input width, FLOPs) of one block output range, layer by layer."""
    sub = block_subtask(geoms, in_size, out)
    flops, w = 0.0, sub.in_width
    for shape, (left, right) in zip(layers, sub.pads, strict=True):
        w = (w + left + right - shape.span) // shape.stride_w + 1
        flops += shape.flops_per_column * w
    return sub.in_width + sub.pads[0][0] + sub.pads[0][1], flops


CountsFn = Callable[[np.ndarray], Counts]


def counts_fn(
    shape: LayerShape | Sequence[LayerShape], n: int, m: int = 1, relaxed: bool = False
) -> CountsFn:
    """k -> Counts for a layer or a block, so the functions below accept either."""
    if isinstance(shape, LayerShape):
        return lambda k: layer_counts(shape, n, k, m, relaxed)
    if relaxed:
        raise ValueError("relaxed counts are defined for single layers only")
    layers = tuple(shape)
    return lambda k: block_counts(layers, n, k, m)


def max_feasible_k(
    shape: LayerShape | Sequence[LayerShape], n: int, m: int = 1, failures: int = 0
) -> int:
    """Largest k with k*m output pieces of >= 1 column and k <= live workers (0: none)."""
    last = shape if isinstance(shape, LayerShape) else shape[-1]
    return max(0, min(n - failures, last.w_out // m))


def counts_for_spec(spec: ConvSpec, height: int, width: int, n: int, k: int, m: int) -> Counts:
    """What the runtime records per round: eq. 8-12 for a ConvSpec on an (H, W) input."""
    return layer_counts(LayerShape.from_spec(spec, height, width), n, k, m)
