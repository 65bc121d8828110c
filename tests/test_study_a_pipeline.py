"""End to end on a tiny grid: train → explain → compare, checked against direct computation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from auglens.analysis.run_a import analyse_study_a
from auglens.cli import main
from auglens.config import ExperimentConfig, load_config
from auglens.explain.store import read_explanation
from auglens.pipeline import run_subset
from auglens.rundir import RunDir

TINY = {
    "name": "tiny",
    "data": {"name": "shapes", "n_train": 192, "n_val": 32, "n_test": 48},
    "model": {"name": "small_resnet", "width": 8},
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "seeds": [0, 1],
    "variants": {
        "baseline": [],
        "affine": [{"name": "affine"}],
        "blur": [{"name": "gaussian_blur"}],
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    exp = load_config(ExperimentConfig, TINY)
    run_subset(exp, out, ("train", "explain"))
    (out / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json")))
    paths = analyse_study_a(exp, out, n_boot=200)
    return exp, out, paths


def test_every_table_and_plot_is_written(run):
    exp, out, paths = run
    for name in (
        "similarity",
        "similarity_seed_mean",
        "summary_a",
        "correlation",
        "pair_frequency",
        "clusters",
        "target_ablation",
    ):
        assert (out / "tables" / f"{name}.parquet").is_file(), name
    for name in (
        "metric_boxplots",
        "overlap_vs_y",
        "correlation_heatmap",
        "correlation_per_metric",
        "cam_gallery",
    ):
        p = out / "plots" / f"{name}.png"
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    sim = pd.read_parquet(paths["similarity"])
    assert list(sim.columns) == [
        "image_id",
        "variant",
        "seed",
        "reference",
        "target",
        "metric",
        "value",
    ]
    assert set(sim.reference) == {"baseline", "baseline_seed_1", "matched_baseline"}
    # 2 augmentations × 2 seeds (vs the final and the accuracy-matched baseline) + 1 noise-floor
    # pair + the random-map control vs each of the 2 baseline seeds, × 2 targets, × 48 images
    assert (sim.metric == "pearson").sum() == (2 * 2 * 2 + 1 + 2) * 2 * 48
    rand = sim[sim.variant == "random_map"]
    assert set(rand.reference) == {"baseline"} and set(rand.seed) == {0, 1}
    assert "class_kld" not in set(rand.metric)  # noise has no class: no class-KLD chance level


def test_similarity_values_equal_direct_computation(run):
    exp, out, paths = run
    sim = pd.read_parquet(paths["similarity"])
    a = read_explanation(RunDir(out).explanation("gradcam", "affine", 1))[0]
    b = read_explanation(RunDir(out).explanation("gradcam", "baseline", 1))[0]
    rows = sim[(sim.variant == "affine") & (sim.seed == 1) & (sim.target == "predicted")
               & (sim.reference == "baseline")]
    for i in (0, 7, 31):
        x, y = a["maps"][i].double().flatten().numpy(), b["maps"][i].double().flatten().numpy()
        got = rows[(rows.image_id == i)].set_index("metric")["value"]
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            assert got["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
            assert got["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)
        pb = torch.softmax(b["logits"][i].double(), 0).numpy()
        pa = torch.softmax(a["logits"][i].double(), 0).numpy()
        assert got["class_kld"] == pytest.approx(stats.entropy(pb, pa), abs=1e-9)
    # the seed-mean table averages the two seeds
    per = pd.read_parquet(paths["similarity_seed_mean"])
    both = sim[
        (sim.variant == "affine")
        & (sim.reference == "baseline")
        & (sim.target == "predicted")
        & (sim.metric == "mad")
        & (sim.image_id == 5)
    ]["value"].mean()
    got = per[
        (per.variant == "affine")
        & (per.target == "predicted")
        & (per.metric == "mad")
        & (per.image_id == 5)
    ]["value"].item()
    assert got == pytest.approx(both)


def test_noise_floor_and_summary(run):
    exp, out, paths = run
    summary = pd.read_parquet(paths["summary_a"])
    assert {"noise_floor", "affine", "blur"} <= set(summary.variant)
    row = summary[
        (summary.variant == "affine")
        & (summary.metric == "overlap@10")
        & (summary.target == "predicted")
    ].iloc[0]
    assert row.ci_low <= row["mean"] <= row.ci_high
    assert row.n_images == 48
    corr = pd.read_parquet(paths["correlation"])
    assert set(corr.method) == {"pearson", "spearman"}
    ab = corr[
        (corr.metric == "mad")
        & (corr.method == "pearson")
        & (corr.variant_a == "affine")
        & (corr.variant_b == "blur")
    ]["r"].item()
    ba = corr[
        (corr.metric == "mad")
        & (corr.method == "pearson")
        & (corr.variant_a == "blur")
        & (corr.variant_b == "affine")
    ]["r"].item()
    assert ab == pytest.approx(ba)


def test_explain_is_cached_and_cli_compare_runs(run, capsys):
    exp, out, _ = run
    p = RunDir(out).explanation("gradcam", "baseline", 0)
    before = p.stat().st_mtime_ns
    run_subset(exp, out, ("explain",))
    assert p.stat().st_mtime_ns == before
    assert main(["compare", str(out)]) == 0
    assert "wrote tables" in capsys.readouterr().out


def test_cli_on_non_run_dir(tmp_path, capsys):
    assert main(["explain", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
