"""The label-mixing study: expected mixed-label entropy and matched smoothing (against quadrature,
enumeration and Monte Carlo), the crossing read from the variant configs, the seed-level effects
(against a loop over seeds and images), the report's answer, and the preset end to end."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from helpers import run_shrunk_preset, two_way_half_width
from scipy import integrate, stats

from auglens.analysis.inference import Settings
from auglens.analysis.label_study import (
    COLUMNS,
    crossing,
    decompose,
    label_study_table,
)
from auglens.augment.label_entropy import (
    binary_entropy,
    expected_binary_entropy,
    expected_mixed_entropy,
    matched_smoothing,
    realised_mixed_entropy,
    same_class_probability,
)
from auglens.augment.labels import smoothed_entropy
from auglens.cli import _preset_raw
from auglens.config import ExperimentConfig, load_config
from auglens.report.section_studies import label_study_answer

# ----------------------------------------------------------------------------- entropy


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 8.0])
def test_expected_binary_entropy_matches_quadrature(alpha):
    want, _ = integrate.quad(lambda x: binary_entropy(x) * stats.beta.pdf(x, alpha, alpha), 0, 1,
                             limit=200)
    assert expected_binary_entropy(alpha) == pytest.approx(want, rel=1e-7)


def test_known_answers():
    assert expected_binary_entropy(1.0) == pytest.approx(0.5, abs=1e-15)  # ∫ h(u) du = 1/2
    assert expected_binary_entropy(1e7) == pytest.approx(math.log(2), rel=1e-6)
    assert expected_binary_entropy(1e-7) == pytest.approx(0.0, abs=1e-6)
    lam = np.linspace(0, 1, 101)
    np.testing.assert_allclose(binary_entropy(lam), binary_entropy(1 - lam), atol=1e-15)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert smoothed_entropy(0.0, 10) == 0.0
    assert expected_mixed_entropy(1.0, 0.0, 10) == 0.0
    assert matched_smoothing(1.0, 0.0, 10, 64) == (0.0, 0.0)
    # p = 1, infinite batch, K = 2: half of the pairs differ in class -> 1/2 · 1/2
    assert expected_mixed_entropy(1.0, 1.0, 2) == pytest.approx(0.25)


@pytest.mark.parametrize(("k", "b"), [(2, 3), (3, 4), (4, 3)])
def test_same_class_probability_by_enumeration(k, b):
    """Every labelling of the batch × every permutation: P(label of partner = own label)."""
    hits = total = 0
    for labels in itertools.product(range(k), repeat=b):
        for perm in itertools.permutations(range(b)):
            for i in range(b):
                hits += labels[perm[i]] == labels[i]
                total += 1
    assert same_class_probability(k, b) == pytest.approx(hits / total, abs=1e-12)
    assert same_class_probability(k) == 1 / k


@pytest.mark.parametrize(("name", "p", "alpha"), [("mixup", 0.5, 1.0), ("mixup", 1.0, 0.4)])
def test_expected_entropy_matches_the_augmentation(name, p, alpha):
    """Monte Carlo with the registered augmentation itself (λ exactly Beta for mixup)."""
    got = realised_mixed_entropy([{"name": name, "p": p, "alpha": alpha}], 10, 8, 64, 300)
    want = expected_mixed_entropy(alpha, p, 10, 64)
    assert got == pytest.approx(want, rel=0.03)


def test_expected_entropy_matches_a_loop_simulation():
    rng = np.random.default_rng(0)
    k, b, p, alpha, total, n = 5, 16, 0.7, 0.8, 0.0, 0
    for _ in range(4000):
        labels = rng.integers(0, k, b)
        perm = rng.permutation(b)
        for i in range(b):
            lam = rng.beta(alpha, alpha)
            target = np.zeros(k)
            if rng.random() < p:
                target[labels[i]] += lam
                target[labels[perm[i]]] += 1 - lam
            else:
                target[labels[i]] = 1
            total += float(-sum(t * math.log(t) for t in target if t > 0))
            n += 1
    assert expected_mixed_entropy(alpha, p, k, b) == pytest.approx(total / n, rel=0.02)


@pytest.mark.parametrize("k", [2, 10, 100])
def test_matched_smoothing_has_the_same_entropy(k):
    h, eps = matched_smoothing(1.0, 0.5, k, 64)
    assert 0 < eps < 1
    assert smoothed_entropy(eps, k) == pytest.approx(h, abs=1e-12)
    # a direct transcription of the smoothed target's entropy
    t = np.full(k, eps / k)
    t[0] += 1 - eps
    assert float(-(t * np.log(t)).sum()) == pytest.approx(h, abs=1e-12)


def test_epsilon_depends_on_the_number_of_classes():
    e10, e100 = matched_smoothing(1.0, 0.5, 10)[1], matched_smoothing(1.0, 0.5, 100)[1]
    assert e10 != pytest.approx(e100, rel=1e-3)


# ----------------------------------------------------------------------------- the crossing


def _preset() -> ExperimentConfig:
    return load_config(ExperimentConfig, _preset_raw("label-mixing"))


def test_preset_loads_and_follows_the_crossing():
    exp = _preset()
    assert len(exp.cells()) == 33 and exp.seeds == [0, 1, 2] and not exp.dissect.enabled
    assert exp.explain.methods == ["gradcam", "iba"] and exp.explain.limit == {"iba": 32}
    arms = crossing(exp, 10)
    assert len(arms) == 11
    kinds = {(a.mixing, a.labels) for a in arms}
    assert kinds == {(m, lab) for m in ("mixup", "cutmix", "saliencymix")
                     for lab in ("hard", "mixed", "smoothed")} | {("none", "hard"),
                                                                  ("none", "smoothed")}
    # the smoothed arms have exactly the mixed arms' expected entropy (num_classes aware)
    mixed = {a.mixing: a.entropy for a in arms if a.labels == "mixed"}
    for a in arms:
        if a.labels == "smoothed":
            assert a.entropy == pytest.approx(next(iter(mixed.values())), abs=1e-12)
    for a in arms:
        if a.labels == "mixed":
            spec = exp.variants[a.variant][0]
            assert a.entropy == expected_mixed_entropy(spec.get("alpha", 1.0), spec["p"], 10,
                                                       exp.train.batch_size)
    assert all(a.entropy == 0 for a in arms if a.labels == "hard")


def test_study_b_label_mixing_pairs_leave_smoothed_variants_out():
    from auglens.analysis.run_b import label_mixing_pairs

    pairs = label_mixing_pairs(_preset())  # mixed vs hard only; smoothed arms: label_study
    assert sorted(pairs) == [("cutmix", "cutmix", "cutmix_hard"),
                             ("mixup", "mixup", "mixup_hard"),
                             ("saliencymix", "saliencymix", "saliencymix_hard")]


def test_crossing_is_read_from_the_configs_not_the_names():
    raw = _preset_raw("label-mixing")
    names = {v: f"v{i}" for i, v in enumerate(raw["variants"])}
    raw["variants"] = {names[v]: s for v, s in raw["variants"].items()}
    raw["baseline"] = names["baseline"]
    exp = load_config(ExperimentConfig, raw)
    arms = {(a.mixing, a.labels): a.variant for a in crossing(exp, 10)}
    assert arms[("cutmix", "smoothed")] == names["cutmix_smooth"]
    assert arms[("none", "hard")] == names["baseline"]


def test_not_a_crossing():
    quick = load_config(ExperimentConfig, _preset_raw("quick"))
    assert crossing(quick) == []  # cutmix and cutmix_hard, no smoothed arm
    raw = _preset_raw("label-mixing")
    raw["variants"]["cutmix_affine"] = [{"name": "affine"}, {"name": "cutmix"}]
    raw["variants"]["cutmix_both"] = [{"name": "cutmix"}, {"name": "label_smoothing"}]
    raw["variants"]["cutmix_p1"] = [{"name": "cutmix", "p": 1.0}]
    arms = crossing(load_config(ExperimentConfig, raw), 10)
    assert {a.variant for a in arms}.isdisjoint({"cutmix_affine", "cutmix_both"})
    # another setting of an augmentation is another mixing, named with its parameters
    assert {a.mixing for a in arms if a.variant == "cutmix_p1"} == {"cutmix(p=1.0)"}
    assert {a.mixing for a in arms if a.variant == "cutmix"} == {"cutmix(p=0.5)"}
    raw = _preset_raw("label-mixing")
    for v in ("mixup_smooth", "cutmix_smooth", "saliencymix_smooth"):
        del raw["variants"][v]
    assert crossing(load_config(ExperimentConfig, raw)) == []


# ----------------------------------------------------------------------------- effects


VARIANTS = ["baseline", "label_smooth", "cutmix", "cutmix_hard", "cutmix_smooth"]


def _exp(variants=VARIANTS) -> ExperimentConfig:
    raw = _preset_raw("label-mixing")
    raw["variants"] = {v: s for v, s in raw["variants"].items() if v in variants}
    return load_config(ExperimentConfig, raw)


def _synthetic(seed=0, n_seeds=3, n_images=7, shift=None):
    """Per-image values: variant effect + seed effect + image effect + noise; one NaN."""
    rng = np.random.default_rng(seed)
    shift = shift or {"cutmix": -0.2, "cutmix_hard": -0.2, "cutmix_smooth": -0.2}
    rows = []
    img = rng.normal(0, 0.3, n_images)
    for v in VARIANTS:
        for s in range(n_seeds):
            sd = rng.normal(0, 0.05)
            for metric in ("energy_pointing_game", "delta_ins"):
                for i in range(n_images):
                    rows.append({"image_id": i, "variant": v, "seed": s, "method": "gradcam",
                                 "metric": metric, "value": 0.5 + shift.get(v, 0.0) + sd + img[i]
                                 + rng.normal(0, 0.05)})
    df = pd.DataFrame(rows)
    df.loc[3, "value"] = np.nan
    return df


def _loop_interval(va, vb, n_boot, seed, level):
    """Two-way bootstrap of mean(a) − mean(b) by loops over the drawn seeds and images (the
    draws of `auglens.stats.draw` for n_boot ≤ 256), t interval with Satterthwaite df."""
    s_n, i_n = va.shape
    img = np.random.default_rng(seed).integers(0, i_n, size=(n_boot, i_n))
    sds = np.random.default_rng([seed, 1]).integers(0, s_n, size=(n_boot, s_n))

    def mean(v, seeds, images):
        vals = [v[s, i] for s in seeds for i in images if np.isfinite(v[s, i])]
        return sum(vals) / len(vals)

    def stat(seeds, images):
        return mean(va, seeds, images) - mean(vb, seeds, images)

    est = np.nanmean(va) - np.nanmean(vb)
    half = two_way_half_width(stat, sds, img, level)
    return est, est - half, est + half


def test_effects_match_a_loop_over_seeds_and_images():
    per_image = _synthetic()
    arms = crossing(_exp(), 10)
    settings = Settings(n_boot=200, level=0.9, margin=0.1, seed=3)
    table = label_study_table(per_image, arms, settings)
    assert list(table.columns) == COLUMNS
    want_effects = [("none", "softness", "label_smooth", "baseline"),
                    ("cutmix", "total", "cutmix", "baseline"),
                    ("cutmix", "image_mixing", "cutmix_hard", "baseline"),
                    ("cutmix", "labels", "cutmix", "cutmix_hard"),
                    ("cutmix", "softness", "cutmix_smooth", "cutmix_hard")]
    got_effects = list(dict.fromkeys(zip(table.mixing, table.effect, table.a, table.b,
                                         strict=True)))
    assert got_effects == want_effects
    assert len(table) == 2 * len(want_effects)
    for r in table.itertuples():
        g = per_image[per_image.metric == r.metric]
        wide = g.pivot_table(index=["variant", "seed"], columns="image_id", values="value",
                             dropna=False)
        va, vb = wide.loc[r.a].to_numpy(), wide.loc[r.b].to_numpy()
        est, lo, hi = _loop_interval(va, vb, 200, 3, 0.9)
        assert r.diff == pytest.approx(est, abs=1e-12)
        assert (r.diff_low, r.diff_high) == pytest.approx((lo, hi), abs=1e-9)
        assert r.mean_a == pytest.approx(np.nanmean(va)) and r.n_seeds == 3
        margin = 0.1 * abs(np.nanmean(vb))
        want = ("higher" if lo > 0 else "lower" if hi < 0 else
                "same" if -margin <= lo and hi <= margin else "undecided")
        assert r.verdict == want
        ent = {a.variant: a.entropy for a in arms}
        assert (r.entropy_a, r.entropy_b) == (ent[r.a], ent[r.b])


def test_random_control_and_other_metrics_left_out():
    per_image = _synthetic()
    extra = per_image.assign(method="random")
    other = per_image.assign(metric="box_fraction")
    table = label_study_table(pd.concat([per_image, extra, other]), crossing(_exp(), 10),
                              Settings(n_boot=100))
    assert set(table.method) == {"gradcam"}
    assert set(table.metric) == {"energy_pointing_game", "delta_ins"}


def _effect_rows(values):
    """A label-study table for one mixing from {effect: (diff, low, high)}."""
    return pd.DataFrame([{"mixing": "cutmix", "effect": e, "a": "x", "b": "y",
                          "method": "gradcam", "metric": "delta_ins", "diff": d,
                          "diff_low": lo, "diff_high": hi} for e, (d, lo, hi) in values.items()])


@pytest.mark.parametrize(("values", "change", "source"), [
    ({"total": (-.2, -.3, -.1), "image_mixing": (-.2, -.3, -.1), "labels": (0, -.1, .1)},
     "loss", "image mixing"),
    ({"total": (-.2, -.3, -.1), "image_mixing": (0, -.1, .1), "labels": (-.2, -.3, -.1)},
     "loss", "label mixing"),
    ({"total": (-.2, -.3, -.1), "image_mixing": (-.1, -.2, -.05), "labels": (-.1, -.2, -.01)},
     "loss", "both"),
    ({"total": (-.2, -.3, -.1), "image_mixing": (-.1, -.2, .05), "labels": (-.1, -.2, .01)},
     "loss", "neither alone"),
    ({"total": (.2, .1, .3), "image_mixing": (.2, .1, .3), "labels": (-.1, -.2, -.05)},
     "gain", "image mixing"),
    ({"total": (0, -.1, .1), "image_mixing": (-.2, -.3, -.1), "labels": (.2, .1, .3)},
     "none", "—"),
])
def test_decompose(values, change, source):
    d = decompose(_effect_rows(values), "gradcam", "delta_ins").iloc[0]
    assert (d.change, d.source) == (change, source)
    assert math.isnan(d.softness)


def test_report_answers_in_words_with_numbers():
    # image mixing lowers the scores, mixed labels add nothing
    table = label_study_table(_synthetic(1, n_seeds=4, n_images=30), crossing(_exp(), 10),
                              Settings(n_boot=300))
    text = label_study_answer(table, "gradcam")
    assert "Grad-CAM, EPG, ΔIns" in text
    assert "the loss comes from the image mixing, not from the soft labels" in text
    assert "in 2 of 2 (mixing, metric) cases" in text
    # nothing changes: 'no difference'
    flat = _synthetic(2, shift={"none": 0.0})
    table = label_study_table(flat, crossing(_exp(), 10), Settings(n_boot=300))
    lo_hi = table[table.effect == "total"][["diff_low", "diff_high"]]
    assert ((lo_hi.diff_low <= 0) & (lo_hi.diff_high >= 0)).all()
    text = label_study_answer(table, "gradcam")
    assert "no loss to attribute: no difference from the baseline within the CIs" in text
    assert "makes no difference in" in text


def test_docs_document_the_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    assert "`label_study.parquet`" in doc and "`mixing, effect, a, b, method, metric" in doc


# ----------------------------------------------------------------------------- end to end


def test_shrunk_preset_end_to_end(tmp_path):
    """`auglens run` on the preset cut down (5 variants, 2 seeds, tiny data): the study's table,
    equal to a recomputation from the run's own per-image table, and the report section."""
    raw, out = run_shrunk_preset(
        "label-mixing", VARIANTS, tmp_path, explain={"methods": ["gradcam"]},
        evaluate={"n_images": 4, "n_steps": 3, "n_random": 1, "road": False})
    table = pd.read_parquet(out / "tables" / "label_study.parquet")
    exp = load_config(ExperimentConfig, raw)
    want = label_study_table(pd.read_parquet(out / "tables" / "interpretability.parquet"),
                             crossing(exp, 10), Settings(n_boot=100))
    pd.testing.assert_frame_equal(table, want)
    assert set(table.effect) == {"total", "image_mixing", "labels", "softness"}
    md = (out / "report" / "summary.md").read_text()
    assert "## Label mixing vs image mixing" in md and "Grad-CAM, EPG, EHR, ΔDel, ΔIns:" in md
    assert "## Composition of augmentations" not in md
