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
