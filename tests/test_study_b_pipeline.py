"""Study B end to end on a tiny grid: explain (Grad-CAM + IBA with a cached estimator) → evaluate
(alignment, faithfulness) → dissect → tables, checked against direct computation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from auglens.analysis.run_b import (
    analyse_dissection,
    analyse_evaluation,
    select_alignment_images,
    variant_family,
)
from auglens.cli import main
from auglens.config import ExperimentConfig, load_config
from auglens.data import load_dataset
from auglens.explain.iba import Estimator, fit_estimator
from auglens.explain.store import explain_cell, read_explanation
from auglens.metrics import deletion_insertion_curves, dissect, faithfulness_scores
from auglens.metrics.store import dissect_cell, evaluate_cell
from auglens.models import load_model
from auglens.pipeline import run_subset
from auglens.rundir import RunDir

TINY = {
    "name": "tinyb",
    "data": {"name": "shapes", "n_train": 192, "n_val": 32, "n_test": 40},
    "model": {"name": "small_resnet", "width": 4},
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "seeds": [0, 1],
    "variants": {
        "baseline": [],
        "cutmix": [{"name": "cutmix"}],
        "cutmix_hard": [{"name": "cutmix", "label_mixing": False}],
    },
    "explain": {"methods": ["gradcam", "iba"], "limit": {"iba": 6}, "estimator_images": 64,
                "params": {"iba": {"steps": 3, "batch_noise": 2}}},
    "evaluate": {"n_images": 8, "n_steps": 4, "n_random": 2},
    "analysis": {"n_boot": 200},
    "dissect": {"n_images": 40},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runb")
    exp = load_config(ExperimentConfig, TINY)
    run_subset(exp, out, ("train", "explain"))
    (out / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json")))
    for variant, seed, cfg in exp.cells():
        for method in exp.explain.methods:
            evaluate_cell(cfg, out, variant, seed, method, exp.evaluate)
        dissect_cell(cfg, out, variant, seed, exp.dissect)
    paths = analyse_evaluation(exp, out) | analyse_dissection(exp, out)
    return exp, out, paths


def _upsampled(maps: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(maps.float()[:, None], size=(size, size),
                                           mode="bilinear", align_corners=False)[:, 0]


def test_tables_and_plots_exist_with_documented_columns(run):
    exp, out, paths = run
    t = out / "tables"
    cols = {
        "interpretability": ["image_id", "variant", "seed", "method", "metric", "value"],
        "summary_b": ["method", "variant", "reference", "metric", "mean", "ci_low", "ci_high",
                      "se", "df", "pct_low", "pct_high", "n_seeds", "n_images", "n_nan",
                      "family", "label_mixing", "diff", "diff_low", "diff_high", "margin",
                      "verdict", "provisional", "seeds_needed", "unconverged", "failed"],
        "alignment_counts": ["variant", "seed", "method", "n_images", "n_kept", "n_used"],
        "curves": ["variant", "seed", "method", "kind", "order", "step", "fraction", "score",
                   "sem", "n_images"],
        "dissection": ["variant", "seed", "layer", "unit", "concept", "category", "iou",
                       "detector", "threshold"],
        "dissection_summary": ["variant", "seed", "layer", "category", "n_detectors",
                               "unique_concepts", "units"],
    }
    for name, c in cols.items():
        assert list(pd.read_parquet(t / f"{name}.parquet").columns) == c, name
    for name in ("alignment", "deletion_insertion_curves", "faithfulness_scores",
                 "label_mixing", "dissection_detectors"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000, name
    interp = pd.read_parquet(t / "interpretability.parquet")
    assert set(interp.method) == {"gradcam", "iba"}
    # IBA explained only its 6-image limit; faithfulness on the first 8 (Grad-CAM) / 6 (IBA)
    n = interp.groupby(["method", "metric"]).image_id.nunique().unstack(0)
    assert n.loc["delta_del", "gradcam"] == 8 and n.loc["delta_del", "iba"] == 6
    assert n.loc["energy_pointing_game", "gradcam"] == 40


def test_alignment_equals_a_loop_on_the_upsampled_maps(run):
    exp, out, _ = run
    data = load_dataset(exp.cells()[0][2])
    t, _ = read_explanation(RunDir(out).explanation("gradcam", "cutmix", 1))
    maps = _upsampled(t["maps"], 32).double()
    ev = pd.read_parquet(RunDir(out).evaluation("gradcam", "cutmix", 1))
    epg = ev[ev.metric == "energy_pointing_game"].set_index("image_id").value
    for i in range(len(maps)):
        m, r = maps[i], data.test.masks[i]
        total = sum(float(m[y, x]) for y in range(32) for x in range(32))
        inside = sum(float(m[y, x]) for y in range(32) for x in range(32) if r[y, x])
        expect = inside / total if total > 0 else np.nan
        assert epg[i] == pytest.approx(expect, rel=1e-9, abs=1e-12, nan_ok=True)
    prob = ev[ev.metric == "target_prob"].set_index("image_id").value
    p = torch.softmax(t["logits"].double(), 1).gather(1, t["targets"][:, None])[:, 0]
    np.testing.assert_allclose(prob.to_numpy(), p.numpy(), rtol=1e-12)


def test_faithfulness_equals_direct_curves(run):
    exp, out, _ = run
    cfg = exp.cells()[1][2]
    data = load_dataset(cfg)
    t, _ = read_explanation(RunDir(out).explanation("gradcam", "baseline", 1))
    model = load_model(cfg.model, data.num_classes, RunDir(out).weights("baseline", 1))
    x = data.normalize(data.test.images[:8].float() / 255)
    curves = deletion_insertion_curves(model, x, _upsampled(t["maps"][:8], 32), t["targets"][:8],
                                       n_steps=4, n_random=2, seed=0,
                                       image_ids=torch.arange(8))
    direct = faithfulness_scores(curves)
    ev = pd.read_parquet(RunDir(out).evaluation("gradcam", "baseline", 1))
    for name in ("delta_del", "delta_ins", "auc_deletion_morf", "lerf_morf_ins"):
        got = ev[ev.metric == name].sort_values("image_id").value.to_numpy()
        np.testing.assert_allclose(got, direct[name].numpy(), atol=1e-6, err_msg=name)


def test_summary_is_the_seed_average_then_the_mean(run):
    _, out, _ = run
    interp = pd.read_parquet(out / "tables" / "interpretability.parquet")
    summary = pd.read_parquet(out / "tables" / "summary_b.parquet")
    sel = interp[(interp.method == "iba") & (interp.variant == "cutmix")
                 & (interp.metric == "delta_ins")]
    per_image = sel.groupby("image_id").value.mean()
    row = summary[(summary.method == "iba") & (summary.variant == "cutmix")
                  & (summary.metric == "delta_ins")].iloc[0]
    assert row["mean"] == pytest.approx(per_image.mean(), rel=1e-12)
    assert row.n_images == 6 and row.ci_low <= row["mean"] <= row.ci_high
    fam = summary.drop_duplicates("variant").set_index("variant")
    assert fam.loc["cutmix", "family"] == "cutmix" and fam.loc["cutmix", "label_mixing"]
    assert not fam.loc["cutmix_hard", "label_mixing"]
    assert pd.isna(fam.loc["baseline", "label_mixing"])


def test_variant_family():
    assert variant_family([{"name": "affine"}, {"name": "mixup"}]) == ("mixup", True)
    assert variant_family([{"name": "cutout"}]) == ("cutout", False)
    assert variant_family([{"name": "saliencymix", "label_mixing": False}]) == (
        "saliencymix", False)
    assert variant_family([{"name": "affine"}]) == (None, None)


def test_alignment_filters_and_common_image_set_by_hand():
    exp = load_config(ExperimentConfig, {"evaluate": {"min_probability": 0.5}})
    rows = []
    probs = {("a", 0): [0.9, 0.4, 0.7], ("b", 0): [0.6, 0.8, 0.3]}
    for (v, s), ps in probs.items():
        for i, p in enumerate(ps):
            for metric, value in (("target_prob", p), ("box_fraction", 0.1),
                                  ("energy_pointing_game", 10 * i + (v == "b"))):
                rows.append({"image_id": i, "variant": v, "seed": s, "method": "gradcam",
                             "metric": metric, "value": value})
    kept, counts = select_alignment_images(pd.DataFrame(rows), exp)
    # a keeps {0, 2}, b keeps {0, 1}: every model is scored on the intersection {0}
    assert counts.set_index("variant").n_kept.to_dict() == {"a": 2, "b": 2}
    assert counts.n_used.tolist() == [1, 1]
    assert sorted(kept.value.tolist()) == [0.0, 1.0]
    exp2 = load_config(ExperimentConfig, {"evaluate": {"min_probability": 0.5,
                                                       "common_images": False}})
    kept2, _ = select_alignment_images(pd.DataFrame(rows), exp2)
    assert sorted(kept2.value.tolist()) == [0.0, 1.0, 11.0, 20.0]


def test_dissection_table_equals_direct_dissect(run):
    exp, out, _ = run
    cfg = exp.cells()[2][2]
    data = load_dataset(cfg)
    model = load_model(cfg.model, data.num_classes, RunDir(out).weights("cutmix_hard", 0))
    res = dissect(model, data.test.images, data.test.concepts, data.normalize,
                  data.concept_names, data.concept_categories)
    table = pd.read_parquet(out / "tables" / "dissection.parquet")
    got = table[(table.variant == "cutmix_hard") & (table.seed == 0)].reset_index(drop=True)
    direct = res.table()
    np.testing.assert_allclose(got.iou.to_numpy(), direct.iou.to_numpy(), rtol=1e-12)
    assert got.concept.tolist() == direct.concept.tolist()
    summ = pd.read_parquet(out / "tables" / "dissection_summary.parquet")
    s = summ[(summ.variant == "cutmix_hard") & (summ.seed == 0)].set_index("category")
    for cat, n in res.unique_concepts_per_category().items():
        assert s.loc[cat, "unique_concepts"] == n


def test_iba_estimator_is_cached_per_cell_and_refit_for_new_weights(run, tmp_path):
    exp, out, _ = run
    variant, seed, cfg = exp.cells()[0]
    run = RunDir(out)
    path = run.estimator(variant, seed, "layer3", 64)
    est = Estimator.load(path)
    data = load_dataset(cfg)
    model = load_model(cfg.model, data.num_classes, run.weights(variant, seed))
    sha = run.record(variant, seed).weights_sha256  # the estimator is tied to these weights
    assert est.model_fingerprint == sha and est.n_samples == 64
    direct = fit_estimator(model, data.train.images, data.normalize, n_images=64)
    torch.testing.assert_close(est.mean, direct.mean)
    # a second explain call reuses the file (cached) and the estimator file is not rewritten
    mtime = path.stat().st_mtime_ns
    _, cached = explain_cell(cfg, out, variant, seed, "iba", 6,
                             params={"steps": 3, "batch_noise": 2}, estimator_images=64)
    assert cached and path.stat().st_mtime_ns == mtime
    # a corrupt estimator file is refitted, not trusted
    path.write_bytes(b"garbage")
    explain_cell(cfg, out, variant, seed, "iba", 6, params={"steps": 3, "batch_noise": 2},
                 estimator_images=64, force=True)
    assert Estimator.load(path).model_fingerprint == sha


def test_evaluate_cell_is_cached_and_rejects_nan_maps(run, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from auglens.errors import AuglensError

    exp, out, _ = run
    variant, seed, cfg = exp.cells()[0]
    _, cached = evaluate_cell(cfg, out, variant, seed, "gradcam", exp.evaluate)
    assert cached
    run2 = tmp_path / "run"
    shutil.copytree(out, run2)
    p = RunDir(run2).explanation("gradcam", variant, seed)
    t, meta = read_explanation(p)
    assert read_explanation(p, tensors=False) == ({}, meta)  # header only, same metadata
    t["maps"][0, 0, 0] = float("nan")
    save_file(t, str(p), metadata=meta | {"auglens_key": "other"})
    with pytest.raises(AuglensError, match="NaN"):
        evaluate_cell(cfg, run2, variant, seed, "gradcam", exp.evaluate)


def test_cli_evaluate_and_dissect_and_errors(run, capsys, tmp_path):
    _, out, _ = run
    assert main(["evaluate", str(out), "--method", "gradcam"]) == 0
    text = capsys.readouterr().out
    assert "6 cached" in text and "energy_pointing_game" in text
    assert main(["dissect", str(out)]) == 0
    assert "unique" not in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--method", "layercam"]) == 2
    assert "no layercam explanation for baseline/seed0" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--set", "evaluate.n_step=3"]) == 2
    assert "evaluate.n_step: unknown field" in capsys.readouterr().err


def test_dissect_on_a_broden_probe_equals_direct_dissect(run, tmp_path):
    import shutil

    from test_data_broden import make_broden

    from auglens.config import DissectConfig
    from auglens.data import load_broden

    exp, out0, _ = run
    out = tmp_path / "run"
    shutil.copytree(out0, out)
    make_broden(tmp_path / "broden")
    dcfg = DissectConfig(probe="broden", broden_root=tmp_path / "broden", n_images=None)
    variant, seed, cfg = exp.cells()[1]
    path, cached = dissect_cell(cfg, out, variant, seed, dcfg)
    assert not cached
    data = load_dataset(cfg)
    probe = load_broden(tmp_path / "broden", max_images=None, seed=0, image_size=32)
    model = load_model(cfg.model, data.num_classes, RunDir(out).weights(variant, seed))
    direct = dissect(model, probe.images, probe.concepts, data.normalize, probe.concept_names,
                     probe.concept_categories).table()
    got = pd.read_parquet(path)
    np.testing.assert_allclose(got.iou.to_numpy(), direct.iou.to_numpy(), rtol=1e-12)
    assert got.concept.tolist() == direct.concept.tolist()
    assert dissect_cell(cfg, out, variant, seed, dcfg)[1]  # cached on the second call
    assert set(got.category) <= set(probe.concept_categories)


def test_broden_probe_needs_a_root():
    from auglens.errors import ConfigError

    with pytest.raises(ConfigError, match="probe 'broden' needs broden_root"):
        load_config(ExperimentConfig, {"dissect": {"probe": "broden"}})
    with pytest.raises(ConfigError, match="dissect.probe"):
        load_config(ExperimentConfig, {"dissect": {"probe": "imagenet"}})
