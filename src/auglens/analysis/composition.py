"""Composition (Study A's open question 1): does an augmentation pair A + B behave like A, like B,
like both, or like neither? (``presets/composition.yaml``)

A *pair* is a variant whose augmentation list is exactly two image augmentations, each of which
is the whole list of another variant (A = [x], B = [y], A + B = [x, y]); found from the variant
configs (`composition_pairs`), whatever the names. Label-only augmentations (`LABEL_ONLY`) are not
parts: a mixing followed by label smoothing belongs to the label-mixing study. For each pair,
from the Study A tables of one method:

- **clusters** (``tables/clusters.parquet``): ``outcome`` is ``merges with A`` / ``merges with
  B`` (A + B lands in the cluster of one of them only), ``stays`` (A, B and A + B share one
  cluster) or ``shifts`` (A + B is in a cluster of neither); plus the mean over metrics of the
  Pearson correlation across images (``tables/correlation.parquet``) of A + B with A, with B, and
  of A with B (`CORRELATION_COLUMNS`);
- **maps**: the maps of A + B against those of A and of B, and A's against B's, model by model
  (same seed), image by image (`MAP_METRICS`), summarised over seeds and images against the
  baseline's noise floor exactly as Study A's variants are (`auglens.analysis.study_a.summarize`:
  two-way bootstrap, ``diff`` > 0 = less similar than two baseline seeds are, verdict ``beyond``
  / ``within`` / ``closer`` / ``undecided``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..augment.labels import LABEL_ONLY
from ..config import ExperimentConfig
from ..errors import AuglensError
from ..explain.store import read_explanation
from ..rundir import ROOT_METHOD, RunDir, write_table
from .compare import TARGETS, _compare, _rows
from .inference import Settings
from .study_a import summarize

#: map metrics of the pair comparisons (each must also be in the noise floor of Study A)
MAP_METRICS = ("spearman", "overlap@10", "ssim")
COMPARISONS = ("combined_vs_a", "combined_vs_b", "a_vs_b")
CORRELATION_COLUMNS = ("r_combined_a", "r_combined_b", "r_a_b")
COLUMNS = ["a", "b", "combined", "cluster_a", "cluster_b", "cluster_combined", "outcome",
           *CORRELATION_COLUMNS, "comparison", "metric", "mean", "ci_low", "ci_high", "floor",
           "diff", "diff_low", "diff_high", "margin", "verdict", "provisional", "n_seeds",
           "n_images"]


def composition_pairs(exp: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(A, B, A + B) for every variant whose two augmentations are each another variant's whole
    list (module docstring), in file order; the baseline and label-only augmentations are never
    parts."""
    singles: dict[str, str] = {}
    for name, spec in exp.variants.items():
        if len(spec) == 1 and name != exp.baseline and spec[0]["name"] not in LABEL_ONLY:
            singles.setdefault(_canon(spec[0]), name)
    out = []
    for name, spec in exp.variants.items():
        if len(spec) == 2:
            a, b = singles.get(_canon(spec[0])), singles.get(_canon(spec[1]))
            if a is not None and b is not None and a != b:
                out.append((a, b, name))
    return out


def _canon(item: dict[str, Any]) -> str:
    import json

    return json.dumps(item, sort_keys=True, default=str)


def cluster_outcome(cluster_a: int, cluster_b: int, cluster_combined: int) -> str:
    """``stays`` / ``merges with A`` / ``merges with B`` / ``shifts`` (module docstring)."""
    in_a, in_b = cluster_combined == cluster_a, cluster_combined == cluster_b
    if in_a and in_b:
        return "stays"
    if in_a:
        return "merges with A"
    if in_b:
        return "merges with B"
    return "shifts"


def mean_correlation(corr: pd.DataFrame, a: str, b: str, method: str = "pearson") -> float:
    """Mean over metrics (NaNs skipped) of the correlation across images of ``a`` and ``b``
    (NaN when the pair is absent)."""
    sel = corr[(corr.method == method) & (corr.variant_a == a) & (corr.variant_b == b)]
    r = sel.r.to_numpy(np.float64)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def pair_similarity(exp: ExperimentConfig, run: RunDir, pairs: list[tuple[str, str, str]],
                    method: str = ROOT_METHOD, metrics: tuple[str, ...] = MAP_METRICS
                    ) -> pd.DataFrame:
    """Per seed and image, the maps (predicted class) of A + B vs A, A + B vs B and A vs B:
    rows ``image_id, variant (= "<pair index>|<comparison>"), seed, reference ("baseline"),
    target, metric, value`` in the format of Study A's similarity table (``a`` = the first map
    of the comparison)."""
    present = {(v, s) for v, s, _ in exp.cells()}
    cache: dict[tuple[str, int], dict] = {}

    def load(variant: str, seed: int) -> dict:
        if (variant, seed) not in cache:
            cache[(variant, seed)] = read_explanation(run.explanation(method, variant, seed))[0]
        return cache[(variant, seed)]

    frames = []
    for i, (a, b, ab) in enumerate(pairs):
        for seed in exp.seeds:
            if not {(a, seed), (b, seed), (ab, seed)} <= present:
                continue
            for comp, (x, y) in zip(COMPARISONS, ((ab, a), (ab, b), (a, b)), strict=True):
                res = _compare(load(x, seed), load(y, seed), TARGETS["predicted"], metrics,
                               ())
                frames.append(_rows(res, load(x, seed)["image_ids"].numpy(),
                                    variant=f"{i}|{comp}", seed=seed, reference="baseline",
                                    target="predicted"))
    cols = ["image_id", "variant", "seed", "reference", "target", "metric", "value"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def composition_table(pairs: list[tuple[str, str, str]], similarity: pd.DataFrame,
                      pair_sim: pd.DataFrame, corr: pd.DataFrame, clusters: pd.DataFrame,
                      settings: Settings | None = None,
                      metrics: tuple[str, ...] = MAP_METRICS) -> pd.DataFrame:
    """One row per (pair, comparison, metric) with the columns `COLUMNS`. ``similarity``: Study
    A's similarity table (its noise-floor rows, target ``predicted``, are used); ``pair_sim``:
    `pair_similarity`; ``corr``, ``clusters``: Study A's correlation and cluster tables."""
    floor = similarity[(similarity.reference.astype(str).str.startswith("baseline_seed_"))
                       & (similarity.target.astype(str) == "predicted")
                       & similarity.metric.astype(str).isin(metrics)]
    if pair_sim.empty or floor.empty:
        raise AuglensError("composition needs Study A's noise floor (two or more baseline "
                           "seeds) and the explanations of every pair's models")
    cols = list(pair_sim.columns)
    both = pd.concat([pair_sim.astype({"variant": str, "reference": str, "target": str,
                                       "metric": str}),
                      floor[cols].astype({"variant": str, "reference": str, "target": str,
                                          "metric": str})], ignore_index=True)
    summary = summarize(both, settings)
    floor_mean = summary[summary.variant == "noise_floor"].set_index("metric")["mean"]
    cl = dict(zip(clusters.variant.astype(str), clusters.cluster.astype(int), strict=True))
    rows = []
    for r in summary[summary.variant != "noise_floor"].itertuples():
        i, comp = str(r.variant).split("|")
        a, b, ab = pairs[int(i)]
        ca, cb, cab = cl.get(a, -1), cl.get(b, -1), cl.get(ab, -1)
        rows.append({"a": a, "b": b, "combined": ab, "cluster_a": ca, "cluster_b": cb,
                     "cluster_combined": cab,
                     "outcome": cluster_outcome(ca, cb, cab) if min(ca, cb, cab) >= 0 else "",
                     "r_combined_a": mean_correlation(corr, ab, a),
                     "r_combined_b": mean_correlation(corr, ab, b),
                     "r_a_b": mean_correlation(corr, a, b), "comparison": comp,
                     "metric": r.metric, "mean": r.mean, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "floor": float(floor_mean.get(r.metric, np.nan)),
                     "diff": r.diff, "diff_low": r.diff_low, "diff_high": r.diff_high,
                     "margin": r.margin, "verdict": r.verdict, "provisional": r.provisional,
                     "n_seeds": r.n_seeds, "n_images": r.n_images, "_order": int(i)})
    out = pd.DataFrame(rows)
    out["_c"] = out.comparison.map({c: k for k, c in enumerate(COMPARISONS)})
    out["_m"] = out.metric.map({m: k for k, m in enumerate(metrics)})
    out = out.sort_values(["_order", "_c", "_m"], kind="stable")
    return out[COLUMNS].reset_index(drop=True)


def analyse_composition(exp: ExperimentConfig, run_dir: str | Path,
                        method: str = ROOT_METHOD) -> dict[str, Path]:
    """``tables[/<method>]/composition.parquet`` from the Study A tables and explanations of
    ``method`` when the run has pairs (else nothing is written: {})."""
    run = RunDir(run_dir)
    pairs = composition_pairs(exp)
    if not pairs:
        return {}
    tables = run.tables(method)
    a = exp.analysis
    table = composition_table(
        pairs, pd.read_parquet(tables / "similarity.parquet"),
        pair_similarity(exp, run, pairs, method), pd.read_parquet(tables / "correlation.parquet"),
        pd.read_parquet(tables / "clusters.parquet"),
        Settings(a.n_boot, a.level, a.margin, a.seed, a.power))
    return {"composition": write_table(table, tables / "composition.parquet")}
