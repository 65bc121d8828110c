"""Seed-level inference for Study A and Study B (SPEC §9): intervals over models and images,
differences to the noise floor (Study A) or to the baseline (Study B), verdicts, and the number of
seeds a decision would need.

Intervals. Every value is indexed by (row, image): a row is one trained model (one seed) or a pair
of baseline models (the noise floor). Resamples come from `auglens.stats.draw` (seeds and images
drawn independently with replacement, the same draws for every statistic of one table, so that
differences are paired). The interval is ``estimate ± t_ν · se`` where ``se² = v_seeds + v_images``:
``v_seeds`` is the variance of the statistic when only the seeds are resampled (× R/(R−1)),
``v_images`` when only the images are (× I/(I−1)); ν is the Satterthwaite degrees of freedom
(R−1 for the seed part, I−1 for the image part). Resampling only the images, as a one-level
bootstrap does, ignores the largest source of variation (the training run); the plain percentile
interval of the joint resampling (also reported, ``pct_low``/``pct_high``) is too narrow with few
seeds. Coverage of both, by simulation, is in docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..stats import Resamples, percentile_ci, seeds_needed, verdict

#: Study A metrics for which a larger value means *less* similar maps.
DISTANCE_METRICS = ("mad", "msd", "com_shift", "emd", "class_kld")


def is_distance(metric: str) -> bool:
    """True if a larger value of ``metric`` means less similar (a distance, not a similarity)."""
    return metric in DISTANCE_METRICS


@dataclass(frozen=True)
class Settings:
    """``n_boot`` resamples, two-sided ``level``, equivalence ``margin`` as a fraction of the
    reference's value (SPEC §9 δ), bootstrap ``seed``, ``power`` for the seeds-needed estimate."""

    n_boot: int = 2000
    level: float = 0.95
    margin: float = 0.1
    seed: int = 0
    power: float = 0.8


def interval(stat: Callable[[Resamples], np.ndarray], estimate: float, res: Resamples,
             level: float = 0.95) -> dict[str, float]:
    """``estimate``, ``se``, ``df``, ``low``/``high`` (t interval, module docstring) and
    ``pct_low``/``pct_high`` (percentile interval of the joint resampling) of a statistic given as
    ``stat(resamples) -> (B,)``."""
    from scipy.stats import t as student_t

    n_seeds, n_images = res.seeds.shape[1], res.images.shape[1]
    joint = stat(res)
    only_seeds = stat(res.only_seeds)
    only_images = stat(res.only_images)
    v_s = _var(only_seeds) * n_seeds / (n_seeds - 1) if n_seeds > 1 else 0.0
    v_i = _var(only_images) * n_images / (n_images - 1) if n_images > 1 else 0.0
    var = v_s + v_i
    pct = percentile_ci(joint, level)
    out = {"estimate": estimate, "se": math.sqrt(var) if math.isfinite(var) else math.nan,
           "df": math.nan, "low": math.nan, "high": math.nan,
           "pct_low": pct[0], "pct_high": pct[1]}
    if not (math.isfinite(estimate) and math.isfinite(var)):
        return out
    if var == 0:
        return out | {"df": math.inf, "low": estimate, "high": estimate}
    denom = (v_s**2 / (n_seeds - 1) if n_seeds > 1 else 0.0) + (
        v_i**2 / (n_images - 1) if n_images > 1 else 0.0)
    df = var**2 / denom if denom > 0 else math.inf
    half = float(student_t.ppf(1 - (1 - level) / 2, df)) * math.sqrt(var)
    return out | {"df": df, "low": estimate - half, "high": estimate + half}


def memo(stat: Callable[[Resamples], np.ndarray]) -> Callable[[Resamples], np.ndarray]:
    """``stat`` computed once per resamples object (a variant's draws are reused by its
    interval and by every difference that involves it)."""
    cache: dict[int, tuple[Resamples, np.ndarray]] = {}

    def wrapped(res: Resamples) -> np.ndarray:
        hit = cache.get(id(res))
        if hit is None or hit[0] is not res:
            hit = cache[id(res)] = (res, stat(res))
        return hit[1]

    return wrapped


def difference(a: Callable[[Resamples], np.ndarray], b: Callable[[Resamples], np.ndarray],
               sign: float = 1.0) -> Callable[[Resamples], np.ndarray]:
    """The statistic ``sign · (a − b)`` evaluated on the same resamples (a paired difference)."""
    return lambda res: sign * (a(res) - b(res))


def _var(draws: np.ndarray) -> float:
    d = draws[np.isfinite(draws)]
    return float(d.var(ddof=1)) if d.size > 1 else math.nan


def decide(diff: dict[str, float], reference: float, settings: Settings,
           seed_spread: float, n_seeds: int) -> dict[str, object]:
    """Verdict on an oriented difference interval ``diff`` (> 0 = less similar / lower than the
    reference), with margin ``settings.margin · |reference|``; plus ``provisional`` (fewer than 3
    seeds) and ``seeds_needed`` to resolve a difference of the margin's size given the observed
    spread of the per-seed differences ``seed_spread`` (standard deviation)."""
    margin = settings.margin * abs(reference) if math.isfinite(reference) else math.nan
    return {"margin": margin,
            "verdict": verdict(diff["low"], diff["high"], margin),
            "provisional": n_seeds < 3,
            "seeds_needed": seeds_needed(seed_spread, margin, settings.level, settings.power)}


def seed_spread(per_seed: np.ndarray) -> float:
    """Standard deviation (ddof 1) of finite per-seed values; NaN with fewer than 2."""
    v = np.asarray(per_seed, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def row_means(values: np.ndarray) -> np.ndarray:
    """Per-row mean over images of (R, I) values, NaNs skipped (NaN for an all-NaN row)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(1), np.where(ok, v, 0).sum(1) / np.maximum(ok.sum(1), 1), np.nan)
