"""Latency model of one coded layer: CoCoI sections III-IV and appendices C, D, F.

Pure numpy, no I/O besides :meth:`Profile.save` / :meth:`Profile.load`.

Every phase time follows the shift-exponential F_SE(t; mu, theta, N) of eq. 7: a
minimum N*theta plus an exponential excess of mean N/mu, where N is the phase's scale
(FLOPs for computation, bytes for transmission). The scales of one layer split into k
(eq. 8-12) are generalised to m width pieces per subtask (m = 2 for the ``rotation``
code, whose generator is (n*m x k*m)). The runtime cuts k*m pieces of
ceil(W_O/(k*m)) columns that cover the whole width (the paper's floor leaves columns
for the master, footnote 2). With m = 1 and k*m dividing W_O every count is the paper's.

- :func:`approx_latency` is L(k) of eq. 16 (the overlap term h4 of eq. 18 included,
  because N^rec is computed from the true piece width W_I^p).
- :func:`k_circ` minimises the relaxed, convex L on [1, n) (Lemma 1) by golden-section
  search and then compares floor and ceil (eq. 17).
- :func:`mc_latency` estimates E[T^c(k)] (eq. 5, 6, 13) by Monte Carlo for all k at
  once; :func:`k_star` is its argmin.
- :func:`uncoded_latency` is eq. 20 (appendix F): all n pieces of W_O/n must return.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry.split import AxisGeom, block_subtask, equal_pieces

if TYPE_CHECKING:
    from ..geometry.conv import ConvSpec

PHASES = ("m", "rec", "cmp", "sen")
CODE_PHASE = "code"  # optional: the master's coding, per byte it touches
BYTES_PER_VALUE = 4  # float32 feature maps (the 4 in eq. 10-11)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------- eq. 7


def se_cdf(t: Any, mu: float, theta: float, n_scale: Any = 1.0) -> np.ndarray:
    """F_SE(t; mu, theta, N) = 1 - exp(-(mu/N)(t - N*theta)) for t >= N*theta, else 0."""
    t = np.asarray(t, dtype=float)
    n_scale = np.asarray(n_scale, dtype=float)
    excess = np.maximum(t - n_scale * theta, 0.0)
    return -np.expm1(-mu * excess / n_scale)


def se_mean(mu: float, theta: float, n_scale: Any = 1.0) -> np.ndarray | float:
    """E[T] = N*theta + N/mu."""
    return np.asarray(n_scale, dtype=float) * (theta + 1.0 / mu)


def se_sample(
    rng: np.random.Generator, mu: float, theta: float, n_scale: Any = 1.0, size: Any = None
) -> np.ndarray:
    """Draws of F_SE: N*theta + N/mu * Exp(1); ``n_scale`` broadcasts against ``size``."""
    n_scale = np.asarray(n_scale, dtype=float)
    if size is None:
        size = n_scale.shape
    return n_scale * (theta + rng.standard_exponential(size) / mu)


@dataclass(frozen=True)
class ShiftExp:
    """(mu, theta) of one phase, per unit of N: mean seconds per unit = theta + 1/mu."""

    mu: float
    theta: float

    def __post_init__(self) -> None:
        if not (self.mu > 0 and math.isfinite(self.mu)):
            raise ValueError(f"mu must be positive and finite, got {self.mu}")
        if not (self.theta >= 0 and math.isfinite(self.theta)):
            raise ValueError(f"theta must be >= 0 and finite, got {self.theta}")

    @property
    def unit_mean(self) -> float:
        """Expected seconds per unit of N."""
        return self.theta + 1.0 / self.mu

    def mean(self, n_scale: Any = 1.0) -> np.ndarray | float:
        return se_mean(self.mu, self.theta, n_scale)

    def cdf(self, t: Any, n_scale: Any = 1.0) -> np.ndarray:
        return se_cdf(t, self.mu, self.theta, n_scale)

    def sample(self, rng: np.random.Generator, n_scale: Any = 1.0, size: Any = None) -> np.ndarray:
        return se_sample(rng, self.mu, self.theta, n_scale, size)

    def scaled(self, factor: float) -> ShiftExp:
        """The same phase ``factor`` times slower (both minimum and excess)."""
        return ShiftExp(self.mu / factor, self.theta * factor)


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class Profile:
    """The phases of the model: master compute "m", worker "rec", "cmp", "sen", and
    optionally "code", the master's coding work (cut, encode, decode, place).

    Units: "m" and "cmp" per FLOP, "rec" and "sen" per byte, "code" per byte touched:
    the coding is a few multiply-adds per value moved, so memory, not arithmetic,
    bounds it (8-16 GFLOP/s against 66 for a conv, issue 15). Without "code" (older
    profile files) the coding is priced per FLOP with "m", as the paper does. ``ks`` holds the
    Kolmogorov-Smirnov distance of each fitted phase (empty for hand-made profiles);
    ``meta`` says where the numbers come from.
    """

    m: ShiftExp
    rec: ShiftExp
    cmp: ShiftExp
    sen: ShiftExp
    code: ShiftExp | None = None
    ks: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> ShiftExp:
        if name == CODE_PHASE and self.code is not None:
            return self.code
        if name not in PHASES:
            raise KeyError(f"unknown phase {name!r}; expected one of {PHASES}")
        return getattr(self, name)

    def with_phase(self, name: str, value: ShiftExp) -> Profile:
        """A copy with one phase replaced (what-if studies, tests)."""
        self.phase(name)
        return replace(self, **{name: value})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {p: asdict(self.phase(p)) for p in PHASES}
        out["units"] = {"m": "s/FLOP", "cmp": "s/FLOP", "rec": "s/byte", "sen": "s/byte"}
        if self.code is not None:
            out[CODE_PHASE] = asdict(self.code)
            out["units"][CODE_PHASE] = "s/byte"
        out["ks"] = dict(self.ks)
        out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            phases = {p: ShiftExp(float(data[p]["mu"]), float(data[p]["theta"])) for p in PHASES}
            if CODE_PHASE in data:
                code = data[CODE_PHASE]
                phases[CODE_PHASE] = ShiftExp(float(code["mu"]), float(code["theta"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"profile lacks {exc}; need {PHASES}, each with mu, theta") from None
        return cls(**phases, ks=dict(data.get("ks", {})), meta=dict(data.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def pi4_profile() -> Profile:
    """A Raspberry Pi 4B + WiFi testbed like the paper's; derivation in docs/latency.md.

    Compute: VGG16's 13 convs are 30.7 GFLOPs and take 99.43% of 50.8 s locally
    (appendix A): 1.645 ns/FLOP on average. The wired master gets 90% of that as its
    minimum, workers 80%. Links: ~100 Mbit/s effective WiFi (appendix B's limit),
    80 ns/byte minimum and a mean excess of half that. Coding: a Pi 4B copies about
    2 GB/s (read + write), 0.5 ns per byte touched, with a 10% mean excess.
    """
    flop = 50.8 * 0.9943 / 30.7e9
    return Profile(
        m=ShiftExp(mu=1.0 / (0.1 * flop), theta=0.9 * flop),
        rec=ShiftExp(mu=1.0 / 40e-9, theta=80e-9),
        cmp=ShiftExp(mu=1.0 / (0.2 * flop), theta=0.8 * flop),
        sen=ShiftExp(mu=1.0 / 40e-9, theta=80e-9),
        code=ShiftExp(mu=1.0 / 0.05e-9, theta=0.5e-9),
        meta={"source": "built-in Raspberry Pi 4B + WiFi profile (docs/latency.md)"},
    )


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


def coding_mean(c: Counts, profile: Profile) -> np.ndarray:
    """E[T^enc + T^dec]: per byte with the profile's "code" phase when both exist,
    else per FLOP with "m" (the paper's pricing; learned-code blocks)."""
    by_bytes = np.asarray(c.code_bytes, float)
    flops = (np.asarray(c.enc, float) + np.asarray(c.dec, float)) * profile.m.unit_mean
    if profile.code is None:
        return flops
    return np.where(by_bytes > 0, by_bytes * profile.code.unit_mean, flops)


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


# --------------------------------------------------------------------------- eq. 14-17


def order_term(n: int, k: Any) -> np.ndarray:
    """ln(n/(n-k)): the approximation of E[k-th of n Exp(1)] = H_n - H_{n-k} in eq. 16."""
    k = np.asarray(k, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(k < n, np.log(n / np.maximum(n - k, 1e-300)), np.inf)


def harmonic_gap(n: int, k: Any) -> np.ndarray:
    """H_n - H_{n-k}: the exact E[k-th smallest of n Exp(1)] (for checks)."""
    k = np.asarray(k, dtype=int)
    h = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])
    return h[n] - h[n - k]


def approx_from_counts(c: Counts, n_live: int, k: Any, profile: Profile) -> np.ndarray:
    """L(k) of eq. 16 from the counts: (N^enc + N^dec) E_m + theta_sum + mu_sum ln(n/(n-k)).

    With a remainder (``c.rest`` > 0) the worker term is max(worker term, E[T^rest]).
    """
    theta_sum = c.rec * profile.rec.theta + c.cmp * profile.cmp.theta + c.sen * profile.sen.theta
    mu_sum = c.rec / profile.rec.mu + c.cmp / profile.cmp.mu + c.sen / profile.sen.mu
    master = coding_mean(c, profile)
    workers = theta_sum + mu_sum * order_term(n_live, k)
    return master + np.maximum(workers, np.asarray(c.rest) * profile.m.unit_mean)


def approx_latency(
    shape: LayerShape | Sequence[LayerShape],
    n: int,
    k: Any,
    profile: Profile,
    m: int = 1,
    relaxed: bool = False,
    failures: int = 0,
) -> np.ndarray:
    """L(k) (eq. 16); ``failures`` workers never reply, so k is the k-th of n - failures."""
    c = counts_fn(shape, n, m, relaxed)(np.asarray(k))
    return approx_from_counts(c, n - failures, k, profile)


@dataclass(frozen=True)
class KCirc:
    """k° and how it was found: the relaxed minimiser k' and L at k°."""

    k: int
    k_relaxed: float
    L: float


def golden_min(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-9) -> float:
    """Minimiser of a convex (unimodal) f on [lo, hi] by golden-section search."""
    a, b = lo, hi
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol * max(1.0, abs(a) + abs(b)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    x = (a + b) / 2.0
    return (
        min((lo, x, hi), key=lambda v: (f(v), v))
        if np.isfinite(f(hi))
        else min((lo, x), key=lambda v: (f(v), v))
    )


def k_circ(
    shape: LayerShape,
    n: int,
    profile: Profile,
    m: int = 1,
    failures: int = 0,
    search: str = "relaxed",
    relaxed_widths: bool = False,
) -> KCirc:
    """k° (eq. 17), feasible: 1 <= k <= min(n_live - 1, W_O // m); L(n_live) = inf.

    ``search="relaxed"`` is the paper's procedure: golden-section search for the
    minimum k' of the relaxed convex L on [1, n_live) (Lemma 1), then the better of
    floor(k') and ceil(k') under the exact (floored) L, clamped to the feasible range.
    ``search="integer"`` takes eq. 17 literally: the argmin of the exact L over every
    feasible integer k (at most n evaluations of a closed form). It differs when
    floor(W_O/(k*m)) leaves remainder columns for the master (footnote 2), which the
    relaxed L cannot see: e.g. VGG16's 28-column layers with m = 2. ``k_relaxed`` is
    reported either way. ``relaxed_widths`` evaluates the candidates with real widths
    W_O/(k*m) too and drops the W_O // m bound (large-n studies, :mod:`simulate`).
    """
    if search not in ("relaxed", "integer"):
        raise ValueError(f"search must be 'relaxed' or 'integer', got {search!r}")
    n_live = n - failures
    width_bound = n_live if relaxed_widths else shape.max_k(m)
    if width_bound < 1 or n_live < 1:
        raise ValueError(f"{shape.name or 'layer'}: no feasible k (n_live={n_live}, m={m})")
    k_max = min(n_live - 1, width_bound)
    if k_max < 1:  # one live worker (or one piece): k = 1 is the only choice
        one = approx_latency(shape, n, 1, profile, m, relaxed_widths, failures)
        return KCirc(1, 1.0, float(one))

    def relaxed(x: float) -> float:
        return float(approx_latency(shape, n, x, profile, m, relaxed=True, failures=failures))

    k_rel = golden_min(relaxed, 1.0, n_live - 1e-9 * n_live)
    if search == "integer":
        cands = list(range(1, k_max + 1))
    else:
        floor_ceil = (math.floor(k_rel), math.ceil(k_rel))
        cands = sorted({min(max(int(v), 1), k_max) for v in floor_ceil})
    exact = approx_latency(shape, n, np.array(cands), profile, m, relaxed_widths, failures)
    best = int(np.argmin(exact))
    return KCirc(cands[best], k_rel, float(exact[best]))


# --------------------------------------------------------------------------- eq. 5, 6, 13 by MC


def mc_from_counts(
    c: Counts,
    n_live: int,
    ks: np.ndarray,
    profile: Profile,
    samples: int,
    rng: np.random.Generator,
    chunk_elems: int = 1 << 18,
) -> np.ndarray:
    """Draws of T^c(k) = T^enc + max(T^w_{n:k}, T^rest) + T^dec, shape (samples, len(ks)).

    Common random numbers: the same standard exponentials serve every k, so the
    differences between k (what k* depends on) have far less noise than the values.
    Samples go in cache-sized chunks of ~``chunk_elems`` (sample, k, worker) float32
    entries, all k at once. The order statistic: np.partition when one k is asked
    for; for several, a partition at every kth is a sort, and np.sort measured faster.
    """
    ks = np.asarray(ks, dtype=int)
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 1 or ks.max() > n_live:
        raise ValueError(f"k must be within 1..{n_live}, got {ks}")
    nk = len(ks)
    col = {f: np.broadcast_to(np.asarray(getattr(c, f), float), (nk,)) for f in _COUNT_FIELDS}
    shift = col["rec"] * profile.rec.theta + col["cmp"] * profile.cmp.theta
    shift = (shift + col["sen"] * profile.sen.theta).astype(np.float32)[None, :, None]
    scale = [
        (col[p] / profile.phase(p).mu).astype(np.float32)[None, :, None]
        for p in ("rec", "cmp", "sen")
    ]
    rest = np.broadcast_to(np.asarray(c.rest, float), (nk,))
    out = np.empty((samples, nk))
    per = max(1, chunk_elems // (nk * n_live))
    idx = (ks - 1)[None, :, None]
    for start in range(0, samples, per):
        s = min(per, samples - start)
        e = rng.standard_exponential((3, s, 1, n_live), dtype=np.float32)
        w = shift + scale[0] * e[0]
        w += scale[1] * e[1]
        w += scale[2] * e[2]
        if nk == 1:
            w = np.partition(w, ks[0] - 1, axis=2)
        else:
            w.sort(axis=2)
        order = np.take_along_axis(w, idx, axis=2)[:, :, 0]
        em = rng.standard_exponential((3, s, 1))
        t_code = coding_draws(col, profile, em[0], em[1])
        t_rest = rest * (profile.m.theta + em[2] / profile.m.mu)
        out[start : start + s] = t_code + np.maximum(order, t_rest)
    return out


def coding_draws(col: dict, profile: Profile, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Draws of T^enc + T^dec from standard exponentials: per byte (one draw) when the
    profile has a "code" phase and the counts have bytes, else per FLOP (two)."""
    flops = col["enc"] * (profile.m.theta + e1 / profile.m.mu)
    flops = flops + col["dec"] * (profile.m.theta + e2 / profile.m.mu)
    if profile.code is None:
        return flops
    by_bytes = col["code_bytes"] * (profile.code.theta + e1 / profile.code.mu)
    return np.where(col["code_bytes"] > 0, by_bytes, flops)


def mc_latency(
    shape: LayerShape | Sequence[LayerShape],
    n: int,
    profile: Profile,
    ks: Any = None,
    m: int = 1,
    samples: int = 20000,
    seed: int | np.random.Generator = 0,
    failures: int = 0,
    relaxed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(ks, E[T^c(k)]) by Monte Carlo; default ks: every feasible k."""
    if ks is None:
        ks = np.arange(1, max_feasible_k(shape, n, m, failures) + 1)
    ks = np.asarray(ks, dtype=int)
    if ks.size == 0:
        raise ValueError("no feasible k")
    rng = np.random.default_rng(seed)
    c = counts_fn(shape, n, m, relaxed)(ks)
    draws = mc_from_counts(c, n - failures, ks, profile, samples, rng)
    return ks, draws.mean(axis=0)


def k_star(
    shape: LayerShape | Sequence[LayerShape],
    n: int,
    profile: Profile,
    m: int = 1,
    samples: int = 20000,
    seed: int | np.random.Generator = 0,
    failures: int = 0,
) -> tuple[int, np.ndarray, np.ndarray]:
    """k* (eq. 13): (k*, ks, E[T^c(ks)]) over every feasible k, by Monte Carlo."""
    ks, e = mc_latency(shape, n, profile, m=m, samples=samples, seed=seed, failures=failures)
    return int(ks[int(np.argmin(e))]), ks, e


# --------------------------------------------------------------------------- uncoded, appendix F


def uncoded_counts(shape: LayerShape, n: int) -> Counts:
    """n pieces of W_O/n (relaxed, as appendix F), no coding: no N^enc, no N^dec.

    The master still cuts the n pieces and places their outputs (``code_bytes``)."""
    c = layer_counts(shape, n, n, m=1, relaxed=True)
    w_ip = shape.span + (shape.w_out / n - 1.0) * shape.stride_w
    plane_in = shape.c_in * shape.h_in * w_ip
    plane_out = shape.c_out * shape.h_out * shape.w_out / n
    moved = BYTES_PER_VALUE * 2.0 * n * (plane_in + plane_out)  # cut and place, no coding
    return replace(
        c, enc=np.zeros_like(c.enc), dec=np.zeros_like(c.dec), rest=0.0, code_bytes=moved
    )


def uncoded_latency(shape: LayerShape, n: int, profile: Profile) -> float:
    """E[T^u(n)] of eq. 20: theta_sum + mu_sum*ln(n) at pieces of W_O/n (all n must return)."""
    c = uncoded_counts(shape, n)
    theta_sum = c.rec * profile.rec.theta + c.cmp * profile.cmp.theta + c.sen * profile.sen.theta
    mu_sum = c.rec / profile.rec.mu + c.cmp / profile.cmp.mu + c.sen / profile.sen.mu
    return float(theta_sum + mu_sum * math.log(n) + coding_mean(c, profile))


def uncoded_mc(
    shape: LayerShape, n: int, profile: Profile, samples: int = 20000, seed: int = 0
) -> float:
    """E[T^u(n)] by Monte Carlo: the maximum of the n worker totals."""
    rng = np.random.default_rng(seed)
    draws = mc_from_counts(uncoded_counts(shape, n), n, np.array([n]), profile, samples, rng)
    return float(draws.mean())


def local_latency(shape: LayerShape | Sequence[LayerShape], profile: Profile) -> float:
    """Expected time of the whole layer (or block) on the master (appendix A)."""
    layers = [shape] if isinstance(shape, LayerShape) else list(shape)
    return float(sum(s.local_flops for s in layers) * profile.m.unit_mean)


# --------------------------------------------------------------------------- Prop. 2 quantities


def straggling_ratio(shape: LayerShape, profile: Profile) -> float:
    """R = h2/h3 of section IV-C: worker minimum time over worker mean excess (no halo)."""
    i_w = shape.c_in * shape.h_in * shape.w_out * shape.stride_w
    o = shape.c_out * shape.h_out * shape.w_out
    n_t = shape.local_flops
    h2 = 4 * i_w * profile.rec.theta + 4 * o * profile.sen.theta + n_t * profile.cmp.theta
    h3 = 4 * i_w / profile.rec.mu + 4 * o / profile.sen.mu + n_t / profile.cmp.mu
    return h2 / h3


def straggler_gain(n: int, ratio: float) -> tuple[int, float, float]:
    """Appendix F with h4 and enc/dec left out and h3 = 1, h2 = R.

    E_u = (R + ln n)/n and E_c(k) = (R + ln(n/(n-k)))/k. Returns (best integer k,
    latency reduction 1 - E_c/E_u at that k, reduction at k = n - e, the appendix's k).
    """
    ks = np.arange(1, n)
    e_c = (ratio + np.log(n / (n - ks))) / ks
    e_u = (ratio + math.log(n)) / n
    best = int(np.argmin(e_c))
    k_e = n - math.e
    e_ke = (ratio + math.log(n / (n - k_e))) / k_e
    return int(ks[best]), float(1 - e_c[best] / e_u), float(1 - e_ke / e_u)


def counts_for_spec(spec: ConvSpec, height: int, width: int, n: int, k: int, m: int) -> Counts:
    """What the runtime records per round: eq. 8-12 for a ConvSpec on an (H, W) input."""
    return layer_counts(LayerShape.from_spec(spec, height, width), n, k, m)
