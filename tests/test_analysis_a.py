import numpy as np
import pandas as pd
import pytest
from scipy import stats

from auglens.analysis.inference import Settings
from auglens.analysis.study_a import (
    NOISE_FLOOR,
    cluster,
    correlations,
    pair_frequency,
    seed_average,
    summarize,
)
from auglens.stats import bootstrap_ci


def test_bootstrap_ci_matches_slow_loop_and_known_cases():
    v = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    lo, hi = bootstrap_ci(v, n_boot=500, seed=3)
    # slow reference: the same draws, one resample at a time
    rng = np.random.default_rng(3)
    means = []
    for start in range(0, 500, 256):
        idx = rng.integers(0, 5, size=(min(256, 500 - start), 5))
        means += [v[row].mean() for row in idx]
    assert (lo, hi) == tuple(np.quantile(means, [0.025, 0.975]))
    assert lo < v.mean() < hi
    assert bootstrap_ci(np.full(20, 0.7)) == (pytest.approx(0.7), pytest.approx(0.7))
    assert all(np.isnan(bootstrap_ci(np.array([1.0, np.nan]))))
    # a large sample's CI is about mean ± 1.96 σ/√n
    x = np.random.default_rng(0).normal(5, 2, 4000)
    lo, hi = bootstrap_ci(x)
    assert abs((hi - lo) / 2 - 1.96 * 2 / np.sqrt(4000)) < 0.01


def _sim_table():
    rows = []
    for img in range(4):
        for seed in (0, 1):
            rows.append((img, "affine", seed, "baseline", "predicted", "mad", img + seed))
            rows.append((img, "cutmix", seed, "baseline", "predicted", "mad", 2 * img))
        rows.append((img, "baseline", 0, "baseline_seed_1", "predicted", "mad", 0.1 * img))
    rows.append((4, "affine", 0, "baseline", "predicted", "mad", np.nan))
    return pd.DataFrame(
        rows, columns=["image_id", "variant", "seed", "reference", "target", "metric", "value"]
    )


def test_seed_average_and_summary():
    per = seed_average(_sim_table())
    aff = per[(per.variant == "affine")].set_index("image_id")["value"]
    assert aff.loc[0] == 0.5 and aff.loc[3] == 3.5 and np.isnan(aff.loc[4])
    floor = per[per.variant == NOISE_FLOOR].set_index("image_id")["value"]
    assert floor.loc[2] == pytest.approx(0.2)
    s = summarize(_sim_table(), Settings(n_boot=200)).set_index("variant")
    # affine: seeds 0 and 1 over images 0..3 (values img + seed), image 4 NaN for seed 0
    assert s.loc["affine", "mean"] == pytest.approx(np.mean([i + k for i in range(4)
                                                             for k in (0, 1)]))
    assert s.loc["affine", "n_nan"] == 2 and s.loc["affine", "n_images"] == 5  # + image 4 seed 1
    assert s.loc["cutmix", "mean"] == pytest.approx(3.0)
    # mad is a distance: diff = value − floor; the floor is 0.1·img over images 0..3
    assert s.loc["cutmix", "diff"] == pytest.approx(3.0 - 0.15)
    assert s.loc[NOISE_FLOOR, "n_seeds"] == 1 and s.loc["affine", "n_seeds"] == 2
    assert bool(s.loc["affine", "provisional"]) and s.loc["cutmix", "verdict"] in (
        "beyond", "undecided")


def test_correlations_equal_scipy_and_pair_frequency_by_hand():
    rng = np.random.default_rng(0)
    base = rng.normal(size=50)
    vals = {
        "a": base,
        "b": base + 0.1 * rng.normal(size=50),
        "c": rng.normal(size=50),
        "d": -base + 0.5 * rng.normal(size=50),
    }
    rows = [
        (i, v, 0, "baseline", "predicted", m, x[i] * (1 if m == "m1" else 2))
        for v, x in vals.items()
        for i in range(50)
        for m in ("m1", "m2")
    ]
    sim = pd.DataFrame(
        rows, columns=["image_id", "variant", "seed", "reference", "target", "metric", "value"]
    )
    corr = correlations(seed_average(sim))
    r = corr.set_index(["metric", "method", "variant_a", "variant_b"])["r"]
    assert r[("m1", "pearson", "a", "c")] == pytest.approx(stats.pearsonr(vals["a"], vals["c"])[0])
    assert r[("m2", "spearman", "b", "d")] == pytest.approx(
        stats.spearmanr(vals["b"], vals["d"])[0]
    )
    assert r[("m1", "pearson", "c", "c")] == 1.0
    # pairs by r: (a,b) highest, (a,d),(b,d) lowest; with k=1 over two metrics
    pf = pair_frequency(corr, k=1).set_index(["variant_a", "variant_b"])
    assert pf.loc[("a", "b"), "top_count"] == 2 and pf.loc[("a", "b"), "n_metrics"] == 2
    lowest = min([("a", "d"), ("b", "d")], key=lambda p: r[("m1", "pearson", *p)])
    assert pf.loc[lowest, "bottom_count"] == 2
    assert pf["top_count"].sum() == 2 and pf["bottom_count"].sum() == 2
    clusters, z = cluster(corr, n_clusters=2)
    lab = clusters.set_index("variant")["cluster"]
    assert lab["a"] == lab["b"] and lab["a"] != lab["d"]
    assert z.shape == (3, 4)


def test_every_correlation_equals_scipy_with_nans_and_ties():
    rng = np.random.default_rng(1)
    vals = {v: np.round(rng.normal(size=40), 1) for v in "abcd"}  # rounding makes ties
    vals["b"][[3, 7]] = np.nan
    vals["c"][[7, 9]] = np.nan
    rows = [(i, v, 0, "baseline", "predicted", "m", x[i]) for v, x in vals.items()
            for i in range(40)]
    sim = pd.DataFrame(
        rows, columns=["image_id", "variant", "seed", "reference", "target", "metric", "value"]
    )
    corr = correlations(seed_average(sim))
    for row in corr.itertuples():
        x, y = vals[row.variant_a], vals[row.variant_b]
        keep = ~np.isnan(x) & ~np.isnan(y)
        assert row.n_images == keep.sum()
        if row.variant_a == row.variant_b:
            assert row.r == 1.0
            continue
        f = stats.pearsonr if row.method == "pearson" else stats.spearmanr
        assert row.r == pytest.approx(f(x[keep], y[keep])[0], abs=1e-12)
