"""Is a divergence just lower accuracy? Every per-cell metric against the cell's validation
accuracy, with Spearman's rank correlation (SPEC §10 "accuracy-matched control").

Points are the trained cells (final weights; their best validation accuracy) and the baseline
checkpoints the accuracy-matched comparisons use (their epoch's validation accuracy). Study A's
value for a cell is its mean similarity to the final baseline of its seed (a baseline checkpoint:
to the final baseline of its own seed — how much a less-trained baseline differs from itself);
Study B's is the cell's mean score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import ExperimentConfig
from ..rundir import RunDir

COLUMNS = ["study", "method", "variant", "seed", "epoch", "val_accuracy", "metric", "value"]


def _val_accuracy(run: RunDir, variant: str, seed: int, epoch: int | None) -> float:
    rec = run.record(variant, seed).raw
    if epoch is None:
        return float(rec["best_val_accuracy"])
    return float(rec["history"][epoch - 1]["val_accuracy"])


def points_a(exp: ExperimentConfig, run: RunDir, method: str, similarity: pd.DataFrame,
             checkpoints: list[tuple[int, int]], metrics: tuple[str, ...]) -> pd.DataFrame:
    """Study A points: augmented cells and the baseline checkpoints (``checkpoints`` (seed,
    epoch)), predicted-class maps, mean over images of each metric in ``metrics``."""
    from ..explain.store import read_explanation
    from .compare import TARGETS, _compare

    sim = similarity[(similarity.reference.astype(str) == "baseline")
                     & (similarity.target.astype(str) == "predicted")
                     & similarity.metric.astype(str).isin(metrics)]
    rows = []
    for (variant, seed, metric), g in sim.groupby(["variant", "seed", "metric"], observed=True):
        rows.append(("A", method, str(variant), int(seed), None,
                     _val_accuracy(run, str(variant), int(seed), None), str(metric),
                     float(np.nanmean(g.value)) if g.value.notna().any() else np.nan))
    for seed, epoch in checkpoints:
        final = read_explanation(run.explanation(method, exp.baseline, seed))[0]
        ckpt = read_explanation(run.explanation(method, exp.baseline, seed, epoch))[0]
        res = _compare(ckpt, final, TARGETS["predicted"], tuple(_base(m) for m in metrics),
                       _ys(metrics))
        acc = _val_accuracy(run, exp.baseline, seed, epoch)
        for metric in metrics:
            v = res[metric].double().numpy()
            rows.append(("A", method, exp.baseline, seed, epoch, acc, metric,
                         float(np.nanmean(v)) if np.isfinite(v).any() else np.nan))
    return pd.DataFrame(rows, columns=COLUMNS)


def _base(metric: str) -> str:
    return "overlap" if metric.startswith("overlap@") else "iou" if metric.startswith(
        "iou@") else metric


def _ys(metrics: tuple[str, ...]) -> tuple[float, ...]:
    ys = sorted({float(m.split("@")[1]) for m in metrics if "@" in m})
    return tuple(ys) or (10.0,)


def points_b(exp: ExperimentConfig, run: RunDir, interp: pd.DataFrame,
             matched: pd.DataFrame | None) -> pd.DataFrame:
    """Study B points: every cell and every matched baseline checkpoint, mean score per metric."""
    rows = []
    for (method, variant, seed, metric), g in interp.groupby(
            ["method", "variant", "seed", "metric"], sort=False):
        rows.append(("B", method, variant, int(seed), None,
                     _val_accuracy(run, variant, int(seed), None), metric,
                     float(np.nanmean(g.value)) if g.value.notna().any() else np.nan))
    if matched is not None and not matched.empty:
        m = matched.drop_duplicates(["method", "seed", "baseline_epoch", "metric", "image_id"])
        best = {s: int(run.record(exp.baseline, int(s)).raw["best_epoch"]) for s in m.seed.unique()}
        m = m[m.baseline_epoch != m.seed.map(best)]  # the final weights are a cell already
        for (method, seed, epoch, metric), g in m.groupby(
                ["method", "seed", "baseline_epoch", "metric"], sort=False):
            rows.append(("B", method, exp.baseline, int(seed), int(epoch),
                         _val_accuracy(run, exp.baseline, int(seed), int(epoch)), metric,
                         float(np.nanmean(g.value)) if g.value.notna().any() else np.nan))
    return pd.DataFrame(rows, columns=COLUMNS)


def correlations(points: pd.DataFrame) -> pd.DataFrame:
    """Per (study, method, metric): Spearman's ρ (scipy) of value vs validation accuracy over
    the trained cells (``points`` = ``cells``) and over cells plus baseline checkpoints
    (``all``), with its p-value and the number of points."""
    from scipy.stats import spearmanr

    rows = []
    for (study, method, metric), g in points.groupby(["study", "method", "metric"], sort=False):
        for which, sub in (("cells", g[g.epoch.isna()]), ("all", g)):
            sub = sub[np.isfinite(sub.value)]
            if len(sub) >= 3 and sub.value.nunique() > 1 and sub.val_accuracy.nunique() > 1:
                r = spearmanr(sub.val_accuracy, sub.value)
                rho, p = float(r.statistic), float(r.pvalue)
            else:
                rho = p = float("nan")
            rows.append({"study": study, "method": method, "metric": metric, "points": which,
                         "n": int(len(sub)), "spearman_rho": rho, "p_value": p})
    return pd.DataFrame(rows)
