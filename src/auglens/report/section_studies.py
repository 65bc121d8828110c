"""Sections of the two follow-up studies, each shown only for a run designed for it: the
label-mixing study (image mixing × label treatment, ``tables/label_study.parquet``) and the
composition of augmentations (pairs A + B, ``tables/composition.parquet``)."""

from __future__ import annotations

import math

import pandas as pd

from ..analysis.composition import MAP_METRICS, composition_pairs
from ..analysis.label_study import EFFECTS, NONE, crossing, decompose
from .gallery import METHOD_NAMES
from .html import Cell, Section, fmt
from .load import Run

#: the metrics the label-study answer is read from (alignment, then faithfulness)
HEADLINE = ("energy_pointing_game", "effective_heat_ratio", "delta_del", "delta_ins")
SHORT = {"energy_pointing_game": "EPG", "effective_heat_ratio": "EHR", "delta_del": "ΔDel",
         "delta_ins": "ΔIns", "lerf_morf_del": "LeRF−MoRF del", "lerf_morf_ins":
         "LeRF−MoRF ins", "road_lerf_morf": "ROAD LeRF−MoRF", "spearman": "Spearman",
         "overlap@10": "overlap@10", "ssim": "SSIM"}
EFFECT_WORDS = {"total": "mixed labels vs baseline", "image_mixing": "image mixing (hard labels)",
                "labels": "mixed vs hard labels", "softness": "smoothed vs hard labels"}
FLOOR_WORDS = {"beyond": "further apart than two baseline seeds",
               "within": "as close as two baseline seeds",
               "closer": "closer than two baseline seeds",
               "undecided": "undecided against the noise floor"}


def studies_sections(run: Run) -> list[Section]:
    """The sections that apply to this run (none for an ordinary run)."""
    exp = run.config
    out = []
    if exp is not None and crossing(exp):
        out.append(label_study_section(run))
    if exp is not None and composition_pairs(exp):
        out.append(composition_section(run))
    return out


def ci_text(diff: float, low: float, high: float) -> str:
    """``d [lo, hi]`` plus ``no difference`` when the CI covers 0 (else ``higher``/``lower``)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        word = "no interval"
    else:
        word = "higher" if low > 0 else "lower" if high < 0 else "no difference"
    return f"{fmt(diff)} [{fmt(low)}, {fmt(high)}] ({word})"


# --------------------------------------------------------------------------- label mixing


def label_study_answer(table: pd.DataFrame, method: str,
                       metrics: tuple[str, ...] = HEADLINE) -> str:
    """The answer in words, with numbers, for one attribution ``method``: where the change of
    each mixing's alignment / faithfulness comes from (`auglens.analysis.label_study.decompose`)."""
    name = METHOD_NAMES.get(method, method)
    metrics = tuple(m for m in metrics if ((table.method == method) & (table.metric == m)).any())
    if not metrics:
        return f"No label-study rows for {name}."
    dec = pd.concat([decompose(table, method, m).assign(metric=m) for m in metrics],
                    ignore_index=True)
    mixing = dec[(dec.mixing != NONE) & dec.total.notna()]
    losses, gains = mixing[mixing.change == "loss"], mixing[mixing.change == "gain"]
    where = ", ".join(SHORT.get(m, m) for m in metrics)
    parts = [f"{name}, {where}: the mixed-label model is less aligned / faithful than the "
             f"baseline (CI below 0) in {len(losses)} of {len(mixing)} (mixing, metric) cases, "
             f"more (CI above 0) in {len(gains)}, and shows no difference in "
             f"{len(mixing) - len(losses) - len(gains)}"]
    if losses.empty:
        parts.append("so there is no loss to attribute" + (
            ": no difference from the baseline within the CIs" if gains.empty else
            f"; the gains come from: {_sources(gains)}"))
    else:
        parts.append(_loss_verdict(losses))
    soft = dec[dec.softness.notna()]
    if len(soft):
        covers = int(((soft.softness_low <= 0) & (soft.softness_high >= 0)).sum())
        parts.append(f"smoothing hard labels to the same entropy makes no difference in "
                     f"{covers} of {len(soft)} cases (CI covers 0)")
    return "; ".join(parts) + "."


def _sources(rows: pd.DataFrame) -> str:
    """``image mixing alone 2, label mixing alone 0, both 1, neither part resolved 0``."""
    c = rows.source.value_counts()
    return ", ".join(f"{k} {int(c.get(v, 0))}" for k, v in (
        ("image mixing alone", "image mixing"), ("label mixing alone", "label mixing"),
        ("both", "both"), ("neither part resolved", "neither alone")))


def _loss_verdict(losses: pd.DataFrame) -> str:
    """Where the losses come from, in words, with the counts."""
    c = losses.source.value_counts()
    img, lab, both = (int(c.get(k, 0)) for k in ("image mixing", "label mixing", "both"))
    detail = _sources(losses)
    if img and not (lab or both):
        return f"the loss comes from the image mixing, not from the soft labels ({detail})"
    if (lab or both) and not img:
        return f"the loss comes from the label mixing ({detail})"
    if img:
        return f"the loss comes from both, case by case ({detail})"
    return (f"the loss is resolved but neither part alone is ({detail}): more seeds would "
            "tell image mixing and label mixing apart")


def _mixing_lines(table: pd.DataFrame, method: str) -> list[str]:
    """One line per mixing: every effect of each headline metric with its CI."""
    lines = []
    sub = table[(table.method == method) & table.metric.isin(HEADLINE)]
    for mixing, g in sub.groupby("mixing", sort=False):
        bits = []
        for metric in [m for m in HEADLINE if (g.metric == m).any()]:
            h = g[g.metric == metric]
            effs = "; ".join(f"{EFFECT_WORDS[r.effect]} {ci_text(r.diff, r.diff_low, r.diff_high)}"
                             for r in h.itertuples())
            d = decompose(h, method, metric).iloc[0]
            if mixing != NONE and d.change != "none":
                effs += (f" → a {d.change}, " + ("neither part alone resolved"
                                                if d.source == "neither alone" else
                                                f"from {d.source}"))
            bits.append(f"{SHORT[metric]}: {effs}")
        label = "label smoothing alone" if mixing == NONE else mixing
        lines.append(f"{label} ({METHOD_NAMES.get(method, method)}) — " + ". ".join(bits) + ".")
    return lines


def label_study_section(run: Run) -> Section:
    """Does the alignment / faithfulness loss come from the image mixing or the soft labels?"""
    sec = Section("label-study", "Label mixing vs image mixing")
    table = run.required(sec, "label_study", (
        "This run crosses image mixing with hard, mixed and smoothed labels, but its label-study "
        "table is missing."))
    if table is None:
        return sec
    methods = list(dict.fromkeys(table.method))
    methods.sort(key=lambda m: m != "gradcam")
    sec.reading = ("Does the loss of alignment and faithfulness under mixed-sample training come "
                   "from mixing the images or from mixing the labels? Each effect is a "
                   "difference of seed-level means with a 95 % CI over training runs and images; "
                   "'no difference' = the CI covers 0. "
                   + " ".join(label_study_answer(table, m) for m in methods))
    for method in methods:
        for line in _mixing_lines(table, method):
            sec.text(line)
    shown = table.copy()
    shown["a − b [95 % CI]"] = [Cell(ci_text(r["diff"], r.diff_low, r.diff_high), r["diff"])
                                for _, r in shown.iterrows()]
    sec.table(shown[["mixing", "effect", "a", "b", "method", "metric", "mean_a", "mean_b",
                     "a − b [95 % CI]", "verdict", "n_seeds", "entropy_a", "entropy_b"]],
              "Every effect (" + "; ".join(f"{k}: {v}" for k, v in EFFECTS.items())
              + "), a − b over the same seeds and images; verdict higher / lower / same (inside "
              "the equivalence margin) / undecided; entropy = the arm's expected mean label "
              "entropy in nats", table_id="label-study-table")
    return sec


# --------------------------------------------------------------------------- composition


def composition_sentence(g: pd.DataFrame, metric: str) -> str:
    """One pair's reading: its cluster outcome and its maps against A's and B's."""
    r0 = g.iloc[0]
    a, b, ab = r0.a, r0.b, r0.combined
    outcome = {"stays": f"stays in the cluster that {a} and {b} share",
               "merges with A": f"merges with {a}'s cluster", "merges with B":
               f"merges with {b}'s cluster", "shifts": f"shifts to a cluster of neither {a} nor "
               f"{b}"}.get(r0.outcome, "has no cluster")
    text = (f"{ab} {outcome} (mean Pearson r across images with {a} {fmt(r0.r_combined_a, 2)}, "
            f"with {b} {fmt(r0.r_combined_b, 2)}; {a} with {b} {fmt(r0.r_a_b, 2)}).")
    m = g[g.metric == metric].set_index("comparison")
    for comp, other in (("combined_vs_a", a), ("combined_vs_b", b)):
        if comp in m.index:
            r = m.loc[comp]
            text += (f" Its maps vs {other}'s: {SHORT.get(metric, metric)} {fmt(r['mean'])} "
                     f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}], noise floor {fmt(r.floor)} — "
                     f"{FLOOR_WORDS.get(r.verdict, r.verdict)}.")
    if bool(g.provisional.any()):
        text += " (Provisional: fewer than 3 seeds.)"
    return text


def composition_section(run: Run) -> Section:
    """Do the behavioural clusters of pairs A + B merge, shift or stay; whose maps are A + B's?"""
    sec = Section("composition", "Composition of augmentations")
    table = run.required(sec, "composition",
                         "This run has augmentation pairs, but its composition table is missing.")
    if table is None:
        return sec
    metric = next((m for m in MAP_METRICS if (table.metric == m).any()), table.metric.iloc[0])
    counts = table.drop_duplicates("combined").outcome.value_counts()
    lines = [composition_sentence(g, metric) for _, g in table.groupby("combined", sort=False)]
    sec.reading = ("Study A's open question 1: does a pair of augmentations behave like one of "
                   "its parts, like both, or like neither? Over the pairs: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()) + ". " + " ".join(lines))
    shown = table.copy()
    shown["mean [95 % CI]"] = [Cell(f"{fmt(r['mean'])} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]",
                                    r["mean"]) for _, r in shown.iterrows()]
    sec.table(shown[["a", "b", "combined", "outcome", "r_combined_a", "r_combined_b", "r_a_b",
                     "comparison", "metric", "mean [95 % CI]", "floor", "verdict",
                     "n_seeds"]],
              "Per pair: the cluster outcome, mean correlations across images, and map "
              "similarity of A + B with A, with B, and of A with B (same seed), 95 % CI over "
              "training runs and images; verdict against the baseline's noise floor",
              table_id="composition-table")
    return sec
