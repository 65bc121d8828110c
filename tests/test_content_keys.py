"""Content-addressed caching (issue "Content-addressed for real"): keys cover input content and the
numeric environment, damaged outputs are detected and recomputed, copied run directories stay
cached, errors keep the one-line promise. Each test names the defect it guards against."""

import errno
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from auglens.cli import main
from auglens.rundir import RunDir

EXP = {
    "name": "keys",
    "data": {"name": "shapes", "n_train": 128, "n_val": 32, "n_test": 24},
    "model": {"name": "fast_resnet", "width": 8},
    "train": {"epochs": 1, "batch_size": 32, "patience": 1},
    "seeds": [0, 1],
    "variants": {"baseline": [], "affine": [{"name": "affine"}]},
    "explain": {"methods": ["gradcam", "iba"], "limit": {"iba": 4}, "estimator_images": 32,
                "params": {"iba": {"steps": 2, "batch_noise": 2}}},
    "evaluate": {"n_images": 4, "n_steps": 4, "n_random": 2},
    "dissect": {"n_images": 24},
    "analysis": {"n_boot": 200},
}


def _write(path, exp):
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def _run(cfg, out, *extra):
    return main(["run", str(cfg), "--out", str(out), "--quiet", "--workers", "1", *extra])


def _plan(cfg, out, capsys, *extra):
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(out), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    cfg = _write(d / "exp.yaml", EXP)
    assert _run(cfg, d / "run") == 0
    return cfg, d / "run"


def _tables(run):
    return {p.name: pd.read_parquet(p) for p in sorted((run / "tables").glob("*.parquet"))}


def test_copied_run_directory_plans_nothing_from_another_directory(base, tmp_path, capsys,
                                                                    monkeypatch):
    """Defect (#12): stage manifests stored paths relative to the working directory, so a copied
    run recomputed Study A."""
    cfg, run = base
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)
    monkeypatch.chdir(tmp_path)
    text = _plan(cfg, copy, capsys)
    assert " 0 to run" in text and "to run" in text
    assert all(" 0 to run" in line for line in text.splitlines() if "to run" in line), text
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*.parquet")}
    assert _run(cfg, copy) == 0
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.parquet")
            if "report" not in p.parts} == {p: t for p, t in before.items()
                                            if "report" not in p.parts}
    manifest = json.loads((copy / "stages" / "compare-gradcam.json").read_text())
    assert all(not o.startswith("/") and not o.startswith("..") for o in manifest["outputs"])


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("kind", ["weights", "explanation", "estimator", "evaluation",
                                  "dissection", "stage_table"])
def test_a_damaged_file_of_each_kind_is_detected_and_recomputed(base, tmp_path, capsys, kind):
    """Defect 2: a rerun trusted any file that existed (a truncated summary_a.parquet ended every
    later run in an ArrowInvalid traceback)."""
    cfg, run = base
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    r = RunDir(copy)
    path = {"weights": r.weights("affine", 1),
            "explanation": r.explanation("gradcam", "affine", 1),
            "estimator": next(r.cell("baseline", 0).glob("iba_estimator-*.safetensors")),
            "evaluation": r.evaluation("gradcam", "affine", 0),
            "dissection": r.dissection("baseline", 1),
            "stage_table": r.table("summary_a")}[kind]
    reference = path.read_bytes()
    _truncate(path)
    if kind != "estimator":  # the estimator is only read when an IBA map is recomputed
        text = _plan(cfg, copy, capsys)
        assert f"damaged file {r.relative(path)}" in text
    if kind == "estimator":
        r.explanation("iba", "baseline", 0).unlink()  # make the IBA map need the estimator
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(copy), "--workers", "1", "--quiet"]) == 0
    log = (copy / "run.log").read_text()
    if kind != "estimator":
        assert f"damaged file {r.relative(path)}: recomputing it" in log
    assert path.read_bytes() == reference  # recomputed, bit-identical to the undamaged run
    for name, df in _tables(run).items():
        if name != "performance.parquet":
            pd.testing.assert_frame_equal(df, pd.read_parquet(copy / "tables" / name), obj=name)


def test_a_checkpoint_changed_in_place_retrains(tmp_path, capsys):
    """Defect 3: replacing a checkpoint file at the same path left every cell cached."""
    from auglens.models import build_model, save_weights

    ckpt = tmp_path / "start.safetensors"
    import torch

    torch.manual_seed(0)
    save_weights(build_model("fast_resnet", 10, width=8), ckpt)
    exp = dict(EXP, variants={"baseline": []}, seeds=[0], explain={"methods": ["gradcam"]},
               evaluate={"enabled": False}, dissect={"enabled": False})
    exp["model"] = dict(EXP["model"], checkpoint=str(ckpt))
    cfg = _write(tmp_path / "exp.yaml", exp)
    assert _run(cfg, tmp_path / "run") == 0
    train = [ln for ln in _plan(cfg, tmp_path / "run", capsys).splitlines()
             if ln.startswith("train")]
    assert train[0].startswith("train      0 to run")
    torch.manual_seed(1)
    save_weights(build_model("fast_resnet", 10, width=8), ckpt)  # same path, new content
    text = _plan(cfg, tmp_path / "run", capsys)
    assert "baseline/seed0  (starting checkpoint changed)" in text


def _folder(root, n_train=6, n_test=3):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_test)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_an_image_added_to_a_folder_invalidates_exactly_what_reads_it(tmp_path, capsys):
    """Defect 3: changing the images inside an imagefolder root left every cell cached. A new
    test image re-explains (and re-scores) every cell but retrains none; a new training image
    retrains every cell."""
    from auglens.data.fingerprint import forget

    root = tmp_path / "data"
    _folder(root)
    exp = dict(EXP, data={"name": "imagefolder", "root": str(root), "image_size": 8,
                          "val_size": 2, "normalization": "train"},
               explain={"methods": ["gradcam"]}, dissect={"enabled": False})
    cfg = _write(tmp_path / "exp.yaml", exp)
    assert _run(cfg, tmp_path / "run") == 0
    Image.fromarray(np.zeros((12, 12, 3), np.uint8) + 7).save(root / "val" / "a" / "new.png")
    forget()
    text = _plan(cfg, tmp_path / "run", capsys)
    lines = text.splitlines()
    assert any(line.startswith("train      0 to run,   5 cached") for line in lines), text
    assert any(line.startswith("explain    4 to run") for line in lines), text
    # + the random-control maps of the two baseline cells, + tables
    assert any(line.startswith("evaluate   7 to run") for line in lines), text
    assert any(line.startswith("sanity     3 to run") for line in lines), text  # + verdicts
    assert "baseline/seed1 random  (the explanation its random maps replace" in text
    assert any(line.startswith("compare    1 to run") for line in lines), text
    assert "affine/seed1 gradcam  (inputs changed)" in text
    assert "affine/seed1 gradcam  (its explanation is recomputed)" in text
    Image.fromarray(np.zeros((12, 12, 3), np.uint8) + 9).save(root / "train" / "b" / "new.png")
    forget()
    text = _plan(cfg, tmp_path / "run", capsys)
    assert "affine/seed0  (training files changed)" in text


def test_another_worker_count_gives_identical_results_and_byte_identical_files(base, tmp_path):
    """Defect 4: weights depended on the torch threads per worker, which was not in the key; the
    thread count of every CPU task is now pinned (train.threads, default 1). Defect 6: metadata
    key order differed between identical runs. The same experiment run again with 2 workers
    (the base run used 1) gives the same keys and byte-identical files."""
    cfg, run = base
    other = tmp_path / "two"
    assert main(["run", str(cfg), "--out", str(other), "--quiet", "--workers", "2"]) == 0
    for variant, seed in (("baseline", 0), ("affine", 1)):
        a, b = RunDir(run).record(variant, seed), RunDir(other).record(variant, seed)
        assert a.weights_sha256 == b.weights_sha256 and a.raw["key"] == b.raw["key"]
        assert a.raw["key_inputs"]["numeric"]["threads"] == "1"
    for name in ("similarity.parquet", "summary_b.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / "tables" / name),
                                      pd.read_parquet(other / "tables" / name))
    for rel in ("explanations/gradcam/affine/seed1.safetensors",
                "explanations/iba/baseline/seed0.safetensors",
                "evaluation/gradcam/affine/seed0.parquet",
                "dissection/baseline/seed1.parquet", "tables/summary_a.parquet",
                "tables/similarity.parquet", "cells/affine/seed1/weights.safetensors",
                "sanity/gradcam/baseline/seed0.parquet"):
        assert (run / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_full_disk_is_one_line_and_a_clean_rerun(base, tmp_path, capsys, monkeypatch):
    """Defect 5: a full disk ended in an OSError traceback."""
    import auglens.rundir as rundir

    cfg, _ = base
    out = tmp_path / "full"
    real = rundir.write_table
    calls = {"n": 0}

    def full(df, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(df, path, *a, **k)

    monkeypatch.setattr(rundir, "write_table", full)
    for mod in ("auglens.metrics.store", "auglens.analysis.run_b", "auglens.analysis.run_a"):
        monkeypatch.setattr(f"{mod}.write_table", full, raising=False)
    capsys.readouterr()
    assert _run(cfg, out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device writing" in err
    assert "nothing written before was lost" in err
    assert not list(out.rglob(".*.tmp"))
    monkeypatch.undo()
    assert _run(cfg, out) == 0


def test_stale_temporaries_are_removed_and_the_log_counts_cached_tasks(base, tmp_path):
    """Defect 6: stale .tmp files after a kill; run.log said "0 cached" when all were."""
    cfg, run = base
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stale = copy / "explanations" / "gradcam" / "affine" / ".seed0.safetensors.abc.tmp"
    stale.write_bytes(b"half")
    assert _run(cfg, copy) == 0
    assert not stale.exists()
    log = (copy / "run.log").read_text()
    assert "removed 1 temporary files" in log
    assert "[train] 5 tasks, 5 cached" in log  # 4 cells + the performance/matching tables


def test_subcommands_take_the_run_lock(base, capsys):
    """Defect 5: report/explain/compare ran against a directory another run was writing."""
    cfg, run = base
    with RunDir(run).lock():
        for cmd in (["report", str(run)], ["explain", str(run)], ["compare", str(run)],
                    ["evaluate", str(run)], ["dissect", str(run)]):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert "is in use by another auglens process" in err and err.count("\n") == 1


def test_skip_corrupt_warning_reaches_the_run_log(tmp_path):
    """Defect 6: the skip_corrupt warning (raised while workers load the data) was missing from
    run.log."""
    root = tmp_path / "data"
    _folder(root)
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    exp = dict(EXP, variants={"baseline": []}, seeds=[0],
               data={"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 2,
                     "skip_corrupt": True},
               explain={"methods": ["gradcam"]}, evaluate={"enabled": False},
               dissect={"enabled": False})
    cfg = _write(tmp_path / "exp.yaml", exp)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                 "--workers", "2"]) == 0
    log = (tmp_path / "run" / "run.log").read_text()
    assert "warning" in log and "broken.png" in log
