"""Fit the shift-exponential latency model to measured durations (CoCoI appendix B).

A duration t of a phase with scale N follows F_SE(t; mu, theta, N) (eq. 7), i.e.
t = N*theta + N*X/mu with X ~ Exp(1). So x = t/N is shift-exponential with shift
theta and rate mu whatever N is, and samples of different N can be pooled.

Maximum likelihood on the x_i: the log-likelihood n ln(mu) - mu * sum(x_i - theta),
valid only for theta <= min x_i, grows with theta, so theta = min x_i; setting its
mu-derivative n/mu - sum(x_i - theta) to zero gives 1/mu = mean(x_i - theta), that is
1/mu = mean((t_i - N_i*theta)/N_i). The minimum overshoots theta by 1/(n*mu) on
average; ``method="unbiased"`` removes that bias (theta = min - (mean - min)/(n - 1),
1/mu = n/(n - 1) * (mean - min)), and ``method="quantile"`` sets the fitted q-quantile
and mean to the empirical ones, so one impossibly fast sample (a clock glitch) cannot
drag theta down.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ResultError
from ..experiment.scenarios import transfer_s
from .counts import BYTES_PER_VALUE, coding_bytes
from .profile import CODE_PHASE, PHASES, Empirical, Profile, ShiftExp, se_cdf

FIT_METHODS = ("mle", "unbiased", "quantile")
USABLE_STATUSES = ("used", "late")


@dataclass(frozen=True)
class Fit:
    """Fitted (mu, theta) per unit N, with the KS distance and the number of samples."""

    mu: float
    theta: float
    ks: float
    count: int

    @property
    def shift_exp(self) -> ShiftExp:
        return ShiftExp(self.mu, self.theta)


def normalise(t: np.ndarray, n_scale: np.ndarray | float) -> np.ndarray:
    """x_i = t_i/N_i over the finite samples with t > 0 and N > 0."""
    t = np.asarray(t, dtype=float)
    n_scale = np.broadcast_to(np.asarray(n_scale, dtype=float), t.shape)
    ok = np.isfinite(t) & np.isfinite(n_scale) & (t > 0) & (n_scale > 0)
    return t[ok] / n_scale[ok]


def fit_normalised(x: np.ndarray, method: str = "mle", q: float = 0.05) -> tuple[float, float]:
    """(mu, theta) of shift-exponential samples x (already divided by N)."""
    if method not in FIT_METHODS:
        raise ValueError(f"unknown fit method {method!r}; expected one of {FIT_METHODS}")
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        raise ValueError(f"need at least 2 samples to fit, got {x.size}")
    lo, mean = float(x.min()), float(x.mean())
    if method == "mle":
        theta, excess = lo, mean - lo
    elif method == "unbiased":
        excess = (mean - lo) * x.size / (x.size - 1)
        theta = lo - (mean - lo) / (x.size - 1)
    else:
        x_q = float(np.quantile(x, q))
        excess = (mean - x_q) / (1.0 + math.log1p(-q))
        theta = mean - excess
    theta = max(theta, 0.0)
    excess = max(excess, 1e-9 * max(abs(mean), 1e-300))  # all-equal samples: no spread
    return 1.0 / excess, theta


def ks_distance(x: np.ndarray, mu: float, theta: float) -> float:
    """sup |F_emp - F_SE(.; mu, theta, 1)| over the samples x (the KS statistic)."""
    x = np.sort(np.asarray(x, dtype=float))
    n = x.size
    f = se_cdf(x, mu, theta, 1.0)
    above = np.arange(1, n + 1) / n - f
    below = f - np.arange(n) / n
    return float(max(above.max(), below.max()))


def fit_shift_exp(
    t: np.ndarray, n_scale: np.ndarray | float = 1.0, method: str = "mle", q: float = 0.05
) -> Fit:
    """Fit durations ``t`` with scales ``n_scale`` (see the module doc for the estimator)."""
    x = normalise(t, n_scale)
    mu, theta = fit_normalised(x, method, q)
    return Fit(mu, theta, ks_distance(x, mu, theta), int(x.size))


def fit_within_groups(
    t: np.ndarray, n_scale: np.ndarray, groups: np.ndarray, min_size: int = 3
) -> Fit:
    """Fit one exponential excess over a shift of each group's own (its round's).

    Per FLOP, a device computes some layers faster than others (their shapes suit
    the conv kernels differently): pooled over layers, that systematic spread looks
    like straggling, and the planner then buys redundancy against it. Within a
    round every worker runs the same layer, so the spread there is the straggling.
    MLE with a shift per group: 1/mu = sum(x - min_g) / sum(m_g - 1); theta is the
    groups' mean shift, min_g - (1/mu)/m_g, weighted by m_g. Groups smaller than
    ``min_size`` are left out; the KS distance is of the others' excess over each
    group's minimum against Exp(mu) (which, memoryless, it is if the model holds)."""
    t, n_scale, groups = (np.asarray(a) for a in (t, n_scale, groups))
    ok = np.isfinite(t) & np.isfinite(n_scale) & (t > 0) & (n_scale > 0)
    x, g = t[ok] / n_scale[ok], groups[ok]
    excess_sum, dof, shifts, sizes, excesses = 0.0, 0, [], [], []
    for key in np.unique(g):
        xs = x[g == key]
        if xs.size < min_size:
            continue
        lo = float(xs.min())
        excess_sum += float((xs - lo).sum())
        dof += xs.size - 1
        shifts.append(lo)
        sizes.append(xs.size)
        excesses.append(np.sort(xs)[1:] - lo)  # above the minimum: Exp(mu), memoryless
    if dof < 2:
        raise ValueError(f"need rounds of at least {min_size} samples to fit within rounds")
    excess = max(excess_sum / dof, 1e-300)
    sizes_a = np.asarray(sizes, dtype=float)
    theta = float(np.average(np.asarray(shifts) - excess / sizes_a, weights=sizes_a))
    pooled = np.concatenate(excesses)
    return Fit(1.0 / excess, max(theta, 0.0), ks_distance(pooled, 1.0 / excess, 0.0), int(x.size))


# --------------------------------------------------------------------------- traces


class TraceFitError(ResultError, ValueError):
    """A trace lacks what the fit needs (the message says what)."""


ROUND_COLUMNS = ("n_enc", "n_cmp", "n_dec")


def trace_samples(trace: object) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(durations, scales) per phase from a :class:`cocoi_mpi.traces.reader.Trace`.

    "m": the master's encode_s with n_enc and decode_s with n_dec (FLOPs);
    "rec"/"sen": worker_recv_s/worker_send_s with bytes_in/bytes_out; "cmp":
    worker_compute_s with its round's n_cmp (FLOPs of one subtask). Only subtasks that
    replied ("used" or "late"); the filter on finite, positive values comes later.

    What the master injected counts as the device's time, as eq. 7 models a device:
    the receive and send delays it decided (link time, jitter, straggling;
    ``injected_recv_s`` and the rest of ``injected_delay_s``) are added to the
    measured MPI times, and the compute time is multiplied by its ``slowdown`` (the
    worker slept the rest). So ``cocoi fit`` recovers an injected ``--jitter``. Traces
    written before ``injected_recv_s`` existed get the emulated link's bytes /
    bandwidth added, as before.
    """
    rounds, subtasks = trace.rounds, trace.subtasks  # type: ignore[attr-defined]
    missing = [c for c in ROUND_COLUMNS if c not in rounds]
    if missing:
        raise TraceFitError(
            f"{getattr(trace, 'path', 'trace')}: rounds lack FLOP column(s) "
            f"{', '.join(missing)}; it was written before the runtime recorded them"
        )
    by_round = dict(zip(rounds["round"].tolist(), rounds["n_cmp"].tolist(), strict=True))
    ok = np.isin(subtasks["status"], USABLE_STATUSES)
    sub_round = subtasks["round"][ok]
    n_cmp = np.array([by_round.get(r, np.nan) for r in sub_round.tolist()], dtype=float)
    bytes_in = subtasks["bytes_in"][ok].astype(float)
    bytes_out = subtasks["bytes_out"][ok].astype(float)
    extra_in, extra_out = injected_transfers(trace, ok, bytes_in, bytes_out)
    slowdown = np.asarray(subtasks["slowdown"][ok], dtype=float)
    slowdown = np.where(np.isfinite(slowdown) & (slowdown >= 1.0), slowdown, 1.0)
    return {
        "m": (
            np.concatenate([rounds["encode_s"], rounds["decode_s"]]).astype(float),
            np.concatenate([rounds["n_enc"], rounds["n_dec"]]).astype(float),
        ),
        CODE_PHASE: coding_samples(rounds, subtasks),
        "rec": (subtasks["worker_recv_s"][ok] + extra_in, bytes_in),
        "cmp": (subtasks["worker_compute_s"][ok] * slowdown, n_cmp),
        CMP_ROUNDS: (np.asarray(sub_round), np.ones(sub_round.size)),
        "sen": used_only(subtasks, ok, subtasks["worker_send_s"][ok] + extra_out, bytes_out),
    }


def used_only(
    subtasks: Mapping, ok: np.ndarray, durations: np.ndarray, scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The send phase from the replies a round used: a late reply's Send waits until
    the master, busy with the next round, takes it (measured on the pi testbed: 73 ns
    per byte of mean excess for late replies, 11 for used ones, against a 7 ns/byte
    link), which is the master's queue, not the device's link."""
    used = np.asarray(subtasks["status"][ok] == "used")
    return durations[used], scales[used]


def injected_transfers(
    trace: object, ok: np.ndarray, bytes_in: np.ndarray, bytes_out: np.ndarray
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The receive and send delays the master injected into each usable subtask."""
    subtasks = trace.subtasks  # type: ignore[attr-defined]
    if "injected_recv_s" in subtasks:
        before = np.asarray(subtasks["injected_recv_s"][ok], dtype=float)
        total = np.asarray(subtasks["injected_delay_s"][ok], dtype=float)
        if before.size and np.isfinite(before).all() and np.isfinite(total).all():
            return before, total - before
    mbps = float(getattr(trace, "config", {}).get("link_mbps") or 0.0)
    link_in = transfer_s(bytes_in, mbps) if mbps > 0 else 0.0
    link_out = transfer_s(bytes_out, mbps) if mbps > 0 else 0.0
    return link_in, link_out


def coding_samples(rounds: Mapping, subtasks: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(cut + encode + decode + place seconds, bytes touched) per conv round.

    The bytes follow :func:`cocoi_mpi.latency.counts.coding_bytes` from the round's n, k, m
    and one subtask's input and output sizes (bytes_in, bytes_out carry m pieces).
    Rounds that fell back to the master or whose subtasks are unknown are left out."""
    size_in, size_out = {}, {}
    for r, b_in, b_out in zip(
        subtasks["round"].tolist(),
        subtasks["bytes_in"].tolist(),
        subtasks["bytes_out"].tolist(),
        strict=True,
    ):
        size_in.setdefault(r, b_in)
        size_out.setdefault(r, b_out)
    t, scale = [], []
    for i, r in enumerate(rounds["round"].tolist()):
        if rounds["fallback"][i] or r not in size_in or rounds["n_enc"][i] <= 0:
            continue
        n, k, m = (int(rounds[c][i]) for c in ("n", "k", "pieces_per_worker"))
        if min(n, k, m) < 1:  # a row without its geometry (hand-made traces)
            continue
        per = BYTES_PER_VALUE * m
        moved = coding_bytes(n, k, m, size_in[r] / per, size_out[r] / per)
        phases = ("split_s", "encode_s", "decode_s", "merge_s")
        t.append(sum(float(rounds[c][i]) for c in phases))
        scale.append(float(moved))
    return np.array(t, dtype=float), np.array(scale, dtype=float)


EMPIRICAL_PHASES = ("rec", "cmp", "sen")
CMP_ROUNDS = "cmp_rounds"  # trace_samples: the round of each compute sample
EMPIRICAL_MAX = 2000  # per-unit times kept per phase (an even subsample past it)


def fit_samples(
    samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    method: str = "mle",
    source: str = "",
    empirical: bool = False,
    within_rounds: bool = False,
) -> Profile:
    """A Profile from (durations, scales) per phase; KS distances kept in ``ks``.

    ``empirical``: the workers' phases keep the measured per-unit times themselves
    (:class:`cocoi_mpi.latency.profile.Empirical`) for the simulator to resample; the
    shift-exponential fit is still made, and its KS kept, to say how far it was off.
    ``within_rounds``: the compute phase is fitted over each round's own shift
    (:func:`fit_within_groups`), needing the samples' rounds (``CMP_ROUNDS``)."""
    fits = {}
    for phase in PHASES:
        t, n_scale = samples[phase]
        try:
            fits[phase] = fit_shift_exp(t, n_scale, method)
        except ValueError as exc:
            raise TraceFitError(f"{source or 'samples'}: phase {phase!r}: {exc}") from None
    if within_rounds:
        if CMP_ROUNDS not in samples:
            raise TraceFitError(f"{source or 'samples'}: no rounds to fit compute within")
        try:
            fits["cmp"] = fit_within_groups(*samples["cmp"], samples[CMP_ROUNDS][0])
        except ValueError as exc:
            raise TraceFitError(f"{source or 'samples'}: phase 'cmp': {exc}") from None
    unfitted = {}  # optional phases without enough samples, and why
    if CODE_PHASE in samples:  # learned-code runs have no conv rounds to fit it from
        try:
            fits[CODE_PHASE] = fit_shift_exp(*samples[CODE_PHASE], method)
        except ValueError as exc:
            unfitted[CODE_PHASE] = str(exc)  # the profile then prices coding per FLOP
    phases = {p: f.shift_exp for p, f in fits.items()}
    if empirical:
        phases.update({p: empirical_phase(*samples[p]) for p in EMPIRICAL_PHASES})
    return Profile(
        **phases,
        ks={p: f.ks for p, f in fits.items()},
        meta={
            "source": source,
            "method": method
            + (", compute within rounds" if within_rounds else "")
            + (", empirical rec/cmp/sen" if empirical else ""),
            "samples": {p: f.count for p, f in fits.items()},
            **({"unfitted": unfitted} if unfitted else {}),
        },
    )


def empirical_phase(t: np.ndarray, n_scale: np.ndarray) -> Empirical:
    """The usable per-unit times t / N, sorted, at most EMPIRICAL_MAX (evenly spaced
    ranks past it, so the distribution keeps its shape)."""
    t, n_scale = np.asarray(t, dtype=float), np.asarray(n_scale, dtype=float)
    ok = np.isfinite(t) & np.isfinite(n_scale) & (t > 0) & (n_scale > 0)
    units = np.sort(t[ok] / n_scale[ok])
    if units.size > EMPIRICAL_MAX:
        units = units[np.linspace(0, units.size - 1, EMPIRICAL_MAX).round().astype(int)]
    return Empirical(tuple(float(u) for u in units))


def fit_trace(path: str | os.PathLike[str], method: str = "mle") -> Profile:
    """Profile fitted from an HDF5 trace (appendix B); raises TraceFitError/TraceError."""
    from ..traces.reader import read_trace

    trace = read_trace(path)
    return fit_samples(trace_samples(trace), method, source=os.fspath(path))


# --------------------------------------------------------------------------- Fig. 13


def plot_cdfs(
    samples: Mapping[str, tuple[np.ndarray, np.ndarray]],
    profile: Profile,
    path: str | os.PathLike[str],
) -> None:
    """Empirical vs fitted CDF of t/N per phase, like the paper's Fig. 13.

    Needs matplotlib (the ``plots`` extra); raises ImportError with a hint otherwise.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'cocoi_mpi[plots]'") from exc
    titles = {"m": "master compute", "rec": "worker receive", "cmp": "worker compute"}
    titles["sen"] = "worker send"
    units = {"m": "s/FLOP", "rec": "s/byte", "cmp": "s/FLOP", "sen": "s/byte"}
    fig, axes = plt.subplots(1, len(PHASES), figsize=(4 * len(PHASES), 3.4))
    for ax, phase in zip(axes, PHASES, strict=True):
        x = np.sort(normalise(*samples[phase]))
        se = profile.phase(phase)
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label="empirical")
        grid = np.geomspace(max(min(x[0], se.theta), x[-1] * 1e-6), x[-1], 400)
        ax.plot(grid, se.cdf(grid), "--", label="shift-exponential fit")
        ks = profile.ks.get(phase)
        ks_txt = "" if ks is None else f", KS={ks:.3f}"
        ax.set_title(f"{titles[phase]} (n={x.size}{ks_txt})", fontsize=9)
        if x[-1] > 100 * max(x[0], 1e-300):  # heavy tail: a log axis keeps the body visible
            ax.set_xscale("log")
        ax.set_xlabel(f"t/N ({units[phase]})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CDF")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
