"""Statistics over models and images (SPEC §9): the image-level bootstrap, and the two-way
(seed × image) bootstrap that treats the training run as the unit of replication.

Two-way ("pigeonhole", Owen 2007) bootstrap for crossed designs: every trained model is evaluated
on the same images, so a value is indexed by (row, image), where a row is one model (a seed) or one
pair of models (two seeds, for the noise floor). A resample draws the seeds with replacement and,
independently, the images with replacement; a row's weight is the product of the draw counts of its
seeds (a pair (s, t) counts every pair of drawn copies of s and t, so a model is never paired with
itself), an image's weight is its draw count, and the statistic is the weighted mean of the non-NaN
values. Several statistics computed from the same draws (a variant and the noise floor, a variant
and the baseline) give the bootstrap distribution of their difference. Intervals are percentile
intervals. With all rows equal it reduces exactly to `bootstrap_ci` (same image draws).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: resamples drawn per block (bounds memory for many images)
CHUNK = 256


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
    for start in range(0, n_boot, CHUNK):
        stop = min(start + CHUNK, n_boot)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    return percentile_ci(means, level)


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(lower, upper) percentile interval of bootstrap draws (NaN draws ignored)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class Resamples:
    """Draw counts of one two-way bootstrap: ``seeds`` (B, S) and ``images`` (B, I), float64."""

    seeds: np.ndarray
    images: np.ndarray

    @property
    def n_boot(self) -> int:
        return self.seeds.shape[0]

    @functools.cached_property
    def images_t(self) -> np.ndarray:
        """``images`` transposed (I, B), contiguous, for matrix products."""
        return np.ascontiguousarray(self.images.T)

    @functools.cached_property
    def only_seeds(self) -> Resamples:
        """The same seed draws with every image drawn once."""
        return Resamples(self.seeds, np.ones_like(self.images))

    @functools.cached_property
    def only_images(self) -> Resamples:
        """The same image draws with every seed drawn once."""
        return Resamples(np.ones_like(self.seeds), self.images)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) float64 counts of the indices in each row of ``idx`` (rows, k)."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def draw(n_seeds: int, n_images: int, n_boot: int = 2000, seed: int = 0) -> Resamples:
    """Independent draws with replacement of ``n_seeds`` seeds and ``n_images`` images.

    Images come from ``default_rng(seed)`` in the same order as `bootstrap_ci`; seeds from a
    separate stream (``default_rng([seed, 1])``), so the image draws do not depend on the seeds.
    """
    img_rng = np.random.default_rng(seed)
    seed_rng = np.random.default_rng([seed, 1])
    img_counts = np.empty((n_boot, n_images))
    for start in range(0, n_boot, CHUNK):
        stop = min(start + CHUNK, n_boot)
        idx = img_rng.integers(0, n_images, size=(stop - start, n_images))
        img_counts[start:stop] = _counts(idx, n_images)
    seed_counts = _counts(seed_rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)
    return Resamples(seed_counts, img_counts)


def row_weights(res: Resamples, rows: Sequence[tuple[int, ...]]) -> np.ndarray:
    """(B, R) weight of each row per resample: the product of the draw counts of the row's seed
    indices (one index: a model; two distinct indices: a pair of models)."""
    w = np.ones((res.n_boot, len(rows)))
    for r, idx in enumerate(rows):
        for i in idx:
            w[:, r] *= res.seeds[:, i]
    return w


def resampled_means(values: np.ndarray, rows: Sequence[tuple[int, ...]],
                    res: Resamples) -> np.ndarray:
    """(B,) weighted mean of ``values`` (R, I; NaN = missing) under each resample; NaN where a
    resample keeps no value (e.g. every drawn seed the same, for pairs)."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    v0 = np.where(ok, v, 0.0)
    u = res.images_t  # (I, B)
    num_r = v0 @ u  # (R, B): per row, image-weighted sums
    den_r = ok.astype(np.float64) @ u
    w = row_weights(res, rows)  # (B, R)
    num = np.einsum("br,rb->b", w, num_r)
    den = np.einsum("br,rb->b", w, den_r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def grand_mean(values: np.ndarray) -> float:
    """Mean of the non-NaN values of ``values`` (R, I): the statistic `resampled_means` computes
    when every seed and image is drawn once."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def seeds_needed(seed_sd: float, effect: float, level: float = 0.95,
                 power: float = 0.8) -> int | None:
    """Seeds per variant for a two-sided test at ``level`` to detect ``effect`` with ``power``
    when the per-seed means spread with standard deviation ``seed_sd``:
    ⌈((z_{1−α/2} + z_power) · sd / effect)²⌉ (at least 2); None if it cannot be computed."""
    from scipy.stats import norm

    if not (math.isfinite(seed_sd) and math.isfinite(effect)) or effect <= 0:
        return None
    z = norm.ppf(1 - (1 - level) / 2) + norm.ppf(power)
    return max(2, math.ceil((z * seed_sd / effect) ** 2))


def verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """SPEC §9 verdict on an oriented difference (> 0 = less similar / worse than the
    reference): ``beyond`` (CI above 0), ``closer`` (CI below 0), ``within`` (CI contains 0 and
    lies inside ±margin), ``undecided`` otherwise (also for a missing CI)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "undecided"
    if ci_low > 0:
        return "beyond"
    if ci_high < 0:
        return "closer"
    if -margin <= ci_low and ci_high <= margin:
        return "within"
    return "undecided"
