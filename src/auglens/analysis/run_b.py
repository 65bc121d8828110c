"""Study B end to end on a run directory: gathers the per-cell evaluation and dissection files
(:mod:`auglens.metrics.store`) into tidy tables, summarises them with bootstrap CIs, and plots.

Writes ``tables/{interpretability, alignment_counts, summary_b, curves}.parquet`` (all methods,
column ``method``), ``tables/{dissection, dissection_summary}.parquet`` and
``plots/{alignment, deletion_insertion_curves, faithfulness_scores, label_mixing,
dissection_detectors}.png``. Columns: docs/outputs.md.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..augment import AUGMENTATIONS
from ..augment.labels import LABEL_ONLY
from ..config import ExperimentConfig
from ..errors import AuglensError
from ..metrics.alignment import filter_images
from ..metrics.store import read_metadata
from ..rundir import RunDir, write_table
from ..stats import draw, grand_mean, resampled_means
from ..utils import write_json
from . import plots, plots_b
from .controls import RANDOM_METHOD
from .inference import Settings, decide, difference, interval, memo, row_means, seed_spread
from .run_a import mark_cells
from .study_a import _matrix, _row

#: Study B metrics plotted against accuracy
ACCURACY_METRICS_B = ("energy_pointing_game", "effective_heat_ratio", "delta_del", "delta_ins")
#: augmentations whose variants form Study B's label-mixing pairs
MIXING = ("cutout", "mixup", "cutmix", "saliencymix", "resizemix", "fmix")
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
    "ci": "two-way (seed x image) bootstrap over models and images, t interval with "
          "Satterthwaite df (as summary_a, docs/statistics.md); diff = variant - baseline "
          "(final, or the accuracy-matched checkpoint of the same seed) from the same resamples",
    "verdict": "higher / lower (CI of diff above / below 0), same (CI inside +-margin x "
               "|baseline|), undecided; provisional with fewer than 3 seeds",
    "random": "method 'random' (baseline cells only): i.i.d. U(0,1) maps at feature resolution "
              "seeded per image id, scored like a method on the same images: the chance level "
              "(SPEC 11); not in the plots, label-mixing or accuracy tables",
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
    df = df.drop(columns=[c for c in ("method", "variant", "seed", "epoch") if c in df])
    df.insert(0, "variant", variant)
    df.insert(1, "seed", seed)
    return df


def _evaluation_frames(exp: ExperimentConfig, run: RunDir, method: str,
                       cells: list[tuple[str, int]] | None = None) -> pd.DataFrame:
    cells = cells if cells is not None else [(v, s) for v, s, _ in exp.cells()]
    frames = [_read_cell(run.evaluation(method, v, s), v, s, "evaluation",
                         f"auglens evaluate {run.root}") for v, s in cells]
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


def summarize_b(per_image: pd.DataFrame, exp: ExperimentConfig,
                settings: Settings | None = None,
                matched: pd.DataFrame | None = None) -> pd.DataFrame:
    """Seed-level summary of Study B (SPEC §9), one row per (method, variant, reference, metric).

    ``per_image``: ``image_id, variant, seed, method, metric, value`` of the final models;
    ``matched``: the same columns for the accuracy-matched baseline checkpoints, where
    ``variant`` names the variant each was matched to. Returns ``method, variant, reference
    (final|matched), metric, mean, ci_low, ci_high, se, df, pct_low, pct_high, n_seeds, n_images,
    n_nan, diff, diff_low, diff_high, margin, verdict, provisional, seeds_needed, family,
    label_mixing``. ``diff`` = variant − baseline (final, or the matched checkpoint of the same
    seed), from the same two-way resamples; ``verdict`` ``higher`` / ``lower`` (CI above / below
    0), ``same`` (CI inside ±margin·|baseline|), ``undecided``; the baseline's own row has no
    difference."""
    settings = settings or Settings()
    seeds = sorted(int(s) for s in per_image.seed.unique())
    rows_idx = [(i,) for i in range(len(seeds))]
    names = {"beyond": "higher", "closer": "lower", "within": "same", "undecided": "undecided"}
    rows = []
    for (method, metric), g in per_image.groupby(["method", "metric"], sort=False):
        images = np.sort(g.image_id.unique())
        res = draw(len(seeds), len(images), settings.n_boot, settings.seed)
        base_v = _matrix(g[g.variant == exp.baseline], ["seed"], seeds, images)
        base_stat = memo(functools.partial(resampled_means, base_v, rows_idx))
        base = interval(base_stat, grand_mean(base_v), res, settings.level)
        mg = None if matched is None else matched[(matched.method == method)
                                                  & (matched.metric == metric)]
        for variant, h in g.groupby("variant", sort=False):
            v = _matrix(h, ["seed"], seeds, images)
            stat = memo(functools.partial(resampled_means, v, rows_idx))
            est = base if variant == exp.baseline else interval(stat, grand_mean(v), res,
                                                                settings.level)
            family, mixing = variant_family(exp.variants[variant])
            extra = {"family": family or variant, "label_mixing": mixing}
            refs = [("final", base_v, base_stat, base)]
            if mg is not None and variant != exp.baseline:
                mv = _matrix(mg[mg.variant == variant], ["seed"], seeds, images)
                m_stat = memo(functools.partial(resampled_means, mv, rows_idx))
                refs.append(("matched", mv, m_stat,
                             interval(m_stat, grand_mean(mv), res, settings.level)))
            for reference, ref_v, ref_stat, ref in refs:
                row = _row(variant, reference, "", metric, est, v, _n_seeds(v))
                row.pop("target")
                row = {"method": method} | row | extra
                if variant != exp.baseline:
                    d = interval(difference(stat, ref_stat), est["estimate"] - ref["estimate"],
                                 res, settings.level)
                    spread = seed_spread(row_means(v) - row_means(ref_v))
                    dec = decide(d, ref["estimate"], settings, spread, row["n_seeds"])
                    dec["verdict"] = names[dec["verdict"]]
                    row |= {"diff": d["estimate"], "diff_low": d["low"],
                            "diff_high": d["high"]} | dec
                rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out["label_mixing"] = out["label_mixing"].astype("boolean")
    return out


def pair_differences(per_image: pd.DataFrame, pairs: list[tuple[str, str, str]],
                     settings: Settings | None = None) -> pd.DataFrame:
    """Seed-level difference ``a − b`` between two variants of the same seeds, per method and
    metric, for each ``(label, a, b)`` in ``pairs`` (e.g. CutMix with vs without label mixing):
    ``label, a, b, method, metric, mean_a, mean_b, diff, diff_low, diff_high, verdict`` (CI over
    training runs and images, two-way resamples shared by a and b; verdict as `summarize_b` with
    the margin relative to b)."""
    settings = settings or Settings()
    seeds = sorted(int(s) for s in per_image.seed.unique())
    rows_idx = [(i,) for i in range(len(seeds))]
    names = {"beyond": "higher", "closer": "lower", "within": "same", "undecided": "undecided"}
    out = []
    for (method, metric), g in per_image.groupby(["method", "metric"], sort=False):
        images = np.sort(g.image_id.unique())
        res = draw(len(seeds), len(images), settings.n_boot, settings.seed)
        for label, a, b in pairs:
            va = _matrix(g[g.variant == a], ["seed"], seeds, images)
            vb = _matrix(g[g.variant == b], ["seed"], seeds, images)
            if not (np.isfinite(va).any() and np.isfinite(vb).any()):
                continue
            sa = memo(functools.partial(resampled_means, va, rows_idx))
            sb = memo(functools.partial(resampled_means, vb, rows_idx))
            ma, mb = grand_mean(va), grand_mean(vb)
            d = interval(difference(sa, sb), ma - mb, res, settings.level)
            n_seeds = min(_n_seeds(va), _n_seeds(vb))
            dec = decide(d, mb, settings, seed_spread(row_means(va) - row_means(vb)), n_seeds)
            out.append({"label": label, "a": a, "b": b, "method": method, "metric": metric,
                        "mean_a": ma, "mean_b": mb, "diff": d["estimate"], "diff_low": d["low"],
                        "diff_high": d["high"], "n_seeds": n_seeds,
                        "verdict": names[str(dec["verdict"])],
                        "provisional": dec["provisional"]})
    return pd.DataFrame(out)


def label_mixing_pairs(exp: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(family, variant with label mixing, variant without) for every family that has both; a
    variant that also smooths its labels is neither (the label-mixing study compares it)."""
    fams: dict[str, dict[bool, list[str]]] = {}
    for v, spec in exp.variants.items():
        family, mixing = variant_family(spec)
        if family is not None and not any(a["name"] in LABEL_ONLY for a in spec):
            fams.setdefault(family, {True: [], False: []})[bool(mixing)].append(v)
    return [(f, a, b) for f, d in fams.items() for a in d[True] for b in d[False]]


def _n_seeds(v: np.ndarray) -> int:
    return int(np.isfinite(v).any(1).sum())


def analyse_evaluation(exp: ExperimentConfig, run_dir: str | Path,
                       methods: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Study B's alignment and faithfulness tables and plots from the per-cell evaluations."""
    run = RunDir(run_dir)
    methods = methods or tuple(exp.explain.methods)
    tables, figs = run.tables(), run.plots()
    per_image, counts, curves, notes, matched = [], [], [], {}, []
    matching = tables / "matching.parquet"
    matching = pd.read_parquet(matching) if exp.analysis.matched and matching.is_file() else None
    controls = [(v, s) for v, s, _ in exp.cells() if v == exp.baseline]
    first_kept: dict[int, set] | None = None
    for method in (*methods, RANDOM_METHOD):
        control = method == RANDOM_METHOD
        cells = controls if control else [(v, s) for v, s, _ in exp.cells()]
        if control and not (cells and all(run.evaluation(method, v, s).is_file()
                                          for v, s in cells)):
            continue  # runs made before the control existed
        ev = _evaluation_frames(exp, run, method, cells)
        notes[method] = json.loads(read_metadata(run.evaluation(method, *cells[0]))
                                   .get("notes", "{}"))
        kept_ids = None
        if ev.metric.isin(FILTER_INPUTS).any():
            if control:  # chance level on exactly the images the models are scored on
                align = ev[ev.metric.isin(ALIGNMENT_METRICS)]
                per_image.append(align[[i in (first_kept or {}).get(int(s), set()) for i, s in
                                        zip(align.image_id, align.seed, strict=True)]])
            else:
                kept, cnt = select_alignment_images(ev, exp)
                per_image.append(kept)
                counts.append(cnt)
                kept_ids = {s: set(g.image_id) for s, g in kept[kept.variant == exp.baseline]
                            .groupby("seed")}
                first_kept = kept_ids if first_kept is None else first_kept
        per_image.append(ev[~ev.metric.isin(FILTER_INPUTS + ALIGNMENT_METRICS)])
        if matching is not None and not control:
            matched.append(_matched_frames(exp, run, method, matching, kept_ids))
        for variant, seed in cells:
            cp = run.curves(method, variant, seed)
            if cp.is_file():
                c = pd.read_parquet(cp)
                c = c.drop(columns=[k for k in ("method", "variant", "seed", "epoch") if k in c])
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
    matched_df = pd.concat(matched, ignore_index=True) if matched else None
    if matched_df is not None:
        out["interpretability_matched"] = write_table(
            matched_df, tables / "interpretability_matched.parquet")
    a = exp.analysis
    summary = summarize_b(interp, exp, Settings(a.n_boot, a.level, a.margin, a.seed, a.power),
                          matched_df)
    summary = mark_cells(summary, exp, run)
    out["summary_b"] = write_table(summary, tables / "summary_b.parquet")
    settings = Settings(a.n_boot, a.level, a.margin, a.seed, a.power)
    models = interp[interp.method != RANDOM_METHOD]
    pairs = label_mixing_pairs(exp)
    if pairs:
        out["label_mixing"] = write_table(pair_differences(models, pairs, settings),
                                          tables / "label_mixing.parquet")
    from .accuracy import correlations as acc_correlations
    from .accuracy import points_b

    points = points_b(exp, run, models, matched_df)
    acc_corr = acc_correlations(points)
    out["accuracy_points_b"] = write_table(points, tables / "accuracy_points_b.parquet")
    out["accuracy_correlation_b"] = write_table(acc_corr,
                                                tables / "accuracy_correlation_b.parquet")
    first_method = points[points.method == methods[0]]
    out["plot_accuracy"] = plots.metric_vs_accuracy(
        first_method[first_method.metric.isin(ACCURACY_METRICS_B)],
        acc_corr[acc_corr.method == methods[0]], figs / "accuracy_b.png")
    summary = summary[(summary.reference == "final") & (summary.method != RANDOM_METHOD)]
    curve_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    out["curves"] = write_table(curve_df, tables / "curves.parquet")

    if summary.metric.isin(ALIGNMENT_METRICS).any():
        out["plot_alignment"] = plots_b.alignment(summary, figs / "alignment.png")
    if not curve_df.empty:
        out["plot_curves"] = plots_b.deletion_insertion(
            curve_df[curve_df.method != RANDOM_METHOD], figs / "deletion_insertion_curves.png")
        out["plot_scores"] = plots_b.faithfulness_scores(summary, figs /
                                                         "faithfulness_scores.png")
    if summary.label_mixing.notna().any():
        out["plot_label_mixing"] = plots_b.label_mixing(summary, figs / "label_mixing.png")
    return out


def _matched_frames(exp: ExperimentConfig, run: RunDir, method: str, matching: pd.DataFrame,
                    kept_ids: dict[int, set] | None) -> pd.DataFrame:
    """Per-image rows of the accuracy-matched baseline checkpoints, ``variant`` = the variant each
    is matched to (plus ``baseline_epoch``); alignment rows restricted to the images the
    baseline of the same seed is scored on."""
    frames = []
    for r in matching.itertuples():
        seed = int(r.seed)
        epoch = None if r.same_as_final else int(r.baseline_epoch)
        path = run.evaluation(method, exp.baseline, seed, epoch)
        df = _read_cell(path, str(r.variant), seed, "evaluation", f"auglens run {run.root}")
        df = df[~df.metric.isin(FILTER_INPUTS)]
        if kept_ids is not None:
            align = df.metric.isin(ALIGNMENT_METRICS)
            df = df[~align | df.image_id.isin(kept_ids.get(seed, set()))]
        df.insert(2, "method", method)
        df["baseline_epoch"] = int(r.baseline_epoch)
        frames.append(df)
    cols = ["image_id", "variant", "seed", "method", "metric", "value", "baseline_epoch"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def analyse_dissection(exp: ExperimentConfig, run_dir: str | Path) -> dict[str, Path]:
    """``tables/dissection.parquet`` (one row per unit and cell), its per-category summary, and
    the detectors plot."""
    run = RunDir(run_dir)
    frames, summary = [], []
    for variant, seed, _ in exp.cells():
        path = run.dissection(variant, seed)
        t = _read_cell(path, variant, seed, "dissection", f"auglens dissect {run.root}")
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
        "dissection": write_table(diss, run.table("dissection")),
        "dissection_summary": write_table(ds, run.table("dissection_summary")),
    }
    out["plot_dissection"] = plots_b.dissection_detectors(ds, run.plots() /
                                                          "dissection_detectors.png")
    return out
