"""Timings and the numbers quoted in docs/latency.md.

    python benchmarks/bench_latency.py timing   # MC 3e5 x every k at n = 10; simulate n = 1000
    python benchmarks/bench_latency.py lemma1   # convexity of the relaxed L, n = 3..100
    python benchmarks/bench_latency.py prop2    # Proposition 2's example (n = 20, R = 1)
    python benchmarks/bench_latency.py grid     # |k* - k°| over the Fig. 14 grid (n = 20)
    python benchmarks/bench_latency.py table1   # Table I: per-model |k* - k°| and gaps
    python benchmarks/bench_latency.py all

Everything is seeded; the numbers are reproducible on any machine (timings aside).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cocoi_mpi.latency.counts import LayerShape
from cocoi_mpi.latency.model import (
    approx_latency,
    k_circ,
    mc_latency,
    straggler_gain,
    straggling_ratio,
)
from cocoi_mpi.latency.profile import Profile, ShiftExp, pi4_profile
from cocoi_mpi.latency.simulate import format_results, simulate

VGG_CONV3 = LayerShape.conv(64, 112, 112, 128, 3, padding=1, name="vgg16 features.5")
VGG_CONV2 = LayerShape.conv(64, 224, 224, 64, 3, padding=1, name="vgg16 features.2")


def timing() -> None:
    """Goal: < 1 s for 3e5 samples x every k at n = 10 on the 2-core dev machine."""
    prof = pi4_profile()
    for m in (1, 2):
        mc_latency(VGG_CONV2, 10, prof, m=m, samples=1000)  # warm-up
        best = []
        for rep in range(3):
            t0 = time.perf_counter()
            ks, _ = mc_latency(VGG_CONV2, 10, prof, m=m, samples=300_000, seed=rep)
            best.append(time.perf_counter() - t0)
        print(f"MC E[T^c(k)], 3e5 samples x k=1..{ks[-1]} at n=10, m={m}: {min(best):.3f} s")
    simulate(VGG_CONV2, 1000, prof, samples=10)  # warm-up (and the LT pool cache)
    for master_cost in (True, False):
        t0 = time.perf_counter()
        res = simulate(VGG_CONV2, 1000, prof, samples=2000, master_cost=master_cost)
        dt = time.perf_counter() - t0
        print(f"\nsimulate n=1000, 2000 draws, master cost {master_cost}: {dt:.2f} s")
        print(format_results(res, markdown=True))


def random_case(rng: np.random.Generator) -> tuple[LayerShape, Profile]:
    """A random layer and profile spanning ~3 decades of every parameter."""
    c_in, c_out = (int(v) for v in rng.choice([3, 16, 64, 256, 512], 2))
    w = int(rng.choice([14, 28, 56, 112, 224]))
    k = int(rng.choice([1, 3, 5]))
    shape = LayerShape.conv(c_in, w, w, c_out, k, padding=k // 2)

    def se(lo: float, hi: float) -> ShiftExp:
        theta = 10 ** rng.uniform(lo, hi)
        return ShiftExp(mu=1.0 / (theta * 10 ** rng.uniform(-2, 1)), theta=theta)

    prof = Profile(m=se(-10, -8), rec=se(-9, -6), cmp=se(-10, -8), sen=se(-9, -6))
    return shape, prof


def lemma1(cases: int = 20) -> None:
    """Second differences of the relaxed L on a grid of [1, n), n = 3..100."""
    rng = np.random.default_rng(1)
    worst, checked = np.inf, 0
    for n in range(3, 101):
        for _ in range(cases):
            shape, prof = random_case(rng)
            m = int(rng.choice([1, 2]))
            ks = np.linspace(1.0, n - 1e-3, 400)
            L = approx_latency(shape, n, ks, prof, m, relaxed=True)
            d2 = L[2:] - 2 * L[1:-1] + L[:-2]
            worst = min(worst, float((d2 / np.abs(L[1:-1])).min()))
            checked += d2.size
    print(f"Lemma 1: {checked} second differences over n=3..100 x {cases} random layer/profile")
    print(f"pairs each (m in {{1, 2}}); smallest relative second difference: {worst:.3e}")


def prop2() -> None:
    k, gain, gain_e = straggler_gain(20, 1.0)
    print(f"Prop. 2, n=20, R=1: best k={k}, coded latency {100 * gain:.1f}% below uncoded")
    print(f"(at the appendix's k = n - e = {20 - np.e:.2f}: {100 * gain_e:.1f}%)")
    for n in (10, 20, 50, 100):
        k, gain, _ = straggler_gain(n, 1.0)
        print(f"  n={n:3d}: k={k:3d}, reduction {100 * gain:.1f}%")
    prof = pi4_profile()
    print(f"R of {VGG_CONV2.name} under the built-in Pi profile: "
          f"{straggling_ratio(VGG_CONV2, prof):.2f}")  # fmt: skip


SEARCHES = ("relaxed", "integer")


def gap_stats(shape: LayerShape, n: int, prof: Profile, m: int, samples: int) -> dict:
    """Per k° search: (k°, k*, E[T(k°)] - E[T(k*)], that gap relative to E[T(k*)])."""
    ks, e = mc_latency(shape, n, prof, m=m, samples=samples, seed=0)
    ks_star, best = int(ks[np.argmin(e)]), float(e.min())
    out = {}
    for search in SEARCHES:
        kc = k_circ(shape, n, prof, m, search=search).k
        gap = float(e[kc - 1]) - best
        out[search] = (kc, ks_star, gap, gap / best)
    return out


def summary(rows: list[tuple[int, int, float, float]]) -> str:
    d = np.array([abs(a - b) for a, b, _, _ in rows])
    gaps = np.array([g for _, _, g, _ in rows])
    rel = np.array([r for *_, r in rows])
    return (
        f"{d.max()} | {d.mean():.2f} | {np.mean(d <= 1):.0%} | {gaps.mean():.4f} | "
        f"{gaps.max():.4f} | {100 * rel.mean():.2f} | {100 * rel.max():.2f}"
    )


HEAD = "| max abs(k*-k°) | mean | share <= 1 | mean gap s | max gap s | mean gap % | max gap % |"


def grid(samples: int = 30_000) -> None:
    """Appendix D / Fig. 14(a): n = 20, mu_rec = mu_sen = mu_tr and mu_cmp over a grid."""
    base = pi4_profile()
    mu_tr = np.logspace(6, 9, 7)
    mu_cmp = np.logspace(7, 10, 7)
    print(f"Fig. 14 grid: {VGG_CONV3.name}, n=20, mu_tr in 1e6..1e9 and mu_cmp in 1e7..1e10")
    print(f"(half decades, thetas of the Pi profile), {samples} samples per point\n")
    print("| m | k° search " + HEAD)
    print("|---|---|---|---|---|---|---|---|---|")
    tables = {}
    for m in (1, 2):
        rows: dict[str, list] = {s: [] for s in SEARCHES}
        table = np.zeros((len(mu_tr), len(mu_cmp)), dtype=int)
        for i, mt in enumerate(mu_tr):
            for j, mc in enumerate(mu_cmp):
                prof = Profile(
                    m=base.m,
                    rec=ShiftExp(mt, base.rec.theta),
                    cmp=ShiftExp(mc, base.cmp.theta),
                    sen=ShiftExp(mt, base.sen.theta),
                )
                stats = gap_stats(VGG_CONV3, 20, prof, m, samples)
                for search in SEARCHES:
                    rows[search].append(stats[search])
                table[i, j] = stats["integer"][0] - stats["integer"][1]
        tables[m] = table
        for search in SEARCHES:
            print(f"| {m} | {search} | {summary(rows[search])} |")
    for m, table in tables.items():
        print(f"\nk° - k* (integer search), m={m}; rows mu_tr, columns mu_cmp:")
        print("| mu_tr \\ mu_cmp | " + " | ".join(f"{v:.0e}" for v in mu_cmp) + " |")
        print("|---" * (len(mu_cmp) + 1) + "|")
        for i, mt in enumerate(mu_tr):
            print(f"| {mt:.0e} | " + " | ".join(f"{v:+d}" for v in table[i]) + " |")


def table1(samples: int = 30_000) -> None:
    """Table I: per model, over all its convs, for several straggling levels.

    Scenario 1's extra transmission delay Exp(lambda * mean) is folded into mu_rec and
    mu_sen (mean excess grows by lambda * mean), which keeps the model shift-exponential.
    """
    from cocoi_mpi.latency.planning import build_for_shapes, model_layer_shapes

    base = pi4_profile()
    print(f"n=10, built-in Pi profile, {samples} samples per layer\n")
    print("| model | λ_tr | m | k° search " + HEAD)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in ("vgg16", "resnet18"):
        entries = model_layer_shapes(build_for_shapes(model), (3, 224, 224))
        for lam in (0.0, 0.5, 1.0):
            prof = base
            for ph in ("rec", "sen"):
                se = base.phase(ph)
                excess = 1 / se.mu + lam * se.unit_mean
                prof = prof.with_phase(ph, ShiftExp(1 / excess, se.theta))
            for m in (1, 2):
                stats = [gap_stats(e.shape, 10, prof, m, samples) for e in entries if e.shape]
                for search in SEARCHES:
                    rows = [st[search] for st in stats]
                    print(f"| {model} | {lam} | {m} | {search} | {summary(rows)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["timing", "lemma1", "prop2", "grid", "table1", "all"])
    parser.add_argument("--samples", type=int, default=30_000)
    args = parser.parse_args()
    if args.what in ("timing", "all"):
        timing()
    if args.what in ("lemma1", "all"):
        lemma1()
    if args.what in ("prop2", "all"):
        prop2()
    if args.what in ("grid", "all"):
        grid(args.samples)
    if args.what in ("table1", "all"):
        table1(args.samples)


if __name__ == "__main__":
    main()
