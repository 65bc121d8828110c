"""Study A analysis on the tidy similarity table (SPEC §3, "Aggregation").

Input: ``similarity`` rows ``image_id, variant, seed, reference, target, metric, value`` where
``reference`` is ``baseline`` (augmented model vs the baseline of the same seed) or
``baseline_seed_<k>`` (the noise floor: baseline of one seed vs baseline of seed k).
"""

from __future__ import annotations

import functools
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ..stats import Resamples, draw, grand_mean, resampled_means
from .inference import (
    Settings,
    decide,
    difference,
    interval,
    is_distance,
    memo,
    row_means,
    seed_spread,
)

NOISE_FLOOR = "noise_floor"


def seed_average(similarity: pd.DataFrame) -> pd.DataFrame:
    """Per image, the mean over seeds (and, for the noise floor, over seed pairs) of each metric.

    Returns ``variant, target, metric, image_id, value, n_seeds``; the noise floor appears as
    variant ``noise_floor``. NaNs are skipped in the mean (a mean of only NaNs stays NaN).
    """
    df = similarity.copy()
    for col in ("variant", "reference", "target", "metric"):
        df[col] = df[col].astype(str)
    floor = df["reference"] != "baseline"
    df.loc[floor, "variant"] = NOISE_FLOOR
    g = df.groupby(["variant", "target", "metric", "image_id"], sort=False)["value"]
    out = g.agg(value="mean", n_seeds="count").reset_index()
    return out


def summarize(similarity: pd.DataFrame, settings: Settings | None = None) -> pd.DataFrame:
    """Seed-level summary of Study A (SPEC §9), one row per variant, reference, target, metric.

    ``similarity``: the per-seed table of `similarity_table` (``reference`` ``baseline`` = the
    variant vs the final baseline of its seed, ``matched_baseline`` = vs the accuracy-matched
    baseline checkpoint of its seed, ``baseline_seed_<k>`` = the noise floor). Returns
    ``variant, reference (final|matched), target, metric, mean, ci_low, ci_high, se, df, pct_low,
    pct_high, n_seeds, n_images, n_nan, diff, diff_low, diff_high, margin, verdict, provisional,
    seeds_needed``; the noise floor is variant ``noise_floor``. ``diff`` is oriented so that > 0
    means less similar to the baseline than another seed of the baseline is (floor − value for
    similarities, value − floor for distances); intervals: `auglens.analysis.inference`.
    """
    settings = settings or Settings()
    df = similarity.copy()
    for col in ("variant", "reference", "target", "metric"):
        df[col] = df[col].astype(str)
    seeds = sorted(int(s) for s in df.seed.unique())
    pos = {s: i for i, s in enumerate(seeds)}
    rows = []
    draws: dict[int, Resamples] = {}  # the same draws for every metric (and target)
    for (target, metric), g in df.groupby(["target", "metric"], sort=False):
        images = np.sort(g.image_id.unique())
        if len(images) not in draws:
            draws[len(images)] = draw(len(seeds), len(images), settings.n_boot, settings.seed)
        res = draws[len(images)]
        is_floor = g.reference.str.startswith("baseline_seed_")
        fl = g[is_floor].assign(other=lambda d: d.reference.str.rsplit("_", n=1).str[1].astype(int))
        pairs = sorted({(pos[int(a)], pos[int(b)]) for a, b in zip(fl.seed, fl.other, strict=True)})
        floor_v = _matrix(fl, ["seed", "other"], [(seeds[a], seeds[b]) for a, b in pairs], images)
        floor_stat = memo(functools.partial(resampled_means, floor_v, pairs))
        floor = interval(floor_stat, grand_mean(floor_v), res, settings.level)
        rows.append(_row("noise_floor", "final", target, metric, floor, floor_v, len(pairs)))
        model_rows = [(i,) for i in range(len(seeds))]
        sign = 1.0 if is_distance(metric) else -1.0
        for (variant, ref), h in g[~is_floor].groupby(["variant", "reference"], sort=False):
            v = _matrix(h, ["seed"], seeds, images)
            stat = memo(functools.partial(resampled_means, v, model_rows))
            est = interval(stat, grand_mean(v), res, settings.level)
            d = interval(difference(stat, floor_stat, sign),
                         sign * (est["estimate"] - floor["estimate"]), res, settings.level)
            n_seeds = int(np.isfinite(v).any(1).sum())
            spread = seed_spread(sign * (row_means(v) - floor["estimate"]))
            rows.append(_row(variant, "matched" if ref == "matched_baseline" else "final", target,
                             metric, est, v, n_seeds)
                        | {"diff": d["estimate"], "diff_low": d["low"], "diff_high": d["high"]}
                        | decide(d, floor["estimate"], settings, spread, n_seeds))
    return pd.DataFrame(rows)


def _matrix(df: pd.DataFrame, keys: list[str], rows: list, images: np.ndarray) -> np.ndarray:
    """(len(rows), len(images)) values of ``df`` indexed by ``keys`` (a row of ``rows`` is the
    key value, or a tuple of them for several keys) and ``image_id`` (NaN where absent)."""
    out = np.full((len(rows), len(images)), np.nan)
    if df.empty or not rows:
        return out
    where = {r: i for i, r in enumerate(rows)}
    cols = [df[k].to_numpy() for k in keys]
    keyed = cols[0] if len(keys) == 1 else list(zip(*cols, strict=True))
    r = np.array([where.get(k if len(keys) == 1 else tuple(k), -1) for k in keyed], dtype=np.int64)
    ids = df.image_id.to_numpy()
    c = np.clip(np.searchsorted(images, ids), 0, len(images) - 1)
    ok = (r >= 0) & (images[c] == ids)
    out[r[ok], c[ok]] = df.value.to_numpy(np.float64)[ok]
    return out


def _row(variant: str, reference: str, target: str, metric: str, est: dict[str, float],
         values: np.ndarray, n_rows: int) -> dict[str, object]:
    return {"variant": variant, "reference": reference, "target": target, "metric": metric,
            "mean": est["estimate"], "ci_low": est["low"], "ci_high": est["high"],
            "se": est["se"], "df": est["df"], "pct_low": est["pct_low"],
            "pct_high": est["pct_high"], "n_seeds": n_rows, "n_images": int(values.shape[1]),
            "n_nan": int(np.isnan(values[np.isfinite(values).any(1)]).sum())}


def _wide(per_image: pd.DataFrame, metric: str, target: str) -> pd.DataFrame:
    sub = per_image[
        (per_image.metric == metric)
        & (per_image.target == target)
        & (per_image.variant != NOISE_FLOOR)
    ]
    return sub.pivot(index="image_id", columns="variant", values="value")


def correlations(per_image: pd.DataFrame, target: str = "predicted") -> pd.DataFrame:
    """Per metric and method (pearson, spearman), the correlation across images of the
    seed-averaged values of every two augmentations → ``metric, method, variant_a, variant_b, r,
    n_images`` (both orders, diagonal included; images with NaN in either are left out)."""
    rows = []
    for metric in per_image.metric.unique():
        wide = _wide(per_image, metric, target)
        variants = list(wide.columns)
        values = wide.to_numpy(np.float64)
        finite = ~np.isnan(values)
        for method in ("pearson", "spearman"):
            r = np.full((len(variants), len(variants)), np.nan)
            n = np.zeros((len(variants), len(variants)), dtype=np.int64)
            for i in range(len(variants)):
                n[i, i] = int(finite[:, i].sum())
                r[i, i] = 1.0 if n[i, i] > 1 else np.nan
                for j in range(i + 1, len(variants)):
                    keep = finite[:, i] & finite[:, j]
                    n[i, j] = n[j, i] = int(keep.sum())
                    r[i, j] = r[j, i] = _corr(values[keep, i], values[keep, j], method)
            for i, a in enumerate(variants):
                for j, b in enumerate(variants):
                    rows.append({"metric": metric, "method": method, "variant_a": a,
                                 "variant_b": b, "r": float(r[i, j]), "n_images": int(n[i, j])})
    return pd.DataFrame(rows)


def _corr(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Pearson r, or Spearman ρ (Pearson r of average ranks, as scipy.stats.spearmanr); NaN for
    fewer than 2 values or a constant input."""
    from scipy.stats import rankdata

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if method != "pearson":
        x, y = rankdata(x), rankdata(y)
    xc, yc = x - x.mean(), y - y.mean()
    r = float((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)))
    return max(-1.0, min(1.0, r))


def pair_frequency(corr: pd.DataFrame, k: int = 4, method: str = "pearson") -> pd.DataFrame:
    """For each metric, the k highest and k lowest off-diagonal pairs (unordered, by ``r``);
    count per pair over metrics → ``variant_a, variant_b, top_count, bottom_count, n_metrics``
    (ties at the cut are broken by pair name, so the table is deterministic)."""
    sub = corr[(corr.method == method) & (corr.variant_a < corr.variant_b)].dropna(subset=["r"])
    counts: dict[tuple[str, str], list[int]] = {}
    metrics = list(sub.metric.unique())
    for metric in metrics:
        m = sub[sub.metric == metric].sort_values(["variant_a", "variant_b"])
        for key in zip(m.variant_a, m.variant_b, strict=True):
            counts.setdefault(key, [0, 0])
        top = m.sort_values("r", ascending=False, kind="stable").head(k)
        bottom = m.sort_values("r", ascending=True, kind="stable").head(k)
        for a, b in zip(top.variant_a, top.variant_b, strict=True):
            counts[(a, b)][0] += 1
        for a, b in zip(bottom.variant_a, bottom.variant_b, strict=True):
            counts[(a, b)][1] += 1
    rows = [
        {
            "variant_a": a,
            "variant_b": b,
            "method": method,
            "k": k,
            "top_count": t,
            "bottom_count": bo,
            "n_metrics": len(metrics),
        }
        for (a, b), (t, bo) in counts.items()
    ]
    cols = ["variant_a", "variant_b", "method", "k", "top_count", "bottom_count", "n_metrics"]
    return (
        pd.DataFrame(rows, columns=cols)
        .sort_values(["top_count", "bottom_count"], ascending=[False, True], kind="stable")
        .reset_index(drop=True)
    )


def mean_correlation_matrix(corr: pd.DataFrame, method: str = "pearson") -> pd.DataFrame:
    """Mean over metrics of the correlation matrices (NaNs skipped) → square DataFrame."""
    sub = corr[corr.method == method]
    return sub.pivot_table(index="variant_a", columns="variant_b", values="r", aggfunc="mean")


def cluster(
    corr: pd.DataFrame,
    method: str = "pearson",
    n_clusters: int | None = None,
    threshold: float = 0.5,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Average-linkage hierarchical clustering of augmentations on distance 1 − mean r.

    Returns (``variant, cluster`` table, scipy linkage matrix). Clusters are cut at
    ``n_clusters`` if given, else at distance ``threshold``.
    """
    mat = mean_correlation_matrix(corr, method)
    names = list(mat.index)
    if len(names) < 2:
        return pd.DataFrame({"variant": names, "cluster": [1] * len(names)}), np.empty((0, 4))
    d = 1 - mat.loc[names, names].to_numpy(np.float64)
    d = np.nan_to_num((d + d.T) / 2, nan=1.0)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(np.clip(d, 0, None), checks=False), method="average")
    if n_clusters:
        labels = fcluster(z, n_clusters, criterion="maxclust")
    else:
        labels = fcluster(z, threshold, criterion="distance")
    return pd.DataFrame({"variant": names, "cluster": labels.astype(int)}), z


def noise_floor_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    """Seed pairs (i, j), i < j, whose baselines are compared for the noise floor."""
    return list(combinations(sorted(seeds), 2))
