"""`auglens run`: cached stages, selective retraining, lock, dry-run, kill-and-resume, Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from auglens.cli import main
from auglens.pipeline import RunLock

EXP = {
    "name": "tiny",
    "data": {"name": "shapes", "n_train": 192, "n_val": 32, "n_test": 40},
    "model": {"name": "small_resnet", "width": 8},
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "seeds": [0, 1],
    "variants": {"baseline": [], "affine": [{"name": "affine"}], "crop": [{"name": "random_crop"}]},
    "evaluate": {"n_images": 8, "n_steps": 4, "n_random": 2},
    "analysis": {"n_boot": 200},
    "dissect": {"n_images": 40},
}


def write_exp(path: Path, **changes) -> Path:
    exp = json.loads(json.dumps(EXP))
    exp.update(changes)
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def mtimes(run: Path) -> dict[str, int]:
    return {
        str(p.relative_to(run)): p.stat().st_mtime_ns
        for p in sorted(run.glob("cells/*/*/weights.safetensors"))
        + sorted(run.glob("explanations/*/*/*.safetensors"))
    }


def tables(run: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("performance", "similarity", "summary_a", "correlation", "pair_frequency",
                 "interpretability", "summary_b", "curves", "dissection"):
        df = pd.read_parquet(run / "tables" / f"{name}.parquet")
        out[name] = df.drop(columns=[c for c in ("train_seconds",) if c in df])
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_categorical=False, obj=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    exp = write_exp(d / "exp.yaml")
    assert main(["run", str(exp), "--out", str(d / "run"), "--quiet"]) == 0
    return d / "run"


def test_outputs_and_second_run_is_fully_cached(reference, capsys):
    assert (reference / "tables" / "similarity.parquet").is_file()
    assert (reference / "run.log").read_text().count("finished in") == 1
    before = mtimes(reference)
    assert len(before) == 14  # 6 weights, 6 gradcam maps, 2 random-control maps (baseline)
    exp = reference.parent / "exp.yaml"
    t0 = time.perf_counter()
    assert main(["run", str(exp), "--out", str(reference), "--quiet"]) == 0
    assert mtimes(reference) == before  # nothing retrained or re-explained
    assert time.perf_counter() - t0 < 60
    log = (reference / "run.log").read_text()
    assert "[train] 7 tasks, 7 cached" in log and "compare] gradcam (cached)" in log


def test_changing_one_augmentation_retrains_only_its_cells(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = mtimes(run)
    variants = dict(EXP["variants"], affine=[{"name": "affine", "degrees": 30}])
    exp = write_exp(tmp_path / "exp.yaml", variants=variants)
    assert main(["run", str(exp), "--out", str(run), "--quiet"]) == 0
    after = mtimes(run)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "cells/affine/seed0/weights.safetensors",
        "cells/affine/seed1/weights.safetensors",
        "explanations/gradcam/affine/seed0.safetensors",
        "explanations/gradcam/affine/seed1.safetensors",
    }


def test_dry_run_lists_grid_and_cache(reference, capsys, tmp_path):
    exp = reference.parent / "exp.yaml"
    assert main(["run", str(exp), "--out", str(reference), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 variants × 2 seeds = 6 cells" in out
    assert "train      0 to run,   7 cached" in out
    assert main(["run", str(exp), "--out", str(tmp_path / "new"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train      7 to run,   0 cached" in out and "run    affine/seed1" in out
    assert not (tmp_path / "new").exists()  # a dry run writes nothing


def test_lock_refuses_a_second_run(reference, capsys):
    exp = reference.parent / "exp.yaml"
    with RunLock(reference):
        assert main(["run", str(exp), "--out", str(reference), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is in use by another auglens process (pid" in err


def test_bad_force_and_set_keys(reference, capsys):
    exp = reference.parent / "exp.yaml"
    assert main(["run", str(exp), "--out", str(reference), "--force", "trian", "--quiet"]) == 2
    assert ("argument --force: invalid choice: 'trian' (choose from 'train', 'explain', "
            "'compare', 'evaluate', 'dissect', 'sanity', 'report')") in capsys.readouterr().err
    for bad in (["--n-images", "0"], ["--workers", "-1"], ["--executor", "dask"]):
        assert main(["run", str(exp), "--out", str(reference), "--dry-run", *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("auglens: error: argument")
    assert main(["run", str(exp), "--out", str(reference), "--set", "train.epoch=2"]) == 2
    assert "train.epoch: unknown field" in capsys.readouterr().err
    assert main(["run", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert ("unknown preset 'nope'; valid presets: composition, label-mixing, paper-a, "
            "paper-b, quick, standard") in err


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it once ``ready()``; its worker processes must then exit too."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    children: list[int] = []
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError("run finished before it could be killed")
            if time.time() - t0 > timeout:
                raise AssertionError("timed out waiting to kill")
            time.sleep(0.05)
    finally:
        children = _children(proc.pid)  # pool workers and the progress-queue manager
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    alive = [c for c in children if Path(f"/proc/{c}/stat").exists()
             and Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"worker processes outlived the killed run: {alive}"


# a kill during training and one during evaluation (the explain stage is resumed by the same
# per-task keys and temporary files; test_content_keys kills nothing but checks every file kind)
@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_kill_and_resume_gives_identical_tables(reference, tmp_path, stage):
    exp = reference.parent / "exp.yaml"
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "auglens.cli", "run", str(exp), "--out", str(run), "--quiet"]
    if stage == "train":

        def ready():
            return len(list(run.glob("cells/*/*/record.json"))) >= 2
    else:

        def ready():
            return len(list(run.glob("evaluation/gradcam/*/seed*-curves.parquet"))) >= 2

    _kill_when(cmd, ready)
    last = "summary_b" if stage == "evaluate" else "similarity"
    assert not (run / "tables" / f"{last}.parquet").exists()
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    # a temp file may be left by the kill, but never under a final name; resume ignores it
    assert all(p.name.startswith(".") for p in leftovers)
    assert main(["run", str(exp), "--out", str(run), "--quiet"]) == 0
    log = (run / "run.log").read_text()
    cached = int(log.split("[train] 7 tasks, ")[-1].split(" cached")[0])
    assert cached >= 2  # finished cells were not redone
    assert_same_tables(reference, run)


def test_ray_executor_equals_local(reference, tmp_path):
    pytest.importorskip("ray")
    from auglens.config import ExperimentConfig, load_config
    from auglens.executors import RayExecutor
    from auglens.pipeline import run_subset
    from auglens.progress import Reporter

    exp = load_config(ExperimentConfig, EXP)
    ex = RayExecutor(num_cpus=1, init_kwargs={"num_cpus": 2})
    try:  # per-cell stages as Ray tasks (the later stages use the same executor.map)
        run_subset(exp, tmp_path / "run", ("train", "explain"), ex, reporter=Reporter(quiet=True))
    finally:
        ex.close()
    for rec in (reference / "cells").glob("*/*/record.json"):
        other = tmp_path / "run" / rec.relative_to(reference)
        assert (
            json.loads(rec.read_text())["weights_sha256"]
            == json.loads(other.read_text())["weights_sha256"]
        )
    for ref in (reference / "explanations" / "gradcam").glob("*/*.safetensors"):
        a = load_file(ref)
        b = load_file(tmp_path / "run" / ref.relative_to(reference))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_worker_processes_equal_in_process(reference, tmp_path):
    exp = reference.parent / "exp.yaml"
    assert main(["run", str(exp), "--out", str(tmp_path / "run"), "--workers", "1", "--quiet"]) == 0
    assert_same_tables(reference, tmp_path / "run")


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_events_reach_the_reporter_from_workers(tmp_path, workers):
    from auglens.config import ExperimentConfig, load_config
    from auglens.executors import LocalExecutor
    from auglens.pipeline import run_pipeline
    from auglens.progress import Reporter

    class Recorder(Reporter):
        def __init__(self):
            super().__init__(quiet=True)
            self.events = []

        def task_progress(self, kind, name, done=0, total=0, note=""):
            self.events.append((kind, name, done, total))

    exp = load_config(ExperimentConfig, dict(
        EXP, seeds=[0], train=dict(EXP["train"], epochs=2),
        variants={"baseline": [], "affine": [{"name": "affine"}]},
        evaluate={"enabled": False}, dissect={"enabled": False}))
    rep = Recorder()
    ex = LocalExecutor(workers)
    try:
        run_pipeline(exp, tmp_path / "run", ex, reporter=rep)
    finally:
        ex.close()
    for cell in ("baseline/seed0", "affine/seed0"):
        epochs = [e[2] for e in rep.events if e[0] == "epoch" and e[1] == cell]
        assert epochs == [0, 1, 2] and ("end", cell, 0, 0) in rep.events
        images = [e for e in rep.events if e[0] == "images" and e[1] == f"{cell} gradcam"]
        assert images and images[-1][2:] == (40, 40)
