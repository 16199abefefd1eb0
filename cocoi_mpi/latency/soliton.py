"""The Robust Soliton degree distribution of LT codes (Luby 2002), defined once.

The runtime's LT scheme (:mod:`cocoi_mpi.codes.lt`, LtCoI of the paper's appendix G)
draws each symbol's degree from it, and the simulator (:mod:`cocoi_mpi.latency.simulate`)
models that scheme, so both take this one pmf with the same parameters. It lives
outside :mod:`cocoi_mpi.codes` because that package imports torch and the simulator
is pure numpy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# R = c ln(k/delta) sqrt(k). The paper names the distribution but not c or delta;
# these are what the LT scheme has always sampled with, and every seeded LT run's
# symbols (codes.lt.LTCode.vector) depend on them.
SOLITON_C = 0.1
SOLITON_DELTA = 0.5


@lru_cache(maxsize=256)
def robust_soliton(k: int, c: float = SOLITON_C, delta: float = SOLITON_DELTA) -> np.ndarray:
    """P(degree = d) for d = 1..k (index d-1): ideal soliton plus the robust spike.

    The robust part adds R/(d k) for d below the spike at round(k/R) and
    R ln(R/delta)/k (at least 0) at it. Where the spike would fall past k (R < ~1:
    k <= 10 at the defaults) nothing is added and the pmf is the ideal soliton; Luby's
    definition would still add R/(d k) at every d. That is kept as is: the LT symbols
    of every seeded run at small k are drawn from this pmf. Read-only (it is cached).
    """
    d = np.arange(1, k + 1, dtype=np.float64)
    rho = np.where(d == 1, 1.0 / k, 1.0 / (d * np.maximum(d - 1, 1)))
    big_r = c * np.log(k / delta) * np.sqrt(k)
    spike = int(round(k / big_r)) if big_r > 0 else k
    tau = np.zeros(k)
    if 1 <= spike <= k:
        tau[: spike - 1] = big_r / (d[: spike - 1] * k)
        tau[spike - 1] = big_r * np.log(big_r / delta) / k
    mu = rho + np.maximum(tau, 0.0)
    pmf = mu / mu.sum()
    pmf.setflags(write=False)
    return pmf
