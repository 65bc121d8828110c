"""Small statistics used by the analyses: bootstrap CIs and seed-averaging."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs ignored; (nan, nan) if < 2 left).

    Resamples are drawn with ``numpy.random.default_rng(seed)``: the same input gives the same CI.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound memory for large inputs
        stop = min(start + 256, n_boot)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi))
