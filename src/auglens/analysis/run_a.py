"""Study A end to end on a run directory: tables (Parquet) and plots (PNG).

Writes ``tables/{similarity, similarity_seed_mean, summary_a, correlation, pair_frequency,
clusters, target_ablation}.parquet`` and ``plots/{metric_boxplots, overlap_vs_y,
correlation_heatmap, correlation_per_metric, cam_gallery}.png``. Columns: see docs/outputs.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ExperimentConfig
from ..data import load_dataset
from ..explain.store import read_explanation
from ..metrics import CLASS_KLD_DIRECTION
from ..rundir import RunDir, write_table
from ..utils import write_json
from . import plots
from .compare import STUDY_A_METRICS, similarity_table, target_ablation_table
from .controls import RANDOM_VARIANT, random_similarity
from .inference import Settings
from .study_a import cluster, correlations, pair_frequency, seed_average, summarize

#: Conventions every Study A table depends on (written next to the tables).
CONVENTIONS = {
    "map_resolution": "feature resolution of the target layer (as stored; no upsampling)",
    "stored_maps": "raw (never normalised), float16",
    "mad_msd_ssim_normalisation": "per-map min-max to [0, 1]; a constant map becomes all zeros",
    "spearman_ties": "average ranks (scipy.stats.spearmanr)",
    "overlap_top_set": "ceil(Y% * n) highest pixels; ties broken by stable sort on pixel index",
    "class_kld": CLASS_KLD_DIRECTION,
    "a_vs_b": "a = augmented (or other-seed) model, b = reference (baseline of the same seed)",
    "seed_aggregation": "similarity_seed_mean (correlations, clusters, plots): per image, mean "
                        "over seeds (noise floor: over seed pairs); summary_a: over models and "
                        "images, see 'ci'",
    "ci": "summary_a: two-way (seed x image) bootstrap, seeds and images drawn independently "
          "with replacement, the same draws for a variant and the noise floor; interval = "
          "estimate +- t(Satterthwaite df) x se, se^2 = seed part x R/(R-1) + image part x "
          "I/(I-1); pct_low/pct_high = plain percentile interval (too narrow with few seeds); "
          "docs/statistics.md",
    "verdict": "diff = floor - value (similarities) or value - floor (distances), > 0 = less "
               "similar to the baseline than another baseline seed: beyond (CI > 0), closer "
               "(CI < 0), within (CI inside +-margin), undecided; margin = analysis.margin x "
               "|noise floor|; provisional with fewer than 3 seeds",
    "matched": "reference 'matched': the variant vs the baseline checkpoint of the same seed whose "
               "validation accuracy is closest to the variant's best (tables/matching.parquet)",
    "random_map": f"variant '{RANDOM_VARIANT}': i.i.d. U(0,1) maps at feature resolution, seeded "
                  "per image id, vs each baseline seed's maps (chance level, SPEC 11); not in "
                  "correlations, clusters or plots",
    "nan": "constant maps give NaN for pearson/spearman; kept and counted (summary n_nan)",
}


#: metrics of the random-map control (Class-KLD compares logits, which noise does not have)
RANDOM_METRICS = tuple(m for m in STUDY_A_METRICS if m != "class_kld")
CATEGORICAL = ("variant", "reference", "target", "metric")

#: Study A metrics plotted against accuracy
ACCURACY_METRICS = ("spearman", "overlap@10", "mad", "class_kld")


def analyse_study_a(
    exp: ExperimentConfig,
    run_dir: str | Path,
    method: str = "gradcam",
    k: int = 4,
    gallery_images: int = 6,
    n_boot: int | None = None,
) -> dict[str, Path]:
    """Compare every augmentation with the baseline, aggregate, correlate, cluster, plot."""
    run = RunDir(run_dir)
    tables, figs = run.tables(method), run.plots(method)
    out: dict[str, Path] = {}
    write_json(tables / "conventions_a.json", CONVENTIONS | {"method": method})
    matching = _read_optional(run.table("matching")) if exp.analysis.matched else None
    sim = similarity_table(exp, run, method, matching=matching)
    chance = random_similarity(exp, run, method, RANDOM_METRICS, (5, 10, 20), exp.sanity.seed)
    out["similarity"] = write_table(_concat(sim, chance), tables / "similarity.parquet")
    final = sim[sim.reference.astype(str) != "matched_baseline"]
    per_image = seed_average(final)
    out["similarity_seed_mean"] = write_table(per_image, tables / "similarity_seed_mean.parquet")
    a = exp.analysis
    summary = summarize(_concat(sim, chance),
                        Settings(n_boot or a.n_boot, a.level, a.margin, a.seed, a.power))
    summary.insert(0, "method", method)
    summary = mark_cells(summary, exp, run)
    out["summary_a"] = write_table(summary, tables / "summary_a.parquet")
    corr = correlations(per_image)
    out["correlation"] = write_table(corr, tables / "correlation.parquet")
    pf = pd.concat(
        [pair_frequency(corr, k=k, method=m) for m in ("pearson", "spearman")], ignore_index=True
    )
    out["pair_frequency"] = write_table(pf, tables / "pair_frequency.parquet")
    n_aug = corr.variant_a.nunique()
    clusters, z = cluster(corr, n_clusters=min(3, n_aug) if n_aug > 2 else None)
    out["clusters"] = write_table(clusters, tables / "clusters.parquet")
    from ..train.matching import matched_checkpoints
    from .accuracy import correlations as acc_correlations
    from .accuracy import points_a

    points = points_a(exp, run, method, sim, matched_checkpoints(exp, run), ACCURACY_METRICS)
    acc_corr = acc_correlations(points)
    out["accuracy_points_a"] = write_table(points, tables / "accuracy_points_a.parquet")
    out["accuracy_correlation_a"] = write_table(acc_corr, tables / "accuracy_correlation_a.parquet")
    out["plot_accuracy"] = plots.metric_vs_accuracy(points, acc_corr, figs / "accuracy_a.png")
    out["target_ablation"] = write_table(
        target_ablation_table(exp, run, method), tables / "target_ablation.parquet"
    )

    out["plot_boxplots"] = plots.metric_boxplots(per_image, figs / "metric_boxplots.png")
    out["plot_overlap"] = plots.overlap_vs_y(summary[summary.reference == "final"],
                                             figs / "overlap_vs_y.png")
    out["plot_corr"] = plots.correlation_heatmap(corr, z, figs / "correlation_heatmap.png")
    out["plot_corr_metrics"] = plots.per_metric_heatmaps(corr, figs / "correlation_per_metric.png")
    out["plot_gallery"] = _gallery(exp, run, method, gallery_images, figs / "cam_gallery.png")
    return out


def _concat(sim: pd.DataFrame, chance: pd.DataFrame) -> pd.DataFrame:
    """The similarity rows followed by the random-map control's (categorical columns kept)."""
    if chance.empty:
        return sim
    out = pd.concat([sim.astype({c: str for c in CATEGORICAL}),
                     chance.astype({c: str for c in CATEGORICAL})], ignore_index=True)
    return out.astype({c: "category" for c in CATEGORICAL})


def _read_optional(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def mark_cells(summary: pd.DataFrame, exp: ExperimentConfig, run: RunDir) -> pd.DataFrame:
    """Add ``unconverged`` / ``failed``: the cells (``variant/seed<k>``, comma-separated) of each
    row's comparison — the variant's cells and the baseline's; the noise floor: the baseline's —
    that did not converge or look like failed runs (``tables/performance.parquet``)."""
    perf = _read_optional(run.table("performance"))
    out = summary.copy()
    if perf is None or perf.empty or not {"converged", "failed"} <= set(perf.columns):
        out["unconverged"], out["failed"] = "", ""
        return out
    names = out.variant.astype(str)
    out["unconverged"] = [_flag(perf, exp, v, failed=False) for v in names]
    out["failed"] = [_flag(perf, exp, v, failed=True) for v in names]
    return out


def _flag(perf: pd.DataFrame, exp: ExperimentConfig, variant: str, failed: bool) -> str:
    """Comma-separated cells of ``variant``'s comparison that failed (or did not converge)."""
    names = [exp.baseline] + ([] if variant in ("noise_floor", exp.baseline) else [variant])
    sub = perf[perf.variant.isin(names)]
    sel = sub[sub.failed.astype(bool)] if failed else sub[~sub.converged.astype(bool)]
    return ",".join(f"{v}/seed{s}" for v, s in zip(sel.variant, sel.seed, strict=True))


def gallery_ids(n_total: int, n: int) -> np.ndarray:
    """A fixed, spread-out set of test image ids (the same for every run of the same size)."""
    return np.unique(np.linspace(0, n_total - 1, num=min(n, n_total)).round().astype(int))


def _gallery(exp: ExperimentConfig, run: RunDir, method: str, n: int, path: Path) -> Path:
    seed = exp.seeds[0]
    maps = {}
    for variant in exp.variants:
        t, _ = read_explanation(run.explanation(method, variant, seed))
        maps[variant] = t["maps"].float().numpy()
    ids = gallery_ids(len(next(iter(maps.values()))), n)
    data = load_dataset(exp.cells()[0][2])
    images = data.test.images[ids].numpy()
    labels = [data.class_names[int(c)] for c in data.test.labels[ids]]
    return plots.cam_gallery(images, {v: m[ids] for v, m in maps.items()}, labels, path)
