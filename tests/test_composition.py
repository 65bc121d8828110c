"""Composition of augmentations: pairs read from the variant configs, cluster outcomes, the
pair-vs-part map similarity against the noise floor (against a loop over seeds and images and
scipy), the report paragraph, and the preset end to end."""

import math

import numpy as np
import pandas as pd
import pytest
from helpers import run_shrunk_preset, two_way_half_width
from scipy import stats

from auglens.analysis.composition import (
    COLUMNS,
    cluster_outcome,
    composition_pairs,
    composition_table,
    mean_correlation,
    pair_similarity,
)
from auglens.analysis.inference import Settings
from auglens.cli import _preset_raw
from auglens.config import ExperimentConfig, load_config
from auglens.explain.store import read_explanation
from auglens.rundir import RunDir


def test_preset_loads_and_has_every_pair():
    exp = load_config(ExperimentConfig, _preset_raw("composition"))
    assert len(exp.variants) <= 8 and exp.seeds == [0, 1, 2]
    assert exp.explain.methods == ["gradcam"]
    assert not exp.evaluate.enabled and not exp.dissect.enabled
    assert composition_pairs(exp) == [
        ("affine", "color_jitter", "affine+color_jitter"),
        ("affine", "gaussian_blur", "affine+gaussian_blur"),
        ("color_jitter", "gaussian_blur", "color_jitter+gaussian_blur")]


def test_pairs_from_configs_not_names():
    raw = {"variants": {"baseline": [], "x": [{"name": "affine"}],
                        "y": [{"name": "gaussian_blur", "p": 0.5}],
                        "z": [{"name": "gaussian_blur", "p": 0.5}, {"name": "affine"}],
                        "blur_other": [{"name": "gaussian_blur"}, {"name": "affine"}],
                        "triple": [{"name": "affine"}, {"name": "gaussian_blur", "p": 0.5},
                                   {"name": "affine"}],
                        "ls": [{"name": "label_smoothing"}],
                        "mix_ls": [{"name": "affine"}, {"name": "label_smoothing"}],
                        "twice": [{"name": "affine"}, {"name": "affine"}]}}
    exp = load_config(ExperimentConfig, raw)
    # B then A is a pair too (order as in the list); other parameters, triples, label-only
    # parts and an augmentation with itself are not
    assert composition_pairs(exp) == [("y", "x", "z")]
    assert composition_pairs(load_config(ExperimentConfig, _preset_raw("label-mixing"))) == []
    assert composition_pairs(load_config(ExperimentConfig, _preset_raw("quick"))) == []


@pytest.mark.parametrize(("a", "b", "ab", "want"), [
    (1, 1, 1, "stays"), (1, 2, 1, "merges with A"), (1, 2, 2, "merges with B"),
    (1, 2, 3, "shifts"), (1, 1, 2, "shifts")])
def test_cluster_outcome(a, b, ab, want):
    assert cluster_outcome(a, b, ab) == want


# ----------------------------------------------------------------------------- synthetic tables

METRICS = ("spearman", "overlap@10", "ssim")
PAIRS = [("a1", "b1", "a1+b1")]


def _tables(seed=0, n_seeds=3, n_images=6):
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 0.1, n_images)
    floor, pair = [], []
    for m in METRICS:
        for s in range(n_seeds):
            for t in range(s + 1, n_seeds):
                for i in range(n_images):
                    floor.append({"image_id": i, "variant": "baseline", "seed": s,
                                  "reference": f"baseline_seed_{t}", "target": "predicted",
                                  "metric": m, "value": 0.6 + img[i] + rng.normal(0, 0.05)})
            for k, comp in enumerate(("combined_vs_a", "combined_vs_b", "a_vs_b")):
                sd = rng.normal(0, 0.03)
                for i in range(n_images):
                    pair.append({"image_id": i, "variant": f"0|{comp}", "seed": s,
                                 "reference": "baseline", "target": "predicted", "metric": m,
                                 "value": 0.8 - 0.2 * k + sd + img[i] + rng.normal(0, 0.05)})
    floor = pd.DataFrame(floor)
    noise = floor.assign(target="ground_truth", value=99.0)  # must be ignored
    other = floor.assign(reference="baseline", variant="a1", value=-99.0)
    sim = pd.concat([floor, noise, other], ignore_index=True)
    pair = pd.DataFrame(pair)
    pair.loc[5, "value"] = np.nan
    corr = pd.DataFrame([{"metric": m, "method": meth, "variant_a": x, "variant_b": y,
                          "r": 0.1 * (j + 1) + (0.3 if m == "ssim" else 0) + (meth == "spearman")}
                         for m in ("mad", "ssim") for meth in ("pearson", "spearman")
                         for j, (x, y) in enumerate([("a1+b1", "a1"), ("a1+b1", "b1"),
                                                     ("a1", "b1")])])
    clusters = pd.DataFrame({"variant": ["a1", "b1", "a1+b1"], "cluster": [1, 2, 1]})
    return sim, floor, pair, corr, clusters


def _loop(v, floor_rows, n_boot, seed, level, what):
    """Two-way bootstrap by loops: ``what`` 'value' (mean of v) or 'diff' (floor − value);
    v (S, I), floor_rows {(s, t): (I,)}; draws as `auglens.stats.draw` (n_boot ≤ 256)."""
    s_n, i_n = v.shape
    img = np.random.default_rng(seed).integers(0, i_n, size=(n_boot, i_n))
    sds = np.random.default_rng([seed, 1]).integers(0, s_n, size=(n_boot, s_n))

    def mean(vals):  # NaN when a resample keeps no value (e.g. one seed drawn thrice: no pair)
        vals = [x for x in vals if np.isfinite(x)]
        return sum(vals) / len(vals) if vals else math.nan

    def stat(seeds, images):
        val = mean([v[s, i] for s in seeds for i in images])
        if what == "value":
            return val
        fl = mean([floor_rows[(s, t)][i] for s in seeds for t in seeds if (s, t) in floor_rows
                   for i in images])
        return fl - val

    full = stat(range(s_n), range(i_n))
    half = two_way_half_width(stat, sds, img, level)
    return full, full - half, full + half


def test_table_matches_a_loop_over_seeds_and_images():
    sim, floor, pair, corr, clusters = _tables()
    settings = Settings(n_boot=150, level=0.95, margin=0.1, seed=2)
    table = composition_table(PAIRS, sim, pair, corr, clusters, settings)
    assert list(table.columns) == COLUMNS
    assert list(zip(table.comparison, table.metric, strict=True)) == [
        (c, m) for c in ("combined_vs_a", "combined_vs_b", "a_vs_b") for m in METRICS]
    assert set(table.outcome) == {"merges with A"}
    r0 = table.iloc[0]
    assert (r0.cluster_a, r0.cluster_b, r0.cluster_combined) == (1, 2, 1)
    assert table.r_combined_a.iloc[0] == pytest.approx((0.1 + 0.4) / 2)  # pearson, over metrics
    assert table.r_combined_b.iloc[0] == pytest.approx((0.2 + 0.5) / 2)
    assert table.r_a_b.iloc[0] == pytest.approx((0.3 + 0.6) / 2)
    for r in table.itertuples():
        p = pair[(pair.variant == f"0|{r.comparison}") & (pair.metric == r.metric)]
        v = p.pivot(index="seed", columns="image_id", values="value").to_numpy()
        f = floor[floor.metric == r.metric]
        rows = {(s, int(ref.rsplit("_", 1)[1])): g.sort_values("image_id").value.to_numpy()
                for (s, ref), g in f.groupby(["seed", "reference"])}
        mean, lo, hi = _loop(v, rows, 150, 2, 0.95, "value")
        assert (r.mean, r.ci_low, r.ci_high) == pytest.approx((mean, lo, hi), abs=1e-9)
        d, dlo, dhi = _loop(v, rows, 150, 2, 0.95, "diff")
        assert (r.diff, r.diff_low, r.diff_high) == pytest.approx((d, dlo, dhi), abs=1e-9)
        assert r.floor == pytest.approx(np.mean(np.concatenate(list(rows.values()))))
        margin = 0.1 * abs(r.floor)
        want = ("beyond" if dlo > 0 else "closer" if dhi < 0 else
                "within" if -margin <= dlo and dhi <= margin else "undecided")
        assert r.verdict == want and r.n_seeds == 3 and not r.provisional


def test_mean_correlation_skips_nan_and_missing():
    corr = pd.DataFrame({"metric": ["m1", "m2", "m3"], "method": "pearson", "variant_a": "x",
                         "variant_b": "y", "r": [0.2, np.nan, 0.4]})
    assert mean_correlation(corr, "x", "y") == pytest.approx(0.3)
    assert math.isnan(mean_correlation(corr, "y", "x"))


def test_report_paragraph():
    from auglens.report.section_studies import composition_sentence

    sim, _, pair, corr, clusters = _tables()
    table = composition_table(PAIRS, sim, pair, corr, clusters, Settings(n_boot=100))
    text = composition_sentence(table, "spearman")
    r = table[(table.comparison == "combined_vs_a") & (table.metric == "spearman")].iloc[0]
    assert text.startswith("a1+b1 merges with a1's cluster (mean Pearson r across images with "
                           "a1 0.25, with b1 0.35; a1 with b1 0.45).")
    assert f"Its maps vs a1's: Spearman {r['mean']:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" in text


def test_docs_document_the_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    assert "`composition.parquet`" in doc and "`a, b, combined, cluster_a" in doc


# ----------------------------------------------------------------------------- end to end


def test_shrunk_preset_end_to_end(tmp_path):
    """`auglens run` on the preset cut down to one pair and two seeds on tiny data."""
    keep = ("baseline", "affine", "gaussian_blur", "affine+gaussian_blur")
    raw, out = run_shrunk_preset("composition", keep, tmp_path)
    exp = load_config(ExperimentConfig, raw)
    table = pd.read_parquet(out / "tables" / "composition.parquet")
    assert len(table) == 3 * 3 and set(table.combined) == {"affine+gaussian_blur"}
    pairs = composition_pairs(exp)
    sim = pair_similarity(exp, RunDir(out), pairs)
    # Spearman of the stored maps, by scipy, for every image of one seed and comparison
    ab = read_explanation(RunDir(out).explanation("gradcam", "affine+gaussian_blur", 1))[0]
    a = read_explanation(RunDir(out).explanation("gradcam", "affine", 1))[0]
    got = sim[(sim.variant == "0|combined_vs_a") & (sim.seed == 1) & (sim.metric == "spearman")]
    assert len(got) == 16 and np.isfinite(got.value).sum() >= 8
    for i, value in zip(got.image_id, got.value, strict=True):
        x, y = ab["maps"][i].float().numpy().ravel(), a["maps"][i].float().numpy().ravel()
        want = stats.spearmanr(x, y).statistic if np.ptp(x) and np.ptp(y) else np.nan
        np.testing.assert_allclose(value, want, atol=1e-6)
    recomputed = composition_table(
        pairs, pd.read_parquet(out / "tables" / "similarity.parquet"), sim,
        pd.read_parquet(out / "tables" / "correlation.parquet"),
        pd.read_parquet(out / "tables" / "clusters.parquet"), Settings(n_boot=100))
    pd.testing.assert_frame_equal(table, recomputed)
    md = (out / "report" / "summary.md").read_text()
    assert "## Composition of augmentations" in md and "## Label mixing vs image mixing" not in md
    assert "affine+gaussian_blur " in md and "(Provisional: fewer than 3 seeds.)" in md
