"""Plots the report draws itself when a run has a Study B table but not its PNG (Agg, PNG bytes)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.plots import panel_grid  # noqa: E402
from ..errors import AuglensError  # noqa: E402


def png_bytes(fig: plt.Figure, dpi: int = 100) -> bytes:
    """Render and close ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _order(present: pd.Series, order: list[str] | None) -> list[str]:
    seen = list(dict.fromkeys(present))
    return [v for v in order or [] if v in seen] + [v for v in seen if v not in (order or [])]


def ci_bars(summary: pd.DataFrame, metrics: list[str], title: str,
            order: list[str] | None = None) -> bytes:
    """One panel per metric: mean with 95 % CI per variant (in ``order``), a bar per method."""
    metrics_asked = metrics
    metrics = [m for m in metrics if (summary.metric == m).any()]
    if not metrics:
        raise AuglensError(f"none of {', '.join(metrics_asked)} is in the summary table")
    fig, axes = panel_grid(len(metrics), 3.8, 3.2, cols=min(len(metrics), 4))
    methods = list(dict.fromkeys(summary.method))
    variants = _order(summary.variant, order)
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for j, method in enumerate(methods):
            g = summary[(summary.metric == metric) & (summary.method == method)]
            g = g.set_index("variant").reindex(variants)
            x = np.arange(len(variants)) + (j - (len(methods) - 1) / 2) * width
            err = np.vstack([g["mean"] - g.ci_low, g.ci_high - g["mean"]]).clip(min=0)
            ax.bar(x, g["mean"], width, yerr=np.nan_to_num(err), capsize=2, label=method)
        ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    if len(methods) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def curves(curves_df: pd.DataFrame) -> bytes:
    """Deletion and insertion curves (mean over seeds) per method: MoRF solid, LeRF dashed,
    random dotted, one colour per variant."""
    methods = list(dict.fromkeys(curves_df.method))
    kinds = [k for k in ("deletion", "insertion") if (curves_df.kind == k).any()]
    fig, axes = plt.subplots(
        len(methods), len(kinds), figsize=(5 * len(kinds), 3.4 * len(methods)), squeeze=False
    )
    styles = {"morf": "-", "lerf": "--", "random": ":"}
    variants = list(dict.fromkeys(curves_df.variant))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    mean = curves_df.groupby(["method", "kind", "order", "variant", "fraction"], sort=False)[
        "score"
    ].mean().reset_index()
    for i, method in enumerate(methods):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            sub = mean[(mean.method == method) & (mean.kind == kind)]
            for (variant, order), g in sub.groupby(["variant", "order"], sort=False):
                ax.plot(g.fraction, g.score, styles.get(order, "-"), color=colours[variant],
                        lw=1.2, label=variant if order == "morf" else None)
            ax.set_title(f"{method}: {kind}", fontsize=9)
            ax.set_xlabel("fraction of pixels changed", fontsize=8)
            ax.set_ylabel("target-class probability", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("solid = MoRF, dashed = LeRF, dotted = random order", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def detectors(summary: pd.DataFrame, order: list[str] | None = None) -> bytes:
    """Detectors per concept category and variant (mean over seeds), one panel per layer."""
    layers = list(dict.fromkeys(summary.layer))
    fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes.flat, layers, strict=True):
        sub = summary[summary.layer == layer]
        wide = sub.pivot_table(index="variant", columns="category", values="n_detectors",
                               aggfunc="mean").reindex(_order(sub.variant, order))
        wide.plot.bar(ax=ax, stacked=True, width=0.75, xlabel="")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_ylabel("detectors (mean over seeds)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=45)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
