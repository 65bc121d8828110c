"""Study A sections: explanations of each augmentation vs the baseline, against the seed noise
floor; and "what changed most" (variants and images beyond the noise floor)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .gallery import METHOD_NAMES
from .html import Cell, Section, ci_cell, fmt, path_png
from .load import Run

NOISE_FLOOR = "noise_floor"
#: the random-map control's pseudo-variant (chance level, `auglens.analysis.controls`)
RANDOM_MAP = "random_map"
CONTROLS = (NOISE_FLOOR, RANDOM_MAP)
_DISTANCES = ("mad", "msd", "com_shift", "class_kld", "emd")
_MAIN = ("spearman", "pearson", "overlap@10", "iou@10", "ssim")


def higher_is_similar(metric: str) -> bool | None:
    """True when a larger value means more similar maps, False for distances, None if unknown."""
    if metric in _DISTANCES:
        return False
    if metric in ("pearson", "spearman", "ssim") or metric.split("@")[0] in ("overlap", "iou"):
        return True
    return None


def main_metric(metrics: list[str]) -> str | None:
    """The metric the readings quote: Spearman if present, else the first known similarity."""
    for m in _MAIN:
        if m in metrics:
            return m
    return next((m for m in metrics if higher_is_similar(m) is not None), None)


def _name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _wide_ci(summary: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """variant rows (noise floor last) × metric columns of ``mean [ci_low, ci_high]``."""
    metrics = list(dict.fromkeys(summary.metric))
    rows = []
    for v in order:
        g = summary[summary.variant == v].set_index("metric")
        if g.empty:
            continue
        row: dict[str, object] = {"variant": v}
        for m in metrics:
            if m in g.index:
                r = g.loc[m]
                cell = ci_cell(r["mean"], r.ci_low, r.ci_high)
                verdict = r.get("verdict")
                if isinstance(verdict, str):
                    cell = Cell(f"{cell.text} {verdict}", cell.value)
                row[m] = cell
            else:
                row[m] = None
        rows.append(row)
    return pd.DataFrame(rows)


def final_predicted(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of summary_a for predicted-class maps against the final baseline."""
    sel = pd.Series(True, index=summary.index)
    if "target" in summary:
        sel &= summary.target == "predicted"
    if "reference" in summary:
        sel &= summary.reference == "final"
    return summary[sel]


def verdict_table(summary: pd.DataFrame, order: list[str], metrics: list[str]) -> pd.DataFrame:
    """variant × metric: ``verdict (diff [lo, hi])`` against the final baseline and, where the
    run has them, against the accuracy-matched baseline."""
    rows = []
    refs = [r for r in ("final", "matched") if "reference" in summary
            and (summary.reference == r).any()] or ["final"]
    for v in order:
        for ref in refs:
            g = summary[(summary.variant == v)]
            if "reference" in summary:
                g = g[g.reference == ref]
            g = g.set_index("metric")
            if g.empty or "verdict" not in g:
                continue
            row: dict[str, object] = {"variant": v, "baseline": ref}
            for m in metrics:
                if m in g.index and isinstance(g.loc[m, "verdict"], str):
                    r = g.loc[m]
                    row[m] = Cell(f"{r.verdict} ({fmt(r['diff'], 3)} [{fmt(r.diff_low, 3)}, "
                                  f"{fmt(r.diff_high, 3)}])", float(r["diff"]))
            rows.append(row)
    return pd.DataFrame(rows)


def _variant_order(run: Run, present: list[str]) -> list[str]:
    known = [v for v in run.variants if v in present and v not in CONTROLS]
    rest = [v for v in present if v not in known and v not in CONTROLS]
    return known + rest + [c for c in CONTROLS if c in present]


def _reading_a(summary: pd.DataFrame, method: str) -> str:
    metric = main_metric(list(dict.fromkeys(summary.metric)))
    if metric is None:
        return f"{_name(method)} maps were compared with the baseline; no known metric to quote."
    up = bool(higher_is_similar(metric))
    m = summary[summary.metric == metric].set_index("variant")
    floor = m.loc[NOISE_FLOOR] if NOISE_FLOOR in m.index else None
    chance = m.loc[RANDOM_MAP] if RANDOM_MAP in m.index else None
    aug = m.drop(index=list(CONTROLS), errors="ignore")
    text = [f"Each augmented model's {_name(method)} maps are compared image by image with the "
            "baseline of the same seed; means and 95 % intervals are over training runs and "
            "images. The noise floor compares baselines of different seeds, so a variant inside "
            "it changed its maps no more than retraining with another seed does."]
    valid = aug["mean"].dropna()
    if not valid.empty:
        worst = valid.idxmin() if up else valid.idxmax()
        best = valid.idxmax() if up else valid.idxmin()
        r = aug.loc[worst]
        ci = f"{r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        fl = (f"noise floor {floor['mean']:.3f} [{floor.ci_low:.3f}, {floor.ci_high:.3f}]"
              if floor is not None else "")
        direction = f"on {metric} ({'higher' if up else 'lower'} = more similar)"
        if floor is not None and (r["mean"] >= floor["mean"] if up else r["mean"] <= floor["mean"]):
            text.append(f"Every augmentation's maps stay closer to the baseline than baselines of "
                        f"different seeds are to each other {direction}: even the least similar, "
                        f"{worst} ({ci}), is more similar than the {fl}, so augmentation "
                        "changed the maps less than retraining with another seed does.")
        else:
            s = f"{direction[0].upper()}{direction[1:]}, {worst} diverges most from the " \
                f"baseline: mean {ci}" + (f" vs {fl}" if fl else "")
            text.append(s + (f"; {best} stays closest ({aug.loc[best, 'mean']:.3f})."
                             if best != worst else "."))
        if "verdict" in aug:
            groups = {k: sorted(aug.index[aug.verdict == k]) for k in
                      ("beyond", "within", "closer", "undecided")}
            text.append(f"Verdicts on {metric} from the 95 % CI of the difference to the noise "
                        "floor (seed-level: resampling training runs and images): "
                        + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in groups.items()
                                    if v) + ".")
            if aug.provisional.fillna(False).any():
                need = aug.seeds_needed.dropna()
                text.append("With fewer than 3 seeds these intervals are unreliable and every "
                            "verdict is provisional"
                            + (f"; the observed seed spread needs about {int(need.max())} seeds "
                               "to resolve a difference of the equivalence margin"
                               if len(need) else "") + ".")
            if "unconverged" in aug and (aug.unconverged.fillna("") != "").any():
                text.append("Comparisons with unconverged models ("
                            + ", ".join(sorted({c for cs in aug.unconverged.dropna()
                                                for c in cs.split(",") if c}))
                            + ") are confounded with under-training.")
        elif floor is not None:
            beyond = (aug.ci_high < floor.ci_low) if up else (aug.ci_low > floor.ci_high)
            text.append(f"{int(beyond.sum())} of {len(aug)} augmentations have a 95 % CI "
                        f"entirely beyond the noise floor's on {metric}.")
    else:
        text.append(f"No {metric} value could be computed.")
    if chance is not None and np.isfinite(chance["mean"]):
        text.append(f"Chance level: random maps score {chance['mean']:.3f} [{chance.ci_low:.3f}, "
                    f"{chance.ci_high:.3f}] against the baseline's maps on {metric}.")
    nan = int(summary[~summary.variant.isin(CONTROLS)].n_nan.sum())
    if nan:
        text.append(f"{nan} per-image values are NaN (constant maps make correlations "
                    "undefined); they are kept and counted in n_nan, not dropped.")
    return " ".join(text)


_PLOTS_A = [
    ("metric_boxplots", "Per-image metric distributions per augmentation; grey box and dashed "
     "line = seed noise floor"),
    ("overlap_vs_y", "Overlap rate of the top Y % pixels with the baseline, mean with 95 % CI"),
    ("correlation_heatmap", "Inter-augmentation Pearson r of the per-image values (mean over "
     "metrics), ordered by the dendrogram above it"),
    ("correlation_per_metric", "The same correlation heat map for each metric"),
    ("accuracy_a", "Each model's mean similarity to the final baseline of its seed against its "
     "validation accuracy (hollow: baseline checkpoints vs the final baseline); ρ = Spearman "
     "over models"),
]


def study_a_section(run: Run) -> Section:
    """Metric distributions vs the noise floor, overlap vs Y, correlations, pairs, clusters."""
    sec = Section("study-a", "Study A: how augmentation changes the explanations")
    methods = run.study_a_methods() or ["gradcam"]
    readings = []
    for method in methods:
        if len(methods) > 1:
            sec.sub(f"{_name(method)}")
        readings.append(_method_block(sec, run, method, len(methods) > 1))
    sec.reading = next((r for r in readings if r), "")
    return sec


def _method_block(sec: Section, run: Run, method: str, several: bool) -> str:
    summary = run.table(run.t("summary_a", method))
    reading = ""
    if summary is None:
        sec.miss(run.reason(run.t("summary_a", method)))
        reading = (f"Study A has not been computed for {_name(method)} in this run directory, "
                   "so there is nothing to compare yet.")
    else:
        pred = final_predicted(summary)
        order = _variant_order(run, list(dict.fromkeys(pred.variant)))
        sec.table(_wide_ci(pred, order), f"{_name(method)}: mean over models and images with "
                  "95 % CI over training runs and images (two-way bootstrap), and the verdict "
                  "against the seed noise floor; maps of each model's predicted class; last rows "
                  "= noise floor and random maps (chance level)", floor=NOISE_FLOOR,
                  table_id=f"summary-a-{method}")
        if "verdict" in summary:
            metrics = [m for m in dict.fromkeys(pred.metric)]
            allp = summary[summary.target == "predicted"] if "target" in summary else summary
            sec.table(verdict_table(allp, [v for v in order if v not in CONTROLS], metrics),
                      f"{_name(method)}: verdicts against the noise floor, each variant compared "
                      "with the final baseline of its seed and with the baseline checkpoint of "
                      "the same seed whose validation accuracy is closest to the variant's "
                      "(accuracy-matched); diff > 0 = less similar to the baseline than another "
                      "baseline seed is", table_id=f"verdicts-a-{method}")
        cols = [c for c in ("variant", "reference", "target", "metric", "mean", "ci_low",
                            "ci_high", "pct_low", "pct_high", "n_seeds", "n_images", "n_nan",
                            "diff", "diff_low", "diff_high", "verdict", "provisional",
                            "seeds_needed", "unconverged", "failed") if c in summary]
        sec.table(summary[cols], f"{_name(method)}: full summary (both targets, with NaN "
                  "counts per metric)", collapsed=True, md=False)
        reading = _reading_a(pred, method)
        if several:
            sec.text(reading, md=False)
    for name, caption in _PLOTS_A:
        rel = run.p(name, method)
        png = path_png(run.path(rel))
        if png is None:
            sec.miss(run.reason(rel))
        else:
            sec.figure(png, caption, rel, collapsed=name == "correlation_per_metric")
    acc = run.table(run.t("accuracy_correlation_a", method))
    if acc is not None and len(acc):
        sec.table(acc, f"{_name(method)}: Spearman's ρ between each model's mean similarity to "
                  "the baseline and its validation accuracy (cells; all = cells + baseline "
                  "checkpoints): a strong ρ means divergence tracks accuracy", collapsed=True)
    pf = run.table(run.t("pair_frequency", method))
    if pf is None:
        sec.miss(run.reason(run.t("pair_frequency", method)))
    else:
        sub = pf[pf.method == "pearson"] if (pf.method == "pearson").any() else pf
        k = int(sub.k.iloc[0]) if len(sub) else 0
        sec.table(sub.drop(columns=["method"]).reset_index(drop=True),
                  f"Pairs of augmentations: in how many metrics each pair is among the k = {k} "
                  "most (top_count) and least (bottom_count) correlated pairs (Pearson r across "
                  "images)")
        if len(sub) > 2 * k:
            top = sub.sort_values("top_count", ascending=False, kind="stable").iloc[0]
            bot = sub.sort_values("bottom_count", ascending=False, kind="stable").iloc[0]
            sec.text(f"Most consistently alike: {top.variant_a} & {top.variant_b} (top-{k} in "
                     f"{top.top_count} of {top.n_metrics} metrics); least alike: {bot.variant_a} "
                     f"& {bot.variant_b} (bottom-{k} in {bot.bottom_count}).")
    cl = run.table(run.t("clusters", method))
    if cl is None:
        sec.miss(run.reason(run.t("clusters", method)))
    else:
        g = cl.groupby("cluster")["variant"].apply(lambda s: ", ".join(map(str, s)))
        sec.table(pd.DataFrame({"cluster": g.index, "augmentations": g.to_numpy()}),
                  "Clusters of augmentations (average linkage on 1 − mean r)")
    return reading


def changed_section(run: Run) -> tuple[Section, dict[int, str]]:
    """Variants and images whose maps diverge most from the baseline beyond the noise floor;
    also returns image id → note for the gallery."""
    sec = Section("changed", "What changed most")
    methods = run.study_a_methods() or ["gradcam"]
    method = methods[0]
    per = run.table(run.t("similarity_seed_mean", method))
    summary = run.table(run.t("summary_a", method))
    if per is None:
        sec.miss(run.reason(run.t("similarity_seed_mean", method)))
        sec.reading = "Without Study A tables there is nothing to rank yet."
        return sec, {}
    per = per[per.target == "predicted"] if "target" in per else per
    if summary is not None:
        summary = final_predicted(summary)
    metrics = [m for m in dict.fromkeys(per.metric) if higher_is_similar(m) is not None]
    main = main_metric(metrics)
    if main is None:
        sec.miss("tables have no metric with a known direction (e.g. spearman, mad)")
        return sec, {}
    has_floor = (per.variant == NOISE_FLOOR).any()
    rows = [r for r in (_variant_row(per, summary, m) for m in metrics) if r is not None]
    if not rows:
        sec.miss(f"{run.t('similarity_seed_mean', method)} has no augmented variant to rank")
        return sec, {}
    table = pd.concat(rows, ignore_index=True)
    main_rows = table[table.metric == main]
    sign = 1.0 if higher_is_similar(main) else -1.0
    key = main_rows.gap if has_floor else -sign * main_rows["mean"]
    main_rows = main_rows.iloc[np.argsort(-key.fillna(-np.inf).to_numpy(), kind="stable")]
    sec.table(main_rows.drop(columns=["metric"]).reset_index(drop=True),
              f"{_name(method)}, {main}: variants ranked by how far their mean lies beyond the "
              "noise floor (gap > 0 = less similar to the baseline than chance); "
              "'% images beyond' = share of images below the noise floor's 5th percentile "
              "(5 % expected by chance)", table_id="changed-variants")
    sec.table(table, "All metrics (distances oriented so that gap > 0 always means more "
              "different than the noise floor)", collapsed=True, md=False)
    images = _image_rows(per, main, has_floor)
    sec.table(images, f"The {len(images)} (variant, image) pairs whose {main} differs most from "
              "the same image's noise floor" if has_floor else
              f"The {len(images)} (variant, image) pairs with the least similar {main} "
              "(single seed: no noise floor)", table_id="changed-images")
    highlight: dict[int, str] = {}
    for r in images.itertuples(index=False):
        if len(highlight) >= 4 or (has_floor and not r.gap > 0):
            break
        highlight.setdefault(int(r.image_id), f"changed most under {r.variant}")
    sec.reading = _reading_changed(main_rows, images, main, method, has_floor)
    return sec, highlight


def _variant_row(per: pd.DataFrame, summary: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    sign = 1.0 if higher_is_similar(metric) else -1.0
    m = per[per.metric == metric]
    floor = m[m.variant == NOISE_FLOOR]["value"].to_numpy(np.float64)
    floor_mean = float(np.nanmean(floor)) if np.isfinite(floor).any() else float("nan")
    thr = float(np.nanpercentile(sign * floor, 5)) if np.isfinite(floor).any() else float("nan")
    rows = []
    for variant, g in m[m.variant != NOISE_FLOOR].groupby("variant", sort=False):
        v = g["value"].to_numpy(np.float64)
        ok = np.isfinite(v)
        mean = float(np.nanmean(v)) if ok.any() else float("nan")
        lo = hi = float("nan")
        if summary is not None:
            s = summary[(summary.variant == variant) & (summary.metric == metric)]
            if "target" in s:
                s = s[s.target == "predicted"]
            if len(s):
                lo, hi = float(s.ci_low.iloc[0]), float(s.ci_high.iloc[0])
        pct = (float(np.mean(sign * v[ok] < thr)) * 100 if ok.any() and np.isfinite(thr)
               else float("nan"))
        rows.append({"variant": variant, "metric": metric, "mean": mean, "ci_low": lo,
                     "ci_high": hi, "noise floor": floor_mean,
                     "gap": sign * (floor_mean - mean),
                     "% images beyond": Cell(fmt(pct, 0) + (" %" if np.isfinite(pct) else ""),
                                             pct),
                     "NaN images": int((~ok).sum())})
    return pd.DataFrame(rows) if rows else None


def _image_rows(per: pd.DataFrame, metric: str, has_floor: bool, n: int = 10) -> pd.DataFrame:
    sign = 1.0 if higher_is_similar(metric) else -1.0
    m = per[per.metric == metric]
    aug = m[m.variant != NOISE_FLOOR][["variant", "image_id", "value"]]
    if has_floor:
        floor = m[m.variant == NOISE_FLOOR].set_index("image_id")["value"]
        aug = aug.assign(**{"noise floor": aug.image_id.map(floor).to_numpy()})
        aug["gap"] = sign * (aug["noise floor"] - aug["value"])
    else:
        aug["gap"] = -sign * aug["value"]
    aug = aug.dropna(subset=["gap"]).sort_values("gap", ascending=False, kind="stable")
    return aug.head(n)[["image_id", "variant", "value"] + (["noise floor"] if has_floor else [])
                      + ["gap"]].reset_index(drop=True)


def _reading_changed(rows: pd.DataFrame, images: pd.DataFrame, metric: str, method: str,
                     has_floor: bool) -> str:
    valid = rows.dropna(subset=["gap" if has_floor else "mean"])
    if valid.empty:
        return f"No {metric} values to rank ({_name(method)})."
    top = valid.iloc[0]
    if not has_floor:
        text = (f"With a single seed there is no noise floor; {top.variant} has the least "
                f"similar {_name(method)} maps on {metric} (mean {top['mean']:.3f}).")
    elif not top.gap > 0:
        text = (f"No augmentation moved its {_name(method)} maps further from the baseline than "
                f"the seed noise floor on {metric}: even the least similar, {top.variant}, has "
                f"mean {top['mean']:.3f} vs noise floor {top['noise floor']:.3f}.")
    else:
        text = (f"{top.variant} diverges most from the baseline: mean {metric} "
                f"{top['mean']:.3f} vs noise floor {top['noise floor']:.3f} "
                f"({_name(method)} maps)")
        pct = top["% images beyond"].value
        if np.isfinite(pct):
            text += (f", and {pct:.0f} % of its images fall below the noise "
                     "floor's 5th percentile where 5 % would be chance")
        text += "."
        up = bool(higher_is_similar(metric))
        edge = valid.ci_high if up else valid.ci_low
        reach = (edge >= valid["noise floor"]) if up else (edge <= valid["noise floor"])
        inside = valid[(valid.gap <= 0) | reach.fillna(False)].variant.tolist()
        if inside:
            text += (" Not distinguishable from the noise floor (95 % CI reaches the floor's "
                     f"mean): {', '.join(map(str, inside))}.")
    beyond = images[images.gap > 0] if has_floor else images
    if len(beyond):
        ids = list(dict.fromkeys(beyond.image_id.astype(int)))[:3]
        text += (f" The single images that changed most are {', '.join(map(str, ids))}; the "
                 "gallery below opens on them.")
    elif len(images):
        text += (" No single image's map moved further from the baseline than that image's "
                 "noise floor.")
    return text
