"""Statistics over models (SPEC §9): the two-way (seed × image) bootstrap against a slow
nested-loop twin, its reduction to the image-level bootstrap, coverage by simulation, verdicts."""

import math

import numpy as np
import pytest

from auglens.analysis.inference import Settings, decide, difference, interval, is_distance
from auglens.stats import (
    bootstrap_ci,
    draw,
    grand_mean,
    percentile_ci,
    resampled_means,
    seeds_needed,
    verdict,
)


def slow_resample_mean(values, rows, seed_idx, image_idx):
    """Literal two-way resample: the drawn seeds' rows (a pair row only between two drawn copies
    with different seeds), the drawn images, then the mean of every non-NaN value."""
    drawn = list(seed_idx)  # drawn copies of the seeds, by position
    total, count = 0.0, 0
    for r, row in enumerate(rows):
        if len(row) == 1:
            copies = [1 for s in drawn if s == row[0]]
        else:
            a, b = row
            copies = [1 for i, s in enumerate(drawn) for t in drawn if s == a and t == b]
        for _ in copies:
            for i in image_idx:
                v = values[r, i]
                if not math.isnan(v):
                    total += v
                    count += 1
    return total / count if count else math.nan


def _draw_indices(res, b):
    seeds = [s for s, c in enumerate(res.seeds[b]) for _ in range(int(c))]
    images = [i for i, c in enumerate(res.images[b]) for _ in range(int(c))]
    return seeds, images


@pytest.mark.parametrize("kind", ["models", "pairs"])
def test_two_way_bootstrap_equals_nested_loop(kind):
    rng = np.random.default_rng(1)
    n_seeds, n_images = 4, 7
    if kind == "models":
        rows = [(i,) for i in range(n_seeds)]
    else:
        rows = [(i, j) for i in range(n_seeds) for j in range(i + 1, n_seeds)]
    values = rng.normal(size=(len(rows), n_images))
    values[1, 2] = np.nan
    values[0, 5] = np.nan
    res = draw(n_seeds, n_images, n_boot=60, seed=3)
    fast = resampled_means(values, rows, res)
    for b in range(res.n_boot):
        s_idx, i_idx = _draw_indices(res, b)
        slow = slow_resample_mean(values, rows, s_idx, i_idx)
        if math.isnan(slow):
            assert math.isnan(fast[b])
        else:
            assert fast[b] == pytest.approx(slow, rel=1e-12, abs=1e-12)
    # every seed and image drawn once: the statistic itself
    ones = type(res)(np.ones((1, n_seeds), np.int32), np.ones((1, n_images), np.int32))
    assert resampled_means(values, rows, ones)[0] == pytest.approx(grand_mean(values))


def test_draws_are_independent_uniform_counts():
    res = draw(3, 50, n_boot=500, seed=0)
    assert (res.seeds.sum(1) == 3).all() and (res.images.sum(1) == 50).all()
    assert res.images.mean() == pytest.approx(1.0)
    assert abs(res.seeds.mean(0) - 1).max() < 0.15


def test_identical_seeds_reduce_to_the_image_level_bootstrap():
    rng = np.random.default_rng(0)
    per_image = rng.normal(0.7, 0.1, size=120)
    values = np.tile(per_image, (3, 1))  # three seeds, identical values
    res = draw(3, 120, n_boot=1000, seed=5)
    two_way = percentile_ci(resampled_means(values, [(0,), (1,), (2,)], res))
    one_way = bootstrap_ci(per_image, n_boot=1000, seed=5)
    assert two_way == pytest.approx(one_way, rel=0, abs=1e-12)


def _simulate(n_sim, n_seeds, n_images, sd_seed, sd_image, sd_noise, n_boot=400):
    rng = np.random.default_rng(2024)
    rows = [(i,) for i in range(n_seeds)]
    hit_two, hit_one, width_two, width_one = 0, 0, [], []
    for k in range(n_sim):
        v = (rng.normal(0, sd_seed, (n_seeds, 1)) + rng.normal(0, sd_image, (1, n_images))
             + rng.normal(0, sd_noise, (n_seeds, n_images)))  # true mean 0
        res = draw(n_seeds, n_images, n_boot, seed=k)
        est = interval(lambda r, v=v: resampled_means(v, rows, r), grand_mean(v), res)
        hit_two += est["low"] <= 0 <= est["high"]
        width_two.append(est["high"] - est["low"])
        lo, hi = bootstrap_ci(v.mean(0), n_boot=n_boot, seed=k)  # images only, after averaging
        hit_one += lo <= 0 <= hi
        width_one.append(hi - lo)
    return hit_two / n_sim, hit_one / n_sim, np.mean(width_two), np.mean(width_one)


def test_coverage_by_simulation_seed_level_vs_image_level():
    """3 seeds × 100 images, seed sd 0.05, image sd 0.1, residual 0.1 (the kind of spread the
    quick study shows): the two-way interval covers the true mean ≈ 95 % of the time; the
    image-level bootstrap of seed-averaged values does not (it ignores the training run)."""
    two_way, image_level, w2, w1 = _simulate(240, 3, 100, 0.05, 0.1, 0.1)
    assert 0.93 <= two_way <= 0.97, two_way
    assert image_level < 0.6, image_level
    assert w2 > 2 * w1


def test_verdicts_on_hand_made_intervals():
    assert verdict(0.01, 0.2, 0.05) == "beyond"
    assert verdict(-0.2, -0.01, 0.05) == "closer"
    assert verdict(-0.04, 0.03, 0.05) == "within"
    assert verdict(-0.04, 0.08, 0.05) == "undecided"
    assert verdict(math.nan, 0.1, 0.05) == "undecided"
    d = {"low": -0.01, "high": 0.02, "estimate": 0.005}
    out = decide(d, reference=0.5, settings=Settings(margin=0.1), seed_spread=0.04, n_seeds=2)
    assert out["margin"] == pytest.approx(0.05) and out["verdict"] == "within"
    assert out["provisional"] is True


def test_seeds_needed_known_answer():
    # (1.959964 + 0.841621)^2 * (1 / 1)^2 = 7.85 -> 8 seeds
    assert seeds_needed(1.0, 1.0) == 8
    assert seeds_needed(0.5, 1.0) == 2
    assert seeds_needed(float("nan"), 1.0) is None and seeds_needed(1.0, 0.0) is None


def test_paired_difference_uses_the_same_draws():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 40))
    b = a + 0.5  # b - a is exactly 0.5 for every seed and image
    rows = [(0,), (1,), (2,)]
    res = draw(3, 40, n_boot=300, seed=1)

    def stat_a(r):
        return resampled_means(a, rows, r)

    def stat_b(r):
        return resampled_means(b, rows, r)

    d = interval(difference(stat_b, stat_a), 0.5, res)
    assert d["low"] == pytest.approx(0.5) and d["high"] == pytest.approx(0.5)
    assert is_distance("mad") and not is_distance("spearman")
