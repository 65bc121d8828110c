"""Study B section: human alignment, deletion/insertion faithfulness, robustness-corrected
scores, label-mixing pairs and Network Dissection detectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from . import figures
from .gallery import METHOD_NAMES
from .html import Cell, Section, ci_cell, fmt, path_png
from .load import Run
from .section_a import verdict_table

ALIGNMENT = ["energy_pointing_game", "effective_heat_ratio"]
AUCS = ["auc_deletion_morf", "auc_deletion_lerf", "auc_deletion_random",
        "auc_insertion_morf", "auc_insertion_lerf", "auc_insertion_random", "road_auc_morf",
        "road_auc_lerf"]
SCORES = ["delta_del", "delta_ins", "lerf_morf_del", "lerf_morf_ins", "road_lerf_morf"]
MIXING_METRICS = ALIGNMENT + SCORES
#: the random-map control's pseudo-method (chance level, `auglens.analysis.controls`)
RANDOM = "random"
TABLES = ("summary_b", "alignment_counts", "curves", "dissection_summary", "dissection")
PLOTS = ("alignment", "deletion_insertion_curves", "faithfulness_scores", "label_mixing",
         "dissection_detectors")


def _wide(summary: pd.DataFrame, metrics: list[str], order: list[str]) -> pd.DataFrame:
    """(method, variant) rows × metric columns of ``mean [CI]``."""
    sub = summary[summary.metric.isin(metrics)]
    cols = [m for m in metrics if (sub.metric == m).any()]
    rank = {v: i for i, v in enumerate(order)}
    rows = []
    for (method, variant), g in sub.groupby(["method", "variant"], sort=False):
        g = g.set_index("metric")
        row: dict[str, object] = {"method": method, "variant": variant}
        for m in cols:
            row[m] = None
            if m in g.index:
                cell = ci_cell(g.loc[m, "mean"], g.loc[m, "ci_low"], g.loc[m, "ci_high"])
                verdict = g.loc[m].get("verdict")
                if isinstance(verdict, str):
                    cell = Cell(f"{cell.text} {verdict}", cell.value)
                row[m] = cell
        row["n_images"] = int(g.n_images.max())
        row["NaN values"] = int(g.n_nan.sum())
        rows.append(row)
    rows.sort(key=lambda r: (str(r["method"]) == RANDOM, str(r["method"]) != "gradcam",
                             str(r["method"]),
                             rank.get(r["variant"], len(rank))))
    return pd.DataFrame(rows)


def _plot(sec: Section, run: Run, name: str, caption: str,
          fallback: Callable[[], bytes] | None) -> None:
    rel = run.p(name)
    png = path_png(run.path(rel))
    if png is not None:
        sec.figure(png, caption, rel)
    elif fallback is not None:
        sec.figure(fallback(), caption, f"drawn by the report: {rel} is missing")
    else:
        sec.miss(run.reason(rel))


def _best(summary: pd.DataFrame, metric: str, method: str, higher: bool) -> str:
    m = summary[(summary.metric == metric) & (summary.method == method)].dropna(subset=["mean"])
    if m.empty:
        return ""
    r = m.loc[m["mean"].idxmax() if higher else m["mean"].idxmin()]
    return f"{r.variant} ({ci_cell(r['mean'], r.ci_low, r.ci_high).text})"


def _vs_baseline(summary: pd.DataFrame, metric: str, method: str, base: str) -> str:
    m = summary[(summary.metric == metric) & (summary.method == method)].dropna(subset=["mean"])
    b = m[m.variant == base]
    if m.empty or b.empty:
        return ""
    top, b = m.loc[m["mean"].idxmax()], b.iloc[0]
    if top.variant == base:
        return " (the baseline itself)"
    text = f"; the baseline has {fmt(b['mean'])}"
    if isinstance(top.get("verdict"), str):
        return text + (f"; the seed-level 95 % CI of the difference is [{fmt(top.diff_low)}, "
                       f"{fmt(top.diff_high)}] (verdict: {top.verdict})")
    if top.ci_low > b.ci_high:
        return text + ", and the two 95 % CIs do not overlap"
    return text + ", but the 95 % CIs overlap, so this is not a clear difference"


def _chance(summary: pd.DataFrame, metric: str) -> str:
    """" Random maps … score …" (the random-map control's value), or ""."""
    r = summary[(summary.method == RANDOM) & (summary.metric == metric)].dropna(subset=["mean"])
    if r.empty:
        return ""
    r = r.iloc[0]
    return (f" Chance level: random maps score {ci_cell(r['mean'], r.ci_low, r.ci_high).text} "
            "on the same images (rows 'random').")


def study_b_section(run: Run) -> Section:
    """All Study B parts; each says which table is missing when it cannot be shown."""
    sec = Section("study-b", "Study B: interpretability of each model")
    present = [rel for rel in [run.t(n) for n in TABLES] + [run.p(n) for n in PLOTS]
               if run.path(rel).is_file()]
    if not present:
        sec.miss(run.reason(run.t("summary_b")) + " (alignment and faithfulness)")
        sec.miss(run.reason(run.t("dissection_summary")) + " (Network Dissection)")
        sec.reading = ("Study B (alignment with the object, deletion/insertion faithfulness, "
                       "label-mixing pairs, Network Dissection) has not been run for this run "
                       "directory, so there is nothing to show yet.")
        return sec
    full = run.table(run.t("summary_b"))
    summary = full
    if full is not None and "reference" in full:
        summary = full[full.reference == "final"]
    order = run.variants
    method = "gradcam"
    if summary is not None and len(summary) and not (summary.method == method).any():
        method = str(summary.method.iloc[0])
    mname, base = METHOD_NAMES.get(method, method), run.baseline
    readings = []

    sec.sub("Alignment with the object")
    no_alignment = summary is not None and not summary.metric.isin(ALIGNMENT).any()
    if summary is None:
        sec.miss(run.reason(run.t("summary_b")))
    elif no_alignment:
        notes = (run.json(run.t("conventions_b", ext="json")) or {}).get("notes") or {}
        why = next((n.get("alignment") for n in notes.values()
                    if str(n.get("alignment", "")).startswith("skipped")), None)
        sec.miss("alignment was not computed: " + (
            why.removeprefix("skipped: ") if why else "no alignment metrics in "
            f"{run.t('summary_b')} (evaluate.alignment is false, or the dataset has no "
            "object masks or boxes)"))
    else:
        sec.table(_wide(summary, ALIGNMENT, order), "Energy Pointing Game (share of map energy "
                  "inside the object box) and Effective Heat Ratio, mean over images (averaged "
                  "over seeds) with bootstrap 95 % CI", table_id="alignment-table")
        best = _best(summary, "energy_pointing_game", method, True)
        if best:
            readings.append(f"With {mname}, {best} puts the largest share of its map on the "
                            "object (Energy Pointing Game)"
                            + _vs_baseline(summary, "energy_pointing_game", method, base) + "."
                            + _chance(summary, "energy_pointing_game"))
    counts = None if no_alignment else run.table(run.t("alignment_counts"))
    if counts is None and not no_alignment:
        sec.miss(run.reason(run.t("alignment_counts")))
    elif counts is not None:
        c = counts.copy()
        c["% kept"] = 100.0 * c.n_kept / c.n_images.where(c.n_images > 0)
        filters = _filters(run.json(run.t("conventions_b", ext="json")))
        sec.table(c, "Images kept per model by the alignment filters (" + filters + "); n_used "
                  "= the images every model is scored on", collapsed=True)
    if not no_alignment:
        _plot(sec, run, "alignment", "Alignment scores per variant with 95 % CI",
              None if summary is None else
              lambda: figures.ci_bars(summary, ALIGNMENT, "Alignment (mean, 95 % CI)", order))

    sec.sub("Deletion and insertion curves")
    curves = run.table(run.t("curves"))
    if curves is None:
        sec.miss(run.reason(run.t("curves")))
    _plot(sec, run, "deletion_insertion_curves", "Target-class probability as pixels are "
          "deleted (or inserted) in order of relevance (MoRF), irrelevance (LeRF) or at random",
          None if curves is None or curves.empty else lambda: figures.curves(curves))
    if summary is not None:
        sec.table(_wide(summary, AUCS, order), "Areas under the curves (deletion: lower MoRF = "
                  "more faithful; insertion: higher MoRF = more faithful)", collapsed=True)

    sec.sub("Robustness-corrected faithfulness")
    if summary is None:
        sec.miss(run.reason(run.t("summary_b")))
    else:
        sec.table(_wide(summary, SCORES, order), "delta_del = AUC_del(random) − AUC_del(MoRF), "
                  "delta_ins = AUC_ins(MoRF) − AUC_ins(random), lerf_morf_* = the same against "
                  "LeRF; higher = the map's ordering matters more than the model's tolerance "
                  "of occlusion", table_id="faithfulness-table")
        best = _best(summary, "delta_del", method, True)
        if best:
            readings.append(f"The most faithful {mname} maps by the robustness-corrected "
                            f"deletion score are those of {best}"
                            + _vs_baseline(summary, "delta_del", method, base) + "."
                            + _chance(summary, "delta_del"))
    _plot(sec, run, "faithfulness_scores", "Robustness-corrected scores with 95 % CI",
          None if summary is None else
          lambda: figures.ci_bars(summary, SCORES, "Robustness-corrected scores (95 % CI)",
                                          order))

    if full is not None and "verdict" in full:
        sec.sub("Verdicts against the baseline (final and accuracy-matched)")
        for meth in [m for m in dict.fromkeys(full.method) if m != RANDOM]:
            f = full[full.method == meth]
            sec.table(verdict_table(f, [v for v in order if v != base],
                                    [m for m in ALIGNMENT + SCORES if (f.metric == m).any()]),
                      f"{METHOD_NAMES.get(meth, meth)}: each variant minus the baseline of the "
                      "same seed (final weights, and the checkpoint whose validation accuracy "
                      "is closest to the variant's), 95 % CI over training runs and images; "
                      "higher / lower / same (inside the equivalence margin) / undecided",
                      table_id=f"verdicts-b-{meth}")
        _plot(sec, run, "accuracy_b", "Each model's mean score against its validation accuracy "
              "(hollow: baseline checkpoints); ρ = Spearman over models", None)
        acc = run.table(run.t("accuracy_correlation_b"))
        if acc is not None and len(acc):
            sec.table(acc, "Spearman's ρ between each model's mean score and its validation "
                      "accuracy (cells; all = cells + baseline checkpoints)", collapsed=True)

    sec.sub("Label-mixing pairs")
    lm = run.table(run.t("label_mixing"))
    if lm is not None and len(lm):
        t = lm[lm.metric.isin(MIXING_METRICS)].copy()
        t["with − without [95 % CI]"] = [
            Cell(f"{fmt(r['diff'])} [{fmt(r.diff_low)}, {fmt(r.diff_high)}] {r.verdict}",
                 float(r["diff"])) for _, r in t.iterrows()]
        sec.table(t[["label", "a", "b", "method", "metric", "mean_a", "mean_b",
                     "with − without [95 % CI]", "n_seeds"]].rename(
                         columns={"label": "family", "a": "with mixing", "b": "without"}),
                  "Each family with label mixing minus without, same seeds and images; 95 % CI "
                  "over training runs and images", table_id="mixing-table")
        r = t[t.metric == "delta_ins"].head(1)
        if len(r):
            r = r.iloc[0]
            readings.append(f"Label mixing changes {r.label}'s ΔIns by {fmt(r['diff'])} "
                            f"[{fmt(r.diff_low)}, {fmt(r.diff_high)}] ({r.verdict}; "
                            f"{METHOD_NAMES.get(r.method, r.method)}).")
        _plot(sec, run, "label_mixing", "Label-mixing pairs", None)
    elif summary is not None and summary.label_mixing.notna().any():
        sec.miss(run.reason(run.t("label_mixing")))
    else:
        sec.miss("no mixed-sample family with both a label-mixing and a non-mixing variant")

    sec.sub("Network Dissection: concept detectors")
    ds = run.table(run.t("dissection_summary"))
    if ds is None:
        sec.miss(run.reason(run.t("dissection_summary")))
    else:
        table = _detector_table(ds, order)
        sec.table(table, "Units that detect a concept (IoU above threshold), per concept "
                  "category: mean over seeds (and sd)", table_id="dissection-table")
        tot = ds.groupby(["variant", "seed"]).n_detectors.sum().groupby("variant").mean()
        if len(tot):
            top = tot.idxmax()
            readings.append(f"{top} has the most concept detectors ({tot[top]:.1f} per model"
                            + (f" vs {tot[base]:.1f} for the baseline" if base in tot.index
                               and top != base else "") + ").")
    _plot(sec, run, "dissection_detectors", "Detectors per concept category",
          None if ds is None or ds.empty else lambda: figures.detectors(ds, order))
    det = run.table(run.t("dissection"))
    if det is None:
        sec.miss(run.reason(run.t("dissection")))
    else:
        top = det[det.detector.astype(bool)].sort_values("iou", ascending=False).head(15)
        sec.table(top.reset_index(drop=True), "The 15 strongest detectors (highest IoU)",
                  collapsed=True)
    sec.reading = ("Study B scores each model's own explanations: does the map sit on the "
                   "object, does deleting what it marks hurt the prediction more than "
                   "deleting at random, and which units detect human concepts. "
                   + " ".join(readings))
    return sec


def _detector_table(ds: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    rank = {v: i for i, v in enumerate(order)}
    rows = []
    for (variant, layer), g in ds.groupby(["variant", "layer"], sort=False):
        row: dict[str, object] = {"variant": variant, "layer": layer}
        per_seed = g.pivot_table(index="seed", columns="category", values="n_detectors",
                                 aggfunc="sum")
        for cat in per_seed.columns:
            row[cat] = float(per_seed[cat].mean())
        total = per_seed.sum(axis=1)
        row["total"] = float(total.mean())
        row["total sd"] = float(total.std()) if len(total) > 1 else float("nan")
        row["unique concepts"] = float(g.groupby("seed").unique_concepts.sum().mean())
        rows.append(row)
    rows.sort(key=lambda r: (rank.get(r["variant"], len(rank)), str(r["layer"])))
    out = pd.DataFrame(rows)
    return out.fillna({c: 0.0 for c in out.columns if c not in
                       ("variant", "layer", "total sd")}) if len(out) else out



def _filters(conventions: Any) -> str:
    """The alignment filters a run used, in words (from tables/conventions_b.json)."""
    ev = (conventions or {}).get("evaluate") or {}
    parts = []
    if ev.get("max_box_fraction") is not None:
        parts.append(f"object box ≤ {100 * ev['max_box_fraction']:g} % of the image")
    if ev.get("min_probability") is not None:
        parts.append(f"target probability ≥ {ev['min_probability']:g}")
    if not conventions:
        return "settings unknown: tables/conventions_b.json is missing"
    return ", ".join(parts) if parts else "none set: every image with an object region is kept"
