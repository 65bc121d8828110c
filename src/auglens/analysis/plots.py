"""Study A plots (matplotlib, Agg backend, PNG). Each writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..utils import atomic_path  # noqa: E402
from .study_a import NOISE_FLOOR  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def panel_grid(n: int, width: float, height: float, cols: int = 4
               ) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``cols`` columns and enough rows for ``n`` panels of ``width`` × ``height``
    inches; axes as a 2-D array."""
    rows = max(int(np.ceil(n / cols)), 1)
    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)


def metric_boxplots(per_image: pd.DataFrame, path: Path, target: str = "predicted") -> Path:
    """One panel per metric: per-image (seed-averaged) values per augmentation; the noise floor
    (baseline vs baseline of other seeds) as a grey box and its median as a dashed line."""
    sub = per_image[per_image.target == target]
    metrics = list(dict.fromkeys(sub.metric))
    fig, axes = panel_grid(len(metrics), 4.2, 3.2)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        m = sub[sub.metric == metric]
        variants = [v for v in dict.fromkeys(m.variant) if v != NOISE_FLOOR]
        order = variants + ([NOISE_FLOOR] if (m.variant == NOISE_FLOOR).any() else [])
        data = [m[m.variant == v]["value"].dropna().to_numpy() for v in order]
        bp = ax.boxplot(data, showfliers=False, patch_artist=True)
        for patch, v in zip(bp["boxes"], order, strict=True):
            patch.set_facecolor("#d9d9d9" if v == NOISE_FLOOR else "#9ecae1")
        if NOISE_FLOOR in order and len(data[-1]):
            ax.axhline(np.median(data[-1]), color="grey", ls="--", lw=1)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"Per-image metrics vs baseline ({target} class); grey = seed noise floor")
    fig.tight_layout()
    return _save(fig, path)


def overlap_vs_y(summary: pd.DataFrame, path: Path, target: str = "predicted") -> Path:
    """Mean overlap rate (with bootstrap 95 % CI) against the threshold Y per augmentation."""
    sub = summary[(summary.target == target) & summary.metric.str.startswith("overlap@")].copy()
    sub["y"] = sub.metric.str.split("@").str[1].astype(float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, g in sub.groupby("variant", sort=False):
        g = g.sort_values("y")
        style = {"color": "grey", "ls": "--"} if variant == NOISE_FLOOR else {}
        ax.errorbar(
            g.y,
            g["mean"],
            yerr=[g["mean"] - g.ci_low, g.ci_high - g["mean"]],
            marker="o",
            capsize=3,
            label=variant,
            **style,
        )
    ax.set_xlabel("Y (% of pixels kept)")
    ax.set_ylabel("overlap rate with baseline")
    ax.set_title("Overlap rate vs threshold Y")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def correlation_heatmap(
    corr: pd.DataFrame, linkage_matrix: np.ndarray, path: Path, method: str = "pearson"
) -> Path:
    """Mean (over metrics) inter-augmentation correlation, rows/columns in dendrogram order."""
    from scipy.cluster.hierarchy import dendrogram

    from .study_a import mean_correlation_matrix

    mat = mean_correlation_matrix(corr, method)
    names = list(mat.index)
    fig = plt.figure(figsize=(7.5, 6))
    if len(names) >= 2 and len(linkage_matrix):
        ax_d = fig.add_axes([0.12, 0.80, 0.66, 0.15])
        dn = dendrogram(linkage_matrix, labels=names, ax=ax_d, no_labels=True, color_threshold=0)
        ax_d.axis("off")
        order = [names[i] for i in dn["leaves"]]
    else:
        order = names
    ax = fig.add_axes([0.12, 0.1, 0.66, 0.68])
    m = mat.loc[order, order].to_numpy()
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    for i in range(len(order)):
        for j in range(len(order)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    cax = fig.add_axes([0.82, 0.1, 0.03, 0.68])
    fig.colorbar(im, cax=cax, label=f"{method} r (mean over metrics)")
    return _save(fig, path)


def per_metric_heatmaps(corr: pd.DataFrame, path: Path, method: str = "pearson") -> Path:
    """One small correlation heat map per metric (same variant order)."""
    sub = corr[corr.method == method]
    metrics = list(dict.fromkeys(sub.metric))
    fig, axes = panel_grid(len(metrics), 3.6, 3.4)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mat = sub[sub.metric == metric].pivot(index="variant_a", columns="variant_b", values="r")
        ax.imshow(mat.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(mat)), mat.columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(mat)), mat.index, fontsize=6)
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def cam_gallery(
    images: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], path: Path
) -> Path:
    """Rows = images, columns = input then each variant's map (upsampled, min-max per map for
    display only). ``images`` uint8 (N, 3, H, W); ``maps[variant]`` float (N, h, w)."""
    import torch

    from ..utils import upsample

    n = images.shape[0]
    variants = list(maps)
    fig, axes = plt.subplots(
        n, len(variants) + 1, figsize=(1.6 * (len(variants) + 1), 1.7 * n), squeeze=False
    )
    size = images.shape[-2:]
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        axes[i, 0].imshow(img)
        axes[i, 0].set_ylabel(labels[i], fontsize=7)
        for j, v in enumerate(variants):
            m = upsample(torch.as_tensor(maps[v][i : i + 1]).float(), tuple(size))[0].numpy()
            lo, hi = m.min(), m.max()
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            axes[i, j + 1].imshow(img)
            axes[i, j + 1].imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(v, fontsize=7)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def metric_vs_accuracy(points: pd.DataFrame, corr: pd.DataFrame, path: Path) -> Path:
    """One panel per metric: each cell's mean value against its validation accuracy (filled
    markers, one colour per variant) and the baseline checkpoints (hollow), with Spearman's ρ
    over the cells (and over cells + checkpoints) in the title."""
    metrics = list(dict.fromkeys(points.metric))
    fig, axes = panel_grid(len(metrics), 4.2, 3.4, cols=min(4, max(1, len(metrics))))
    variants = list(dict.fromkeys(points.variant))
    colours = {v: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        m = points[points.metric == metric]
        for v in variants:
            cells = m[(m.variant == v) & m.epoch.isna()]
            ckpt = m[(m.variant == v) & m.epoch.notna()]
            ax.scatter(cells.val_accuracy, cells.value, color=colours[v], s=22, label=v)
            if len(ckpt):
                ax.scatter(ckpt.val_accuracy, ckpt.value, facecolors="none",
                           edgecolors=colours[v], s=22, label=f"{v} checkpoints")
        c = corr[corr.metric == metric].set_index("points")
        title = metric
        if "cells" in c.index and np.isfinite(c.loc["cells", "spearman_rho"]):
            title += f"  ρ={c.loc['cells', 'spearman_rho']:.2f}"
            if "all" in c.index and c.loc["all", "n"] > c.loc["cells", "n"]:
                title += f" (+ckpt {c.loc['all', 'spearman_rho']:.2f})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("validation accuracy", fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(labels) // 6)))
    fig.suptitle("Metric against accuracy per model: is a divergence just lower accuracy?")
    fig.tight_layout()
    return _save(fig, path)
