"""`auglens run` end to end on a tiny converged grid: convergence and failed-run flags, the
accuracy-matched baseline checkpoints (Study A and B), seed-level summaries and verdicts, the
accuracy relation, and `auglens replicate` — each checked against direct computation."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from auglens.analysis.inference import is_distance
from auglens.cli import main
from auglens.explain.store import read_explanation
from auglens.metrics import compare_maps
from auglens.rundir import RunDir
from auglens.train.matching import matched_epoch

EXP = {
    "name": "validity",
    "data": {"name": "shapes", "n_train": 256, "n_val": 48, "n_test": 40},
    "model": {"name": "fast_resnet", "width": 8},
    "train": {"stop": "converged", "max_epochs": 5, "patience": 1, "lr_decays": 1,
              "batch_size": 32, "threads": 1},
    "seeds": [0, 1],
    "variants": {"baseline": [], "affine": [{"name": "affine"}],
                 "cutmix": [{"name": "cutmix", "p": 0.5}],
                 "cutmix_hard": [{"name": "cutmix", "p": 0.5, "label_mixing": False}]},
    "explain": {"methods": ["gradcam"]},
    "evaluate": {"n_images": 8, "n_steps": 4, "n_random": 2},
    "dissect": {"enabled": False},
    "analysis": {"n_boot": 300},
}


def _run(tmp, seeds, name):
    exp = dict(EXP, seeds=seeds)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    out = tmp / name
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("validity"), [0, 1], "run")


def records(run):
    return {(p.parent.parent.name, int(p.parent.name[4:])): json.loads(p.read_text())
            for p in (run / "cells").glob("*/seed*/record.json")}


def test_performance_flags_and_matching_follow_the_records(run):
    recs = records(run)
    perf = pd.read_parquet(run / "tables" / "performance.parquet")
    for r in perf.itertuples():
        rec = recs[(r.variant, r.seed)]
        assert r.converged == rec["converged"] and r.best_epoch == rec["best_epoch"]
        assert r.epochs_trained == len(rec["history"]) <= 5
    base = {s: recs[("baseline", s)] for s in (0, 1)}
    assert all(len(b["checkpoint_sha256"]) == len(b["history"]) for b in base.values())
    m = pd.read_parquet(run / "tables" / "matching.parquet")
    assert len(m) == 6  # 3 variants × 2 seeds
    for r in m.itertuples():
        curve = [h["val_accuracy"] for h in base[r.seed]["history"]]
        assert r.baseline_epoch == matched_epoch(curve, recs[(r.variant, r.seed)]
                                                 ["best_val_accuracy"])
        assert r.same_as_final == (r.baseline_epoch == base[r.seed]["best_epoch"])
        p = RunDir(run).explanation("gradcam", "baseline", r.seed,
                             None if r.same_as_final else r.baseline_epoch)
        assert p.is_file()


def test_matched_similarity_equals_direct_comparison(run):
    sim = pd.read_parquet(run / "tables" / "similarity.parquet")
    m = pd.read_parquet(run / "tables" / "matching.parquet").iloc[0]
    epoch = None if m.same_as_final else int(m.baseline_epoch)
    a = read_explanation(RunDir(run).explanation("gradcam", m.variant, int(m.seed)))[0]
    b = read_explanation(RunDir(run).explanation("gradcam", "baseline", int(m.seed), epoch))[0]
    want = compare_maps(a["maps"].float(), b["maps"].float(), ("spearman",))["spearman"]
    got = sim[(sim.variant == m.variant) & (sim.seed == m.seed)
              & (sim.reference == "matched_baseline") & (sim.target == "predicted")
              & (sim.metric == "spearman")].sort_values("image_id")["value"].to_numpy()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, equal_nan=True)


def test_summary_a_estimates_differences_and_verdicts(run):
    sim = pd.read_parquet(run / "tables" / "similarity.parquet")
    s = pd.read_parquet(run / "tables" / "summary_a.parquet")
    assert {"final", "matched"} <= set(s.reference)
    for metric in ("spearman", "mad"):
        sel = (sim.target == "predicted") & (sim.metric == metric)
        floor = sim[sel & sim.reference.astype(str).str.startswith("baseline_seed_")].value
        var = sim[sel & (sim.reference == "baseline") & (sim.variant == "affine")].value
        row = s[(s.variant == "affine") & (s.reference == "final") & (s.target == "predicted")
                & (s.metric == metric)].iloc[0]
        assert row["mean"] == pytest.approx(np.nanmean(var))
        sign = 1 if is_distance(metric) else -1
        assert row["diff"] == pytest.approx(sign * (np.nanmean(var) - np.nanmean(floor)))
        assert row.diff_low <= row["diff"] <= row.diff_high
        assert row.provisional and row.n_seeds == 2
        assert row.verdict in ("beyond", "within", "closer", "undecided")
    floor_row = s[(s.variant == "noise_floor") & (s.metric == "spearman")
                  & (s.target == "predicted")].iloc[0]
    assert floor_row.n_seeds == 1 and pd.isna(floor_row.get("verdict"))


def test_summary_b_matched_and_label_mixing(run):
    interp = pd.read_parquet(run / "tables" / "interpretability.parquet")
    # the chance level: a pseudo-method 'random' scored on the baseline cells, never compared
    rand = interp[interp.method == "random"]
    assert set(rand.variant) == {"baseline"} and len(rand)
    interp = interp[interp.method == "gradcam"]
    matched = pd.read_parquet(run / "tables" / "interpretability_matched.parquet")
    assert "random" not in set(matched.method)
    s = pd.read_parquet(run / "tables" / "summary_b.parquet")
    assert set(s[s.method == "random"].verdict.dropna()) == set()
    metric = "energy_pointing_game"
    v = interp[(interp.variant == "cutmix") & (interp.metric == metric)].value
    b = interp[(interp.variant == "baseline") & (interp.metric == metric)].value
    mb = matched[(matched.variant == "cutmix") & (matched.metric == metric)].value
    row = s[(s.variant == "cutmix") & (s.metric == metric)].set_index("reference")
    assert row.loc["final", "diff"] == pytest.approx(v.mean() - b.mean())
    assert row.loc["matched", "diff"] == pytest.approx(v.mean() - mb.mean())
    assert row.loc["final", "verdict"] in ("higher", "lower", "same", "undecided")
    lm = pd.read_parquet(run / "tables" / "label_mixing.parquet")
    r = lm[lm.metric == metric].iloc[0]
    h = interp[(interp.variant == "cutmix_hard") & (interp.metric == metric)].value
    assert (r.a, r.b) == ("cutmix", "cutmix_hard")
    assert r["diff"] == pytest.approx(v.mean() - h.mean())
    acc = pd.read_parquet(run / "tables" / "accuracy_correlation_b.parquet")
    assert set(acc.points) == {"cells", "all"}
    pts = pd.read_parquet(run / "tables" / "accuracy_points_b.parquet")
    cells = pts[(pts.metric == metric) & pts.epoch.isna()]
    assert len(cells) == 8
    from scipy.stats import spearmanr

    want = spearmanr(cells.val_accuracy, cells.value).statistic
    got = acc[(acc.metric == metric) & (acc.points == "cells")].spearman_rho.iloc[0]
    assert got == pytest.approx(want, nan_ok=True)
    for name in ("accuracy_a", "accuracy_b"):
        assert (run / "plots" / f"{name}.png").is_file()


def test_replicate_with_disjoint_seeds(run, tmp_path, capsys):
    other = _run(tmp_path, [2, 3], "other")
    assert main(["replicate", str(run), str(other), "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "rep.parquet")
    summary = json.loads((tmp_path / "rep.json").read_text())
    a = pd.read_parquet(run / "tables" / "summary_a.parquet")
    b = pd.read_parquet(other / "tables" / "summary_a.parquet")
    key = ["variant", "metric"]
    sel = lambda d: d[(d.reference == "final") & (d.target == "predicted")  # noqa: E731
                      & d.verdict.notna()].set_index(key).verdict
    joined = pd.concat([sel(a), sel(b)], axis=1, keys=["a", "b"]).dropna()
    want_a = float((joined.a == joined.b).mean())
    assert summary["by_study"]["A"]["agreement"] == pytest.approx(want_a)
    assert f"{summary['agreement']:.1%}" in text
    assert len(table) == summary["n"]
    # overlapping seeds are refused with a one-line error
    assert main(["replicate", str(run), str(run)]) == 2
    assert "share seeds" in capsys.readouterr().err


def test_dry_run_and_exclusion(run, capsys):
    cfg = run.parent / "run.yaml"
    assert main(["run", str(cfg), "--out", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train      0 to run,   9 cached" in out
    assert "@epoch" in out or "cached baseline/seed0" in out
    assert main(["run", str(cfg), "--out", str(run), "--dry-run", "--seeds", "0,x"]) == 2
    assert "--seeds expects integers" in capsys.readouterr().err
