"""Study B plots (matplotlib, Agg backend, PNG). Each writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .plots import _save, plt

SCORES = ("delta_del", "delta_ins", "lerf_morf_del", "lerf_morf_ins", "road_lerf_morf")
LABELS = {
    "energy_pointing_game": "Energy Pointing Game",
    "effective_heat_ratio": "Effective Heat Ratio",
    "delta_del": "ΔDel = AUC_del(RaO) − AUC_del(MoRF)",
    "delta_ins": "ΔIns = AUC_ins(MoRF) − AUC_ins(RaO)",
    "lerf_morf_del": "AUC_del(LeRF) − AUC_del(MoRF)",
    "lerf_morf_ins": "AUC_ins(MoRF) − AUC_ins(LeRF)",
    "road_lerf_morf": "ROAD: AUC(LeRF) − AUC(MoRF)",
}


def _ci_panel(ax: plt.Axes, rows: pd.DataFrame, title: str) -> None:
    """Mean with bootstrap 95 % CI per variant (one marker per method)."""
    variants = list(dict.fromkeys(rows.variant))
    methods = list(dict.fromkeys(rows.method))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        m = rows[rows.method == method].set_index("variant").reindex(variants)
        x = np.arange(len(variants)) + (j - (len(methods) - 1) / 2) * width
        err = np.vstack([m["mean"] - m["ci_low"], m["ci_high"] - m["mean"]]).clip(min=0)
        ax.errorbar(x, m["mean"], yerr=err, fmt="o", capsize=3, label=method)
    ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def alignment(summary: pd.DataFrame, path: Path) -> Path:
    """Energy Pointing Game and Effective Heat Ratio per variant, mean with 95 % CI."""
    metrics = [m for m in ("energy_pointing_game", "effective_heat_ratio")
               if (summary.metric == m).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        _ci_panel(ax, summary[summary.metric == metric], LABELS[metric])
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Human alignment with the object (higher = more heat on the object)")
    fig.tight_layout()
    return _save(fig, path)


def deletion_insertion(curves: pd.DataFrame, path: Path) -> Path:
    """Mean deletion/insertion curves per order (columns) and kind (rows), one line per variant
    (averaged over seeds); first method only when several are present (others are in the table)."""
    method = curves.method.iloc[0]
    c = curves[curves.method == method]
    kinds = list(dict.fromkeys(c.kind))
    orders = list(dict.fromkeys(c.order))
    fig, axes = plt.subplots(len(kinds), len(orders), figsize=(4.3 * len(orders),
                             3.3 * len(kinds)), squeeze=False, sharey=True)
    mean = c.groupby(["kind", "order", "variant", "fraction"])["score"].mean().sort_index()
    variants = list(dict.fromkeys(c.variant))
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(variants), 2)))
    present = set(zip(c.kind, c.order, strict=True))
    for i, kind in enumerate(kinds):
        for j, order in enumerate(orders):
            ax = axes[i, j]
            if (kind, order) not in present:  # e.g. ROAD has no random order
                ax.axis("off")
                continue
            for v, col in zip(variants, colors, strict=False):
                s = mean.loc[(kind, order, v)]
                ax.plot(s.index, s.to_numpy(), color=col, lw=1.2, label=v)
            ax.set_title(f"{kind}, {order}", fontsize=10)
            ax.set_xlabel("fraction of pixels changed (ROAD: removed and imputed)")
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("p(explained class)")
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Deletion / insertion curves ({method}), mean over images and seeds")
    fig.tight_layout()
    return _save(fig, path)


def faithfulness_scores(summary: pd.DataFrame, path: Path) -> Path:
    """Robustness-corrected faithfulness scores per variant, mean with 95 % CI."""
    metrics = [m for m in SCORES if (summary.metric == m).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        _ci_panel(ax, summary[summary.metric == metric], LABELS[metric])
        ax.axhline(0, color="grey", lw=0.8)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Faithfulness corrected for occlusion robustness (higher = map order matters)")
    fig.tight_layout()
    return _save(fig, path)


def label_mixing(summary: pd.DataFrame, path: Path,
                 metrics: tuple[str, ...] = ("energy_pointing_game", "effective_heat_ratio",
                                             "delta_del", "delta_ins")) -> Path:
    """The label-mixing ablation as pairs: per mixing family, with (filled) vs without (open)
    label mixing, mean with 95 % CI; first method only."""
    s = summary[summary.label_mixing.notna() & (summary.method == summary.method.iloc[0])]
    metrics = tuple(m for m in metrics if (s.metric == m).any())
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.8),
                             squeeze=False)
    families = list(dict.fromkeys(s.family))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for mixing, dx, face in ((True, -0.12, None), (False, 0.12, "none")):
            r = s[(s.metric == metric) & (s.label_mixing == mixing)].set_index("family")
            r = r[~r.index.duplicated()].reindex(families)  # first variant of each kind
            x = np.arange(len(families)) + dx
            err = np.vstack([r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]]).clip(min=0)
            ax.errorbar(x, r["mean"], yerr=err, fmt="o", capsize=3, mfc=face, color="C0",
                        label="label mixing" if mixing else "hard label")
        ax.set_xticks(range(len(families)), families, rotation=30, ha="right", fontsize=8)
        ax.set_title(LABELS.get(metric, metric), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Label-mixing ablation: the same image mixing with and without mixed labels")
    fig.tight_layout()
    return _save(fig, path)


def dissection_detectors(summary: pd.DataFrame, path: Path) -> Path:
    """Unique concepts (left) and detector units (right) per category and variant, mean over
    seeds, grouped bars."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, col, title in ((axes[0], "unique_concepts", "unique concepts detected"),
                           (axes[1], "n_detectors", "detector units (IoU > threshold)")):
        m = summary.groupby(["variant", "category"], sort=False)[col].mean().unstack("category")
        m = m.loc[:, (m > 0).any()] if (m > 0).any().any() else m
        m.plot.bar(ax=ax, width=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Network Dissection of the target layer (mean over seeds)")
    fig.tight_layout()
    return _save(fig, path)


def cascade_plot(summary: pd.DataFrame, path: Path, metric: str = "spearman") -> Path:
    """Per method: mean ``metric`` of the maps to the original ones after randomising 1..G
    groups (output → input; mean over the checked cells), the shuffled pairing, the
    random-logit test and the random-map control as horizontal lines."""
    s = summary[summary.metric == metric]
    methods = list(dict.fromkeys(s.method))
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(4.2 * max(len(methods), 1), 3.4),
                             squeeze=False)
    for ax, method in zip(axes[0], methods, strict=False):
        m = s[s.method == method]
        for test, style in (("cascade", "o-"), ("cascade_shuffled", "s--")):
            c = m[m.test == test].groupby("step", sort=True)["mean"].mean()
            if len(c):
                ax.plot(c.index, c.to_numpy(), style, label=test.replace("_", " "))
        groups = m[m.test == "cascade"].drop_duplicates("step").sort_values("step")
        for test, color in (("random_logit", "tab:purple"), ("random_map", "grey")):
            v = m[m.test == test]["mean"]
            if len(v):
                ax.axhline(float(v.mean()), color=color, ls=":", label=test.replace("_", " "))
        ax.set_xticks(groups.step.to_numpy(), groups.group.astype(str).to_numpy(),
                      rotation=60, ha="right", fontsize=7)
        ax.set_title(method)
        ax.set_xlabel("randomised down to (cumulative)")
        ax.set_ylabel(f"{metric} to the original maps")
        ax.set_ylim(-0.2, 1.05)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)
