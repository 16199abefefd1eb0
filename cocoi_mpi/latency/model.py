"""Latency model of one coded layer: CoCoI section IV and appendices D, F.

Pure numpy. Phase times follow eq. 7 (:mod:`cocoi_mpi.latency.profile`), scaled by the
counts of eq. 8-12 (:mod:`cocoi_mpi.latency.counts`); this module gives the expected
latency of a layer split into k and the k that minimises it.

- :func:`approx_latency` is L(k) of eq. 16 (the overlap term h4 of eq. 18 included,
  because N^rec is computed from the true piece width W_I^p).
- :func:`k_circ` minimises the relaxed, convex L on [1, n) (Lemma 1) by golden-section
  search and then compares floor and ceil (eq. 17).
- :func:`mc_latency` estimates E[T^c(k)] (eq. 5, 6, 13) by Monte Carlo for all k at
  once; :func:`k_star` is its argmin.
- :func:`uncoded_latency` is eq. 20 (appendix F): all n pieces of W_O/n must return.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .counts import (
    _COUNT_FIELDS,
    BYTES_PER_VALUE,
    Counts,
    LayerShape,
    counts_fn,
    layer_counts,
    max_feasible_k,
)
from .profile import Profile

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def coding_mean(c: Counts, profile: Profile) -> np.ndarray:
    """E[T^enc + T^dec]: per byte with the profile's "code" phase when both exist,
    else per FLOP with "m" (the paper's pricing; learned-code blocks)."""
    by_bytes = np.asarray(c.code_bytes, float)
    flops = (np.asarray(c.enc, float) + np.asarray(c.dec, float)) * profile.m.unit_mean
    if profile.code is None:
        return flops
    return np.where(by_bytes > 0, by_bytes * profile.code.unit_mean, flops)


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
