"""The chance levels and sanity checks carried through a run (SPEC §11): Study A's
``random_map`` rows, Study B's ``random`` method, the sanity stage — each checked against a
direct computation (loops, scipy) or a known answer."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from auglens.analysis.controls import RANDOM_METHOD, RANDOM_VARIANT
from auglens.analysis.sanity import cascading_randomisation, random_logit_test, random_maps
from auglens.cli import main
from auglens.config import ExperimentConfig, load_config
from auglens.data import load_dataset
from auglens.explain.store import read_explanation
from auglens.models import load_model
from auglens.pipeline import make_plan, run_subset
from auglens.report import build_report
from auglens.rundir import RunDir

TINY = {
    "name": "controls",
    "data": {"name": "shapes", "n_train": 192, "n_val": 32, "n_test": 48},
    "model": {"name": "small_resnet", "width": 4},
    "train": {"epochs": 2, "batch_size": 64, "threads": 1},
    "seeds": [0, 1],
    "variants": {"baseline": [], "flip": [{"name": "hflip"}]},
    "explain": {"methods": ["gradcam"]},
    "evaluate": {"n_images": 8, "n_steps": 4, "n_random": 2},
    "analysis": {"n_boot": 200, "matched": False},
    "dissect": {"enabled": False},
    "sanity": {"n_images": 12, "seed": 3},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("controls")
    exp = load_config(ExperimentConfig, TINY)
    (out / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json")))
    res = run_subset(exp, out, ("train", "explain", "compare", "evaluate", "sanity", "report"))
    return exp, RunDir(out), res


def test_study_a_random_map_rows_equal_scipy_on_the_seeded_noise(run):
    exp, rd, _ = run
    sim = pd.read_parquet(rd.table("similarity", "gradcam"))
    rnd = sim[(sim.variant == RANDOM_VARIANT) & (sim.metric == "spearman")
              & (sim.target == "predicted")]
    assert sorted(rnd.seed.unique()) == [0, 1] and "class_kld" not in set(
        sim[sim.variant == RANDOM_VARIANT].metric)
    for seed in (0, 1):
        base = read_explanation(rd.explanation("gradcam", "baseline", seed))[0]
        noise = random_maps(base["image_ids"], tuple(base["maps"].shape[1:]), exp.sanity.seed)
        got = rnd[rnd.seed == seed].sort_values("image_id").value.to_numpy()
        want = [spearmanr(noise[i].flatten().numpy(),
                          base["maps"][i].float().flatten().numpy()).statistic
                for i in range(len(noise))]
        np.testing.assert_allclose(got, want, atol=1e-6)
    summary = pd.read_parquet(rd.table("summary_a", "gradcam"))
    row = summary[(summary.variant == RANDOM_VARIANT) & (summary.metric == "spearman")
                  & (summary.target == "predicted")].iloc[0]
    assert abs(row["mean"]) < 0.08  # chance: E ρ = 0 (48 images: sd of the mean ≈ 0.02)
    assert row.verdict in ("beyond", "undecided")  # never "within" the seed noise floor
    # kept out of what describes the augmentations
    for name in ("similarity_seed_mean", "correlation", "clusters"):
        t = pd.read_parquet(rd.table(name, "gradcam"))
        cols = [c for c in ("variant", "variant_a", "variant_b") if c in t]
        assert not any((t[c] == RANDOM_VARIANT).any() for c in cols), name


def test_study_b_random_method_is_scored_like_a_model_on_the_same_images(run):
    exp, rd, _ = run
    interp = pd.read_parquet(rd.table("interpretability"))
    rnd = interp[interp.method == RANDOM_METHOD]
    assert set(rnd.variant) == {"baseline"} and sorted(rnd.seed.unique()) == [0, 1]
    data = load_dataset(exp.cells()[0][2])
    for seed in (0, 1):
        t = read_explanation(rd.explanation(RANDOM_METHOD, "baseline", seed))[0]
        noise = random_maps(t["image_ids"], tuple(t["maps"].shape[1:]), exp.sanity.seed)
        torch.testing.assert_close(t["maps"].float(), noise.half().float())
        src = read_explanation(rd.explanation("gradcam", "baseline", seed))[0]
        assert torch.equal(t["logits"], src["logits"])
        # EPG by a loop on the bilinearly upsampled noise
        up = torch.nn.functional.interpolate(t["maps"].float()[:, None], size=(32, 32),
                                             mode="bilinear", align_corners=False)[:, 0].double()
        epg = rnd[(rnd.seed == seed) & (rnd.metric == "energy_pointing_game")]
        grad = interp[(interp.method == "gradcam") & (interp.variant == "baseline")
                      & (interp.seed == seed) & (interp.metric == "energy_pointing_game")]
        assert set(epg.image_id) == set(grad.image_id)  # the models' image set
        for r in epg.itertuples():
            m, mask = up[int(r.image_id)], data.test.masks[int(r.image_id)]
            want = float((m * mask).sum() / m.sum())
            assert r.value == pytest.approx(want, rel=1e-9)
    # known answer: noise spreads its energy evenly, so EPG ≈ the object's share of the image
    masks = data.test.masks.double().mean((1, 2))
    epg = rnd[rnd.metric == "energy_pointing_game"]
    assert epg.value.mean() == pytest.approx(float(masks[epg.image_id.to_numpy()].mean()),
                                             abs=0.03)
    summary = pd.read_parquet(rd.table("summary_b"))
    r = summary[summary.method == RANDOM_METHOD]
    assert set(r.variant) == {"baseline"} and {"delta_del", "energy_pointing_game"} <= set(
        r.metric)
    lm = summary[(summary.method == "gradcam") & (summary.metric == "delta_ins")]
    assert len(lm) == 2  # the models' rows are unchanged by the control


def test_sanity_stage_equals_the_direct_checks(run):
    exp, rd, _ = run
    cfg = exp.cells()[0][2]
    data = load_dataset(cfg)
    model = load_model(cfg.model, data.num_classes, rd.weights("baseline", 0))
    imgs = data.test.images[:12]
    ids = torch.arange(12)
    direct = pd.concat([
        cascading_randomisation(model, imgs, data.normalize, "gradcam", cfg.model.target_layer,
                                image_ids=ids, seed=3),
        random_logit_test(model, imgs, data.normalize, "gradcam", cfg.model.target_layer,
                          image_ids=ids, seed=3)], ignore_index=True)
    got = pd.read_parquet(rd.sanity("gradcam", "baseline", 0))
    assert list(got.columns[:3]) == ["method", "variant", "seed"]
    np.testing.assert_allclose(got.value.to_numpy(), direct.value.to_numpy(), equal_nan=True)
    verdicts = pd.read_parquet(rd.table("sanity_verdicts"))
    assert len(verdicts) == 2 and set(verdicts.method) == {"gradcam"}
    v0 = verdicts[verdicts.seed == 0].iloc[0]
    cas = got[(got.test == "cascade") & (got.step == 1) & (got.metric == "spearman")]
    assert v0.similarity == pytest.approx(cas.value.mean(), nan_ok=True)
    rl = got[(got.test == "random_logit") & (got.metric == "spearman")].value.mean()
    assert v0.random_logit == pytest.approx(rl)
    assert (rd.plot("sanity_cascade")).stat().st_size > 1000


def test_report_shows_the_checks_and_the_plan_lists_the_stage(run, capsys):
    exp, rd, res = run
    html = (rd.root / "report" / "index.html").read_text()
    assert 'id="sanity"' in html and "random_map" in html and "Chance level" in html
    assert build_report(rd.root)["sections"]["sanity"] == "rendered"
    plan = make_plan(exp, rd.root)
    assert plan.todo["sanity"] == [] and len(plan.cached["sanity"]) == 3  # 2 cells + verdicts
    assert len(plan.cached["evaluate"]) == 4 * 1 + 2 + 1  # cells, random controls, tables
    assert main(["sanity", str(rd.root)]) == 0
    assert "gradcam" in capsys.readouterr().out
