"""The simulator's scenario and one draw function per scheme: the latency of one layer,
``samples`` times, as :func:`cocoi_mpi.latency.simulate.simulate` asks for it.

Pure numpy. How each scheme cuts the layer and waits, how missing pieces are re-sent
and what the scenarios do: :mod:`cocoi_mpi.latency.simulate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..experiment import scenarios
from ..experiment.scenarios import (
    PAPER_STRAGGLER_FACTOR,
    Detection,
    Jitter,
    check_levels,
)
from ..statuses import ScenarioKind
from .counts import BYTES_PER_VALUE, Counts, LayerShape, layer_counts
from .lt_decoding import lt_symbols_needed, mean_degree
from .profile import Profile


@dataclass(frozen=True)
class Scenario:
    """The paper's scenarios 1-3 (:mod:`cocoi_mpi.experiment.scenarios`) as the simulator
    draws them.

    A run's scenario is of one kind; here the effects combine (``cocoi simulate``
    takes them together), and scenario 3's straggler generalises to the first
    ``slow_workers`` workers. The parameters obey the same ranges (``check_levels``).
    """

    failures: int = 0
    lambda_tr: float = 0.0
    slow_workers: int = 0
    slow_factor: float = PAPER_STRAGGLER_FACTOR
    slow_prob: float = 1.0  # chance, per draw, that the slow workers are slow
    jitter: Jitter = Jitter()  # injected device jitter, as the runtime injects it
    detection: Detection = Detection()  # when a failure is noticed (re-sends start)
    deadline_s: float = math.inf  # the round's deadline: when ``never`` notices

    def __post_init__(self) -> None:
        levels = (self.lambda_tr, self.failures, self.slow_factor, self.slow_prob)
        check_levels(*levels, factor_name="slow_factor", prob_name="slow_prob")
        if self.slow_workers < 0:
            raise ValueError(f"slow_workers must be >= 0, got {self.slow_workers}")

    def noticed(self, live_times: np.ndarray) -> np.ndarray:
        """Per draw, when the master learns of the failures: ``live_times`` (s, w) are
        the live entries' finish times (inf for the failed), as the runtime measures the
        round's first reply from its send."""
        s = live_times.shape[0]
        d = self.detection
        if d.kind == "timeout":
            first = np.min(live_times, axis=1)
            return np.where(np.isfinite(first), d.value * first, self.deadline_s)
        if d.kind == "never":
            return np.full(s, self.deadline_s)
        return np.full(s, d.noticed_after(None) or 0.0)

    @classmethod
    def of(cls, sc: scenarios.Scenario) -> Scenario:
        """A run's scenario in the simulator's terms: scenario 1's lambda_tr, scenario 2's
        failures, scenario 3's failures and one straggler, slow with its probability.

        Link emulation (``link_mbps``) has no counterpart: the profile's receive and
        send phases are the simulated network, and they also scale lambda_tr's delays.
        """
        straggler = (
            dict(slow_workers=1, slow_factor=sc.straggler_factor, slow_prob=sc.straggler_prob)
            if sc.has_straggler
            else {}
        )
        return cls(
            failures=sc.failures if sc.has_failures else 0,
            lambda_tr=sc.lambda_tr if sc.kind == ScenarioKind.STRAGGLING else 0.0,
            jitter=sc.device_jitter,
            detection=sc.failure_detection,
            **straggler,
        )


# --------------------------------------------------------------------------- sampling


def _scalar(c: Counts, name: str) -> float:
    return float(np.asarray(getattr(c, name)))


def _worker_times(
    rng: np.random.Generator,
    c: Counts,
    shape: tuple[int, ...],
    profile: Profile,
    sc: Scenario,
) -> np.ndarray:
    """Receive + compute + send of one subtask per entry; axis 1 is the worker."""
    rec_min = _scalar(c, "rec") * profile.rec.theta
    sen_min = _scalar(c, "sen") * profile.sen.theta
    t = profile.rec.sample(rng, _scalar(c, "rec"), shape)
    t += profile.sen.sample(rng, _scalar(c, "sen"), shape)
    cmp = profile.cmp.sample(rng, _scalar(c, "cmp"), shape)
    if sc.slow_workers:
        cmp[:, : sc.slow_workers] *= _slowdown(rng, sc, cmp.ndim, shape[0])
    if not sc.jitter.off:  # as FaultModel.fault injects it: ratios of the minimums
        cmp *= 1.0 + sc.jitter.cmp * rng.standard_exponential(shape)
        t += sc.jitter.tr * rec_min * rng.standard_exponential(shape)
        t += sc.jitter.tr * sen_min * rng.standard_exponential(shape)
    t += cmp
    if sc.lambda_tr > 0:  # as the runtime: one Exp(lambda_tr x the link time of both)
        t += rng.exponential(sc.lambda_tr * (rec_min + sen_min), shape)
    return t


def _slowdown(rng: np.random.Generator, sc: Scenario, ndim: int, s: int) -> float | np.ndarray:
    """The slow workers' compute factor: ``slow_factor``, or per draw (axis 0 of an
    ``ndim``-dim array) ``slow_factor`` with probability ``slow_prob``, else 1."""
    if sc.slow_prob >= 1.0:
        return sc.slow_factor  # no draw: the same stream as before slow_prob existed
    slow = rng.random(s) < sc.slow_prob
    return np.where(slow, sc.slow_factor, 1.0).reshape(s, *([1] * (ndim - 1)))


def _failure_mask(rng: np.random.Generator, s: int, n: int, failures: int) -> np.ndarray:
    """(s, n) True where the worker never replies: ``failures`` random workers per draw."""
    if failures <= 0:
        return np.zeros((s, n), dtype=bool)
    return np.argsort(rng.random((s, n)), axis=1) < failures


def _need_with_resend(
    times: np.ndarray,
    need: int,
    fresh: np.ndarray,
    noticed: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """When ``need`` of the entries are done, re-sending what never comes.

    ``times`` (s, w) has inf for failed entries; if fewer than ``need`` are finite, the
    missing pieces are re-sent once the failure is ``noticed`` (s,) (default: at once)
    and take ``fresh[:, j]`` more from when their new worker is free. Which worker:
    without ``rng``, the j-th missing piece goes to the j-th live entry to finish (an
    ideal scheduler); with it, as the runtime does (``MasterEngine.resend_if_needed``):
    at the notice, to a worker already free if there is one, else to a busy live
    worker, any (the least busy, by rank: not the first to finish), queued behind its
    own piece. Needs as many live entries as missing pieces (else inf).
    """
    if rng is not None:
        return _resend_at_notice(times, need, fresh, noticed, rng)
    srt = np.sort(times, axis=1)
    live = np.isfinite(srt).sum(axis=1)
    out = srt[:, need - 1].copy()
    short = np.flatnonzero(live < need)
    if short.size == 0:
        return out
    w = times.shape[1]
    j = np.arange(w)[None, :]
    missing = (need - live[short])[:, None]
    ok = j < np.minimum(missing, live[short][:, None])
    base = np.where(np.isfinite(srt[short]), srt[short], 0.0)
    if noticed is not None:
        base = np.maximum(base, noticed[short, None])
    redo = np.where(ok, base + fresh[short, :w], -np.inf).max(axis=1)
    last_live = np.where(live[short] > 0, srt[short, np.maximum(live[short] - 1, 0)], np.inf)
    done = np.maximum(redo, last_live)
    done[(live[short] < missing[:, 0]) | (live[short] == 0)] = np.inf
    out[short] = done
    return out


def _resend_at_notice(
    times: np.ndarray,
    need: int,
    fresh: np.ndarray,
    noticed: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """``_need_with_resend`` with the runtime's choice of worker (see there)."""
    srt = np.sort(times, axis=1)
    live = np.isfinite(srt).sum(axis=1)
    out = srt[:, need - 1].copy()
    for row in np.flatnonzero(live < need):
        n_live, missing = int(live[row]), need - int(live[row])
        if n_live < missing or n_live == 0:
            out[row] = np.inf
            continue
        t_notice = 0.0 if noticed is None else float(noticed[row])
        finish = srt[row, :n_live]
        n_free = int(np.searchsorted(finish, t_notice, side="right"))
        busy = rng.permutation(finish[n_free:])
        starts = [t_notice if j < n_free else busy[j - n_free] for j in range(missing)]
        redo = max(max(st, t_notice) + fresh[row, j] for j, st in enumerate(starts))
        out[row] = max(redo, finish[-1])
    return out


def _master_time(rng: np.random.Generator, flops: float, s: int, profile: Profile) -> np.ndarray:
    return profile.m.sample(rng, flops, (s,)) if flops > 0 else np.zeros(s)


def _counts(shape: LayerShape, n: int, k: int, m: int, relaxed: bool) -> Counts:
    return layer_counts(shape, n, k, m, relaxed)


def _coding_time(rng: np.random.Generator, c: Counts, s: int, profile: Profile) -> np.ndarray:
    """The master's cut/encode/decode/place per draw: per byte with a "code" phase
    (what the runtime's coding costs), else the paper's per-FLOP enc + dec."""
    if profile.code is not None and _scalar(c, "code_bytes") > 0:
        return profile.code.sample(rng, _scalar(c, "code_bytes"), (s,))
    enc = _master_time(rng, _scalar(c, "enc"), s, profile)
    return enc + _master_time(rng, _scalar(c, "dec"), s, profile)


def _moved_bytes(c: Counts, subtasks: int, pieces: int) -> Counts:
    """Uncoded and replication: the master cuts one input per subtask and places one
    output per piece, both read and written (no coding)."""
    plane_in, plane_out = c.rec / BYTES_PER_VALUE, c.sen / BYTES_PER_VALUE
    moved = BYTES_PER_VALUE * 2.0 * (subtasks * plane_in + pieces * plane_out)
    return replace(c, enc=0.0, dec=0.0, code_bytes=moved)


def _chunks(samples: int, per_sample: int, budget: int = 1 << 21) -> list[tuple[int, int]]:
    per = max(1, budget // max(1, per_sample))
    return [(a, min(a + per, samples)) for a in range(0, samples, per)]


def sim_cocoi(
    shape: LayerShape,
    n: int,
    k: int,
    m: int,
    profile: Profile,
    sc: Scenario,
    samples: int,
    rng: np.random.Generator,
    relaxed: bool = True,
) -> np.ndarray:
    """T^enc + max(k-th of the n worker totals, T^rest) + T^dec per draw."""
    c = _counts(shape, n, k, m, relaxed)
    out = np.empty(samples)
    for a, b in _chunks(samples, n):
        s = b - a
        w = _worker_times(rng, c, (s, n), profile, sc)
        if sc.failures:
            w[_failure_mask(rng, s, n, sc.failures)] = np.inf
            fresh = _worker_times(rng, c, (s, n), profile, sc)
            kth = _need_with_resend(w, k, fresh, sc.noticed(w), rng)
        else:
            kth = np.partition(w, k - 1, axis=1)[:, k - 1]
        rest = _master_time(rng, _scalar(c, "rest"), s, profile)
        out[a:b] = _coding_time(rng, c, s, profile) + np.maximum(kth, rest)
    return out


def sim_uncoded(
    shape: LayerShape,
    n: int,
    profile: Profile,
    sc: Scenario,
    samples: int,
    rng: np.random.Generator,
    relaxed: bool = True,
) -> np.ndarray:
    """All n pieces of W_O/n must return; failed pieces are re-sent."""
    c = _moved_bytes(_counts(shape, n, n, 1, relaxed), n, n)
    out = np.empty(samples)
    for a, b in _chunks(samples, 2 * n):
        s = b - a
        w = _worker_times(rng, c, (s, n), profile, sc)
        w[_failure_mask(rng, s, n, sc.failures)] = np.inf
        fresh = _worker_times(rng, c, (s, n), profile, sc) if sc.failures else w
        rest = _master_time(rng, _scalar(c, "rest"), s, profile)
        coding = _coding_time(rng, c, s, profile)
        done = _need_with_resend(w, n, fresh, sc.noticed(w), rng)
        out[a:b] = coding + np.maximum(done, rest)
    return out


def sim_replication(
    shape: LayerShape,
    n: int,
    profile: Profile,
    sc: Scenario,
    samples: int,
    rng: np.random.Generator,
    relaxed: bool = True,
) -> np.ndarray:
    """k = floor(n/2) pieces on worker pairs (2i, 2i+1); first copy wins; all k needed."""
    k = n // 2
    if k < 1:
        raise ValueError("replication needs n >= 2")
    c = _moved_bytes(_counts(shape, n, k, 1, relaxed), n, k)
    out = np.empty(samples)
    for a, b in _chunks(samples, 2 * n):
        s = b - a
        w = _worker_times(rng, c, (s, n), profile, sc)
        w[_failure_mask(rng, s, n, sc.failures)] = np.inf
        pieces = np.minimum(w[:, 0 : 2 * k : 2], w[:, 1 : 2 * k : 2])
        fresh = _worker_times(rng, c, (s, k), profile, sc) if sc.failures else pieces
        rest = _master_time(rng, _scalar(c, "rest"), s, profile)
        coding = _coding_time(rng, c, s, profile)
        done = _need_with_resend(pieces, k, fresh, sc.noticed(w), rng)
        out[a:b] = coding + np.maximum(done, rest)
    return out


def lt_symbols_per_worker(lt_k: int, n: int, lt_extra: float) -> int:
    """s = ceil(lt_k (1 + lt_extra) / n): what each worker is given up front."""
    return max(1, math.ceil(lt_k * (1.0 + lt_extra) / n))


def sim_lt(
    shape: LayerShape,
    n: int,
    lt_k: int,
    profile: Profile,
    sc: Scenario,
    samples: int,
    rng: np.random.Generator,
    relaxed: bool = True,
    lt_extra: float = 0.25,
    pool_draws: int = 64,
) -> np.ndarray:
    """LtCoI: symbols stream back one by one; decode at the needed count (rank lt_k).

    Worker i receives its s symbols at R_i (one message of s pieces), computes them
    at C_i/s each (C_i: compute time of s pieces) and sends each result at once; the
    master needs the K-th arrival overall, K drawn from :func:`lt_symbols_needed`.
    If the live workers' n*s symbols are not enough, the shortfall is re-sent to the
    first live worker to finish. Encoding: E[d] additions of an input piece per
    symbol; decoding: a dense (lt_k x lt_k) solve applied to the outputs.
    """
    c1 = _counts(shape, n, lt_k, 1, relaxed)
    s_w = lt_symbols_per_worker(lt_k, n, lt_extra)
    pool = lt_symbols_needed(lt_k, pool_draws)
    piece_in = _scalar(c1, "rec") / 4.0  # values of one input piece
    enc_flops = 2.0 * mean_degree(lt_k) * piece_in * n * s_w
    dec_flops = _scalar(c1, "dec")  # 2 lt_k^2 x one output piece
    out = np.empty(samples)
    for a, b in _chunks(samples, n * s_w):
        s = b - a
        recv = profile.rec.sample(rng, s_w * _scalar(c1, "rec"), (s, n, 1))
        per_sym = profile.cmp.sample(rng, s_w * _scalar(c1, "cmp"), (s, n, 1)) / s_w
        if sc.slow_workers:
            per_sym[:, : sc.slow_workers] *= _slowdown(rng, sc, per_sym.ndim, s)
        send = profile.sen.sample(rng, _scalar(c1, "sen"), (s, n, s_w))
        if sc.lambda_tr > 0:
            recv += rng.exponential(
                sc.lambda_tr * s_w * _scalar(c1, "rec") * profile.rec.unit_mean, (s, n, 1)
            )
            send += rng.exponential(
                sc.lambda_tr * _scalar(c1, "sen") * profile.sen.unit_mean, (s, n, s_w)
            )
        arrive = recv + per_sym * np.arange(1, s_w + 1) + send
        arrive[_failure_mask(rng, s, n, sc.failures)] = np.inf
        arrive = np.sort(arrive.reshape(s, n * s_w), axis=1)
        need = rng.choice(pool, size=s)
        have = np.isfinite(arrive).sum(axis=1)
        idx = np.minimum(need, n * s_w) - 1
        t_w = arrive[np.arange(s), idx]
        short = np.flatnonzero(need > have)
        if short.size:
            extra = need[short] - have[short]
            last = arrive[short, np.maximum(have[short] - 1, 0)]
            redo = profile.rec.sample(rng, extra * _scalar(c1, "rec"))
            redo += profile.cmp.sample(rng, extra * _scalar(c1, "cmp"))
            redo += profile.sen.sample(rng, extra * _scalar(c1, "sen"))
            t_w[short] = np.where(have[short] > 0, last + redo, np.inf)
        enc = _master_time(rng, enc_flops, s, profile)
        dec = _master_time(rng, dec_flops, s, profile)
        out[a:b] = enc + t_w + dec
    return out
