"""Study B end to end on a run directory: gathers the per-cell evaluation and dissection files
(:mod:`auglens.metrics.store`) into tidy tables, summarises them with bootstrap CIs, and plots.

Writes ``tables/{interpretability, alignment_counts, summary_b, curves}.parquet`` (all methods,
column ``method``), ``tables/{dissection, dissection_summary}.parquet`` and
``plots/{alignment, deletion_insertion_curves, faithfulness_scores, label_mixing,
dissection_detectors}.png``. Columns: docs/outputs.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..augment import AUGMENTATIONS
from ..config import ExperimentConfig
from ..errors import AuglensError
from ..metrics.alignment import filter_images
from ..metrics.store import curves_path, dissection_path, evaluation_path, read_metadata
from ..utils import write_json
from . import plots_b
from .run_a import write_table
from .stats import bootstrap_ci

#: augmentations whose variants form Study B's label-mixing pairs
MIXING = ("cutout", "mixup", "cutmix", "saliencymix")
ALIGNMENT_METRICS = ("energy_pointing_game", "effective_heat_ratio")
FILTER_INPUTS = ("box_fraction", "target_prob")
CONVENTIONS = {
    "map_resolution": "maps upsampled bilinearly (align_corners=False) to input resolution",
    "alignment_region": "the object mask (built-in dataset) or the union of the boxes",
    "alignment_images": "every model on the same images (intersection of each model's filter) "
                        "unless evaluate.common_images is false",
    "faithfulness": "deletion to 0 in normalised space, insertion from Gaussian blur; score = "
                    "softmax probability of the explained (predicted) class; AUC trapezoid",
    "scores": "delta_del = AUC_del(random) - AUC_del(morf); delta_ins = AUC_ins(morf) - "
              "AUC_ins(random); lerf_morf_* likewise; higher = ordering matters more",
    "seed_aggregation": "per image, mean over seeds; then mean and percentile bootstrap 95 % CI "
                        "over images (2000 resamples, seed 0)",
    "nan": "NaN values (e.g. an all-zero map) are kept and counted in n_nan",
}


def variant_family(spec: list[dict]) -> tuple[str | None, bool | None]:
    """(mixing augmentation name, label_mixing) of a variant's augmentation list; (None, None)
    if it uses no mixed-sample augmentation."""
    for a in reversed(spec):
        if a["name"] in MIXING:
            default = AUGMENTATIONS.describe(a["name"])["params"].get("label_mixing")
            return a["name"], bool(a.get("label_mixing", default))
    return None, None


def _read_cell(path: Path, variant: str, seed: int, what: str, command: str) -> pd.DataFrame:
    """One per-cell result file with ``variant``/``seed`` columns in front; a clear error naming
    the command that writes it when it is missing."""
    if not path.is_file():
        raise AuglensError(f"missing {what} {path}; run `{command}`")
    df = pd.read_parquet(path)
    df.insert(0, "variant", variant)
    df.insert(1, "seed", seed)
    return df


def _evaluation_frames(exp: ExperimentConfig, run_dir: Path, method: str) -> pd.DataFrame:
    frames = [_read_cell(evaluation_path(run_dir, method, v, s), v, s, "evaluation",
                         f"auglens evaluate {run_dir}") for v, s, _ in exp.cells()]
    out = pd.concat(frames, ignore_index=True)
    out.insert(2, "method", method)
    return out[["image_id", "variant", "seed", "method", "metric", "value"]]


def select_alignment_images(ev: pd.DataFrame, exp: ExperimentConfig) -> tuple[pd.DataFrame,
                                                                                pd.DataFrame]:
    """Apply the alignment filters per model and (by default) intersect them across models.

    ``ev``: one method's per-image rows. Returns (alignment rows kept, counts with columns
    ``variant, seed, method, n_images, n_kept, n_used``)."""
    ec = exp.evaluate
    wide = ev[ev.metric.isin(FILTER_INPUTS)].pivot_table(
        index=["variant", "seed", "image_id"], columns="metric", values="value")
    keep: dict[tuple[str, int], pd.Series] = {}
    for (variant, seed), g in wide.groupby(level=[0, 1], sort=False):
        g = g.droplevel([0, 1])
        mask = filter_images(g["box_fraction"].to_numpy(copy=True),
                             g["target_prob"].to_numpy(copy=True),
                             ec.max_box_fraction, ec.min_probability)
        keep[(variant, seed)] = pd.Series(mask.numpy(), index=g.index)
    common = None
    if ec.common_images and keep:
        common = pd.concat(keep.values(), axis=1).fillna(False).all(axis=1)
    kept_rows, counts = [], []
    method = ev["method"].iloc[0]
    align = ev[ev.metric.isin(ALIGNMENT_METRICS)]
    for (variant, seed), k in keep.items():
        use = common if common is not None else k
        ids = set(use.index[use.to_numpy(bool)])
        rows = align[(align.variant == variant) & (align.seed == seed)]
        kept_rows.append(rows[rows.image_id.isin(ids)])
        counts.append({"variant": variant, "seed": seed, "method": method,
                       "n_images": int(len(k)), "n_kept": int(k.sum()), "n_used": len(ids)})
    return (pd.concat(kept_rows, ignore_index=True) if kept_rows else align.iloc[:0],
            pd.DataFrame(counts))


def summarize_b(per_image: pd.DataFrame, exp: ExperimentConfig, n_boot: int = 2000) -> pd.DataFrame:
    """Seed-average per image, then per (method, variant, metric): mean, bootstrap 95 % CI,
    n_images, n_nan, and the variant's ``family`` / ``label_mixing``."""
    avg = per_image.groupby(["method", "variant", "metric", "image_id"], sort=False)["value"].mean()
    rows = []
    for (method, variant, metric), g in avg.groupby(level=[0, 1, 2], sort=False):
        v = g.to_numpy(np.float64)
        lo, hi = bootstrap_ci(v, n_boot=n_boot)
        family, mixing = variant_family(exp.variants[variant])
        rows.append({"method": method, "variant": variant, "metric": metric,
                     "mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                     "ci_low": lo, "ci_high": hi, "n_images": int(v.size),
                     "n_nan": int(np.isnan(v).sum()),
                     "family": family or variant, "label_mixing": mixing})
    out = pd.DataFrame(rows)
    out["label_mixing"] = out["label_mixing"].astype("boolean")
    return out


def analyse_evaluation(exp: ExperimentConfig, run_dir: str | Path,
                       methods: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Study B's alignment and faithfulness tables and plots from the per-cell evaluations."""
    run_dir = Path(run_dir)
    methods = methods or tuple(exp.explain.methods)
    tables, figs = run_dir / "tables", run_dir / "plots"
    per_image, counts, curves, notes = [], [], [], {}
    for method in methods:
        ev = _evaluation_frames(exp, run_dir, method)
        first = evaluation_path(run_dir, method, *exp.cells()[0][:2])
        notes[method] = json.loads(read_metadata(first).get("notes", "{}"))
        if ev.metric.isin(FILTER_INPUTS).any():
            kept, cnt = select_alignment_images(ev, exp)
            per_image.append(kept)
            counts.append(cnt)
        per_image.append(ev[~ev.metric.isin(FILTER_INPUTS + ALIGNMENT_METRICS)])
        for variant, seed, _ in exp.cells():
            cp = curves_path(run_dir, method, variant, seed)
            if cp.is_file():
                c = pd.read_parquet(cp)
                c.insert(0, "variant", variant)
                c.insert(1, "seed", seed)
                c.insert(2, "method", method)
                curves.append(c)
    cols = ["image_id", "variant", "seed", "method", "metric", "value"]
    interp = pd.concat(per_image, ignore_index=True)[cols]
    out: dict[str, Path] = {}
    write_json(tables / "conventions_b.json", CONVENTIONS | {"evaluate": exp.evaluate.model_dump(),
                                                              "notes": notes})
    out["interpretability"] = write_table(interp, tables / "interpretability.parquet")
    count_df = (pd.concat(counts, ignore_index=True) if counts else
                pd.DataFrame(columns=["variant", "seed", "method", "n_images", "n_kept",
                                      "n_used"]))
    out["alignment_counts"] = write_table(count_df, tables / "alignment_counts.parquet")
    summary = summarize_b(interp, exp, exp.evaluate.bootstrap)
    out["summary_b"] = write_table(summary, tables / "summary_b.parquet")
    curve_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    out["curves"] = write_table(curve_df, tables / "curves.parquet")

    if summary.metric.isin(ALIGNMENT_METRICS).any():
        out["plot_alignment"] = plots_b.alignment(summary, figs / "alignment.png")
    if not curve_df.empty:
        out["plot_curves"] = plots_b.deletion_insertion(curve_df, figs /
                                                        "deletion_insertion_curves.png")
        out["plot_scores"] = plots_b.faithfulness_scores(summary, figs /
                                                         "faithfulness_scores.png")
    if summary.label_mixing.notna().any():
        out["plot_label_mixing"] = plots_b.label_mixing(summary, figs / "label_mixing.png")
    return out


def analyse_dissection(exp: ExperimentConfig, run_dir: str | Path) -> dict[str, Path]:
    """``tables/dissection.parquet`` (one row per unit and cell), its per-category summary, and
    the detectors plot."""
    run_dir = Path(run_dir)
    frames, summary = [], []
    for variant, seed, _ in exp.cells():
        path = dissection_path(run_dir, variant, seed)
        t = _read_cell(path, variant, seed, "dissection", f"auglens dissect {run_dir}")
        frames.append(t)
        s = json.loads(read_metadata(path)["summary"])
        det = t[t.detector]
        for cat, n_unique in s["unique_per_category"].items():
            summary.append({"variant": variant, "seed": seed, "layer": s["layer"],
                            "category": cat, "n_detectors": int((det.category == cat).sum()),
                            "unique_concepts": int(n_unique), "units": s["units"]})
    cols = ["variant", "seed", "layer", "unit", "concept", "category", "iou", "detector",
            "threshold"]
    diss = pd.concat(frames, ignore_index=True)[cols]
    ds = pd.DataFrame(summary)
    out = {
        "dissection": write_table(diss, run_dir / "tables" / "dissection.parquet"),
        "dissection_summary": write_table(ds, run_dir / "tables" / "dissection_summary.parquet"),
    }
    out["plot_dissection"] = plots_b.dissection_detectors(ds, run_dir / "plots" /
                                                          "dissection_detectors.png")
    return out
