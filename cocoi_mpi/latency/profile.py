"""The phases of the latency model and their profiles: CoCoI section III, eq. 7.

Pure numpy, no I/O besides :meth:`Profile.save` / :meth:`Profile.load`.

Every phase time follows the shift-exponential F_SE(t; mu, theta, N) of eq. 7: a
minimum N*theta plus an exponential excess of mean N/mu, where N is the phase's scale
(FLOPs for computation, bytes for transmission). The scales are in
:mod:`cocoi_mpi.latency.counts`, the expected latencies in :mod:`cocoi_mpi.latency.model`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

PHASES = ("m", "rec", "cmp", "sen")
CODE_PHASE = "code"  # optional: the master's coding, per byte it touches


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


@dataclass(frozen=True)
class Empirical:
    """A phase as measured: the per-unit times of a calibration (t / N), resampled.

    Where eq. 7 fits badly (a testbed device confined by a CPU quota computes at full
    speed until its quota for the period is spent, then stops: not an exponential
    excess), the simulator draws from what was measured instead. ``mu`` and ``theta``
    are the moments' shift-exponential (minimum, and mean excess), so closed-form
    planning (k°) still has numbers to use.
    """

    units: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.units) < 2 or not all(math.isfinite(u) and u > 0 for u in self.units):
            raise ValueError("an empirical phase needs at least 2 positive finite times")

    @property
    def theta(self) -> float:
        return float(min(self.units))

    @property
    def unit_mean(self) -> float:
        return float(np.mean(self.units))

    @property
    def mu(self) -> float:
        return 1.0 / max(self.unit_mean - self.theta, 1e-300)

    def mean(self, n_scale: Any = 1.0) -> np.ndarray | float:
        return np.asarray(n_scale, dtype=float) * self.unit_mean

    def cdf(self, t: Any, n_scale: Any = 1.0) -> np.ndarray:
        per_unit = np.asarray(t, dtype=float) / np.asarray(n_scale, dtype=float)
        units = np.sort(np.asarray(self.units))
        return np.searchsorted(units, per_unit, side="right") / units.size

    def sample(self, rng: np.random.Generator, n_scale: Any = 1.0, size: Any = None) -> np.ndarray:
        n_scale = np.asarray(n_scale, dtype=float)
        if size is None:
            size = n_scale.shape
        return n_scale * rng.choice(np.asarray(self.units), size=size)

    def scaled(self, factor: float) -> Empirical:
        return Empirical(tuple(u * factor for u in self.units))


Phase = ShiftExp | Empirical


def phase_from_dict(data: dict[str, Any]) -> Phase:
    if "units" in data:
        return Empirical(tuple(float(u) for u in data["units"]))
    return ShiftExp(float(data["mu"]), float(data["theta"]))


def phase_to_dict(phase: Phase) -> dict[str, Any]:
    if isinstance(phase, Empirical):  # mu, theta too, for readers of the file
        return {"units": list(phase.units), "mu": phase.mu, "theta": phase.theta}
    return asdict(phase)


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
    rec: Phase
    cmp: Phase
    sen: Phase
    code: ShiftExp | None = None
    ks: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> Phase:
        if name == CODE_PHASE and self.code is not None:
            return self.code
        if name not in PHASES:
            raise KeyError(f"unknown phase {name!r}; expected one of {PHASES}")
        return getattr(self, name)

    def with_phase(self, name: str, value: Phase) -> Profile:
        """A copy with one phase replaced (what-if studies, tests)."""
        self.phase(name)
        return replace(self, **{name: value})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {p: phase_to_dict(self.phase(p)) for p in PHASES}
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
            phases = {p: phase_from_dict(data[p]) for p in PHASES}
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
