"""Monte-Carlo simulation of one layer under CoCoI, uncoded, replication and LT at large n.

Pure numpy. Every phase time is drawn from the shift-exponential model of
:mod:`cocoi_mpi.latency.profile` with the scales N of eq. 8-12
(:mod:`cocoi_mpi.latency.counts`); the schemes differ in how the layer is cut and in
which replies the master waits for (one draw function each,
:mod:`cocoi_mpi.latency.sim_schemes`):

- ``cocoi``: MDS k-of-n with m pieces per subtask: T^enc + max(k-th of n, T^rest) + T^dec.
- ``uncoded``: n pieces of W_O/n, all needed. A failed worker's piece is re-sent.
- ``replication``: k = floor(n/2) pieces, each to 2 workers, the first copy wins.
- ``lt``: LT code over the reals (appendix G): ``lt_k`` source pieces, each worker
  gets s = ceil(lt_k(1 + lt_extra)/n) encoded symbols, computes them one after the
  other and returns each as soon as it is done; the master decodes once the received
  coding vectors reach rank lt_k (see
  :func:`cocoi_mpi.latency.lt_decoding.lt_symbols_needed`). Degrees follow the runtime
  LT scheme's Robust Soliton pmf (:mod:`cocoi_mpi.latency.soliton`, same c and delta).

Re-sending (uncoded, replication, and any scheme left with too few live workers):
once the master notices that a worker failed (at once by default; after a delay, a
timeout or at the deadline as the scenario's ``detection`` says) it gives each missing
piece to a worker as the runtime does: one already free if any, else any busy live
worker, behind whose own piece it waits; the piece then takes a full round trip
(receive, compute, send). (Until issue 18 the simulator gave it to the next worker to
finish, an ideal scheduler the runtime is not: it predicted uncoded's failures 2-3x
cheaper than measured.) Device jitter (``jitter``) is drawn as the
runtime injects it: compute x (1 + rho_cmp E), each transfer + rho_tr E x its minimum.

Scenarios (section VI, defined in :mod:`cocoi_mpi.experiment.scenarios`; :class:`Scenario` here
lets them combine): ``failures`` workers chosen at random per draw never reply
(scenario 2); ``lambda_tr`` adds Exp(scale lambda_tr * minimum transmission time of
the receive and the send) to each subtask, one draw, as the runtime does (scenario 1);
``slow_workers`` workers compute ``slow_factor`` times slower, in a draw with
probability ``slow_prob`` (scenario 3: 85.2 s vs 50.8 s for VGG16 on a Pi).
``Scenario.of`` turns a run's scenario into the simulator's.

Widths: ``relaxed=True`` (the default) uses W_O^p = W_O/(k*m) as a real number, as
the paper's analysis does, so n may exceed the layer's width (n = 1000 on a
224-column layer); ``relaxed=False`` uses the floored widths the runtime cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..experiment import scenarios
from ..statuses import BASELINE_SCHEME
from .counts import LayerShape
from .model import k_circ
from .profile import Profile, ShiftExp
from .sim_schemes import (
    Scenario,
    lt_symbols_per_worker,
    sim_cocoi,
    sim_lt,
    sim_replication,
    sim_uncoded,
)

SCHEMES = ("cocoi", "uncoded", "replication", "lt")


@dataclass(frozen=True)
class SimResult:
    """One scheme's latency distribution for one layer."""

    scheme: str
    k: int
    mean: float
    p95: float
    draws: np.ndarray = field(repr=False)
    detail: str = ""


# --------------------------------------------------------------------------- driver


def simulate(
    shape: LayerShape,
    n: int,
    profile: Profile,
    schemes: Sequence[str] = SCHEMES,
    k: int | None = None,
    m: int = 2,
    scenario: Scenario | scenarios.Scenario | None = None,
    samples: int = 2000,
    seed: int = 0,
    relaxed: bool = True,
    lt_k: int | None = None,
    lt_extra: float = 0.25,
    master_cost: bool = True,
) -> list[SimResult]:
    """Latency distribution of one layer under each scheme at n workers.

    ``k`` (CoCoI) defaults to k° of the relaxed model (paper's procedure); ``lt_k``
    defaults to the k° of an m = 1 code (LtCoI-k_s: a source count like MDS's).
    ``master_cost=False`` makes the master's work free, as Propositions 2-3 assume:
    encoding n coded inputs costs the master O(n) times the layer input, which is
    what limits coding at n in the hundreds. ``scenario`` may be a run's
    (:class:`cocoi_mpi.experiment.scenarios.Scenario`): it is simulated as ``Scenario.of`` it.
    """
    if isinstance(scenario, scenarios.Scenario):
        scenario = Scenario.of(scenario)
    sc = scenario or Scenario()
    if not master_cost:
        profile = profile.with_phase("m", ShiftExp(mu=1e300, theta=0.0))
    if not 0 <= sc.failures < n:
        raise ValueError(f"failures must be in 0..{n - 1}, got {sc.failures}")
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; choose from {SCHEMES}")
    rng = np.random.default_rng(seed)
    results = []
    for name in schemes:
        kk, draws, detail = SIMULATORS[name](
            _Draw(shape, n, profile, sc, samples, rng, relaxed), k, m, lt_k, lt_extra
        )
        results.append(
            SimResult(name, kk, float(draws.mean()), float(np.percentile(draws, 95)), draws, detail)
        )
    return results


@dataclass(frozen=True)
class _Draw:
    """What every scheme's simulation draws from."""

    shape: LayerShape
    n: int
    profile: Profile
    scenario: Scenario
    samples: int
    rng: np.random.Generator
    relaxed: bool


def _cocoi(d: _Draw, k, m, lt_k, lt_extra) -> tuple[int, np.ndarray, str]:
    kk = k if k is not None else _default_k(d.shape, d.n, d.profile, m, d.relaxed)
    _check_k(d.shape, kk, m, d.n, d.relaxed)
    draws = sim_cocoi(d.shape, d.n, kk, m, d.profile, d.scenario, d.samples, d.rng, d.relaxed)
    return kk, draws, f"m={m}, r={d.n - kk}"


def _uncoded(d: _Draw, k, m, lt_k, lt_extra) -> tuple[int, np.ndarray, str]:
    _check_k(d.shape, d.n, 1, d.n, d.relaxed)
    draws = sim_uncoded(d.shape, d.n, d.profile, d.scenario, d.samples, d.rng, d.relaxed)
    return d.n, draws, "all n"


def _replication(d: _Draw, k, m, lt_k, lt_extra) -> tuple[int, np.ndarray, str]:
    _check_k(d.shape, d.n // 2, 1, d.n, d.relaxed)
    draws = sim_replication(d.shape, d.n, d.profile, d.scenario, d.samples, d.rng, d.relaxed)
    return d.n // 2, draws, "2 copies"


def _lt(d: _Draw, k, m, lt_k, lt_extra) -> tuple[int, np.ndarray, str]:
    kk = lt_k if lt_k is not None else _default_k(d.shape, d.n, d.profile, 1, d.relaxed)
    _check_k(d.shape, kk, 1, 10**9, d.relaxed)
    draws = sim_lt(d.shape, d.n, kk, d.profile, d.scenario, d.samples, d.rng, d.relaxed, lt_extra)
    return kk, draws, f"s={lt_symbols_per_worker(kk, d.n, lt_extra)}/worker"


# The simulator's schemes (the latency model's, with one LT): name -> (k, draws, detail).
SIMULATORS = {"cocoi": _cocoi, "uncoded": _uncoded, "replication": _replication, "lt": _lt}


def _default_k(shape: LayerShape, n: int, profile: Profile, m: int, relaxed: bool) -> int:
    return k_circ(shape, n, profile, m, relaxed_widths=relaxed).k


def _check_k(shape: LayerShape, k: int, m: int, n: int, relaxed: bool) -> None:
    if k < 1 or k > n:
        raise ValueError(f"k must be within 1..{n}, got {k}")
    if not relaxed and k * m > shape.w_out:
        raise ValueError(f"k*m = {k * m} exceeds the output width {shape.w_out}")


def format_results(results: Sequence[SimResult], markdown: bool = False) -> str:
    """The `cocoi simulate` table: scheme, k, mean and p95 latency."""
    head = ["scheme", "k", "mean s", "p95 s", "reduction vs uncoded", "detail"]
    base = next((r.mean for r in results if r.scheme == BASELINE_SCHEME), None)
    rows = []
    for r in results:
        # the same sign as `cocoi report`: positive = faster than uncoded
        rel = "-" if base is None else f"{100.0 * (1.0 - r.mean / base):+.1f}%"
        rows.append([r.scheme, str(r.k), f"{r.mean:.4g}", f"{r.p95:.4g}", rel, r.detail])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{w}s}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])
