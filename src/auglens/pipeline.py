"""The stages of one run, with content-addressed caching, a run-directory lock and executors.

    train (one task per variant × seed) → explain (one task per cell × method) → compare (Study A)

Each stage's output is keyed by a hash of exactly the configuration it depends on plus its inputs'
hashes: a cell by its ``CellConfig`` hash; an explanation by the cell's weights hash, the method,
layer and image count; the Study A tables by the keys of all explanations they read. Re-running
skips what is done; changing one augmentation's parameters retrains only its cells.
``force`` names stages to recompute. Every file is written to a temporary name and renamed, so a
run killed at any point resumes without redoing finished work.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CellConfig, ExperimentConfig, config_hash
from .errors import AuglensError
from .executors import Executor, LocalExecutor
from .utils import write_json

STAGES = ("train", "explain", "compare")


class RunLock:
    """Exclusive lock on a run directory (``.auglens.lock``, fcntl). A second process refuses with
    a clear message, or waits when ``wait`` is true. Released on exit, also on a crash."""

    def __init__(self, run_dir: str | Path, wait: bool = False) -> None:
        self.path = Path(run_dir) / ".auglens.lock"
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AuglensError(
                f"run directory {self.path.parent} is in use by another auglens process "
                f"({holder}); wait for it to finish, pass --wait, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Reporter:
    """Progress callbacks; the default prints plain lines (``quiet`` prints nothing)."""

    def __init__(self, quiet: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.quiet = quiet
        self._log = log

    def message(self, text: str) -> None:
        if self._log:
            self._log(text)
        if not self.quiet:
            print(text, flush=True)

    def stage(self, name: str, total: int, cached: int) -> None:
        self.message(f"[{name}] {total} tasks, {cached} cached")

    def advance(self, name: str, text: str) -> None:
        self.message(f"[{name}] {text}")

    def epoch(self, variant: str, seed: int, entry: dict[str, Any]) -> None:
        if self._log:
            self._log(f"[train] {variant}/seed{seed} epoch {entry['epoch']}: val acc "
                      f"{entry['val_accuracy']:.4f}")

    def done(self, name: str) -> None:
        """Called when a stage finishes."""


# ----------------------------------------------------------------------------- tasks (picklable)


def _train_task(cell: dict[str, Any], path: str) -> dict[str, Any]:
    from .train import train_cell

    return train_cell(CellConfig.model_validate(cell), path).record


def _explain_task(cell: dict[str, Any], run_dir: str, variant: str, seed: int, method: str,
                  n_images: int | None, force: bool) -> tuple[str, bool]:
    from .explain.store import explain_cell

    path, cached = explain_cell(CellConfig.model_validate(cell), run_dir, variant, seed, method,
                                n_images, force=force)
    return str(path), cached


# ----------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """What a run would do: per stage, the tasks still to run and those already cached."""

    todo: dict[str, list[str]] = field(default_factory=dict)
    cached: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for stage in self.todo:
            out.append(f"{stage:<8} {len(self.todo[stage]):>3} to run, "
                       f"{len(self.cached[stage]):>3} cached")
            out += [f"           run    {t}" for t in self.todo[stage]]
            out += [f"           cached {t}" for t in self.cached[stage]]
        return out


def make_plan(exp: ExperimentConfig, run_dir: Path, methods: tuple[str, ...],
              n_images: int | None, force: set[str] = frozenset()) -> Plan:
    from .explain.store import _key, explanation_path, read_explanation
    from .train.grid import cell_dir, cell_done

    plan = Plan({s: [] for s in STAGES}, {s: [] for s in STAGES})
    trained: dict[tuple[str, int], str | None] = {}
    for variant, seed, cfg in exp.cells():
        path = cell_dir(run_dir, variant, seed)
        name = f"{variant}/seed{seed}"
        done = cell_done(path, cfg) and "train" not in force
        (plan.cached if done else plan.todo)["train"].append(name)
        trained[(variant, seed)] = (
            json.loads((path / "record.json").read_text())["weights_sha256"] if done else None
        )
        for method in methods:
            ename = f"{name} {method}"
            sha = trained[(variant, seed)]
            ok = False
            epath = explanation_path(run_dir, method, variant, seed)
            if sha and epath.is_file() and "explain" not in force:
                try:
                    n = n_images  # the key needs the image count; read it from the file
                    meta = read_explanation(epath)
                    count = int(meta[0]["maps"].shape[0])
                    ok = meta[1].get("key") == _key(cfg, sha, method, cfg.model.target_layer,
                                                    count if n is None else n)
                except AuglensError:
                    ok = False
            (plan.cached if ok else plan.todo)["explain"].append(ename)
    for method in methods:
        key = _compare_key(exp, run_dir, method)
        ok = key is not None and _stage_done(run_dir, f"compare-{method}", key)
        (plan.cached if ok and "compare" not in force else plan.todo)["compare"].append(method)
    return plan


# ----------------------------------------------------------------------------- stage manifests


def _manifest(run_dir: Path, name: str) -> Path:
    return run_dir / "stages" / f"{name}.json"


def _stage_done(run_dir: Path, name: str, key: str) -> bool:
    p = _manifest(run_dir, name)
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return m.get("key") == key and all(Path(o).is_file() for o in m.get("outputs", []))


def _compare_key(exp: ExperimentConfig, run_dir: Path, method: str) -> str | None:
    from .explain.store import explanation_path, read_explanation

    keys = []
    for variant, seed, _ in exp.cells():
        p = explanation_path(run_dir, method, variant, seed)
        if not p.is_file():
            return None
        try:
            keys.append(read_explanation(p)[1].get("key"))
        except AuglensError:
            return None
    return config_hash({"explanations": keys, "baseline": exp.baseline, "seeds": exp.seeds,
                        "variants": list(exp.variants), "version": 1})


# ----------------------------------------------------------------------------- run


def run_pipeline(
    exp: ExperimentConfig,
    run_dir: str | Path,
    executor: Executor | None = None,
    methods: tuple[str, ...] = ("gradcam",),
    n_images: int | None = None,
    force: set[str] = frozenset(),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run every stage (skipping cached work) and return paths and per-stage timings."""
    import pandas as pd

    from .analysis.run_a import analyse_study_a, write_table
    from .train.grid import cell_dir, cell_done

    run_dir = Path(run_dir)
    executor = executor or LocalExecutor()
    rep = reporter or Reporter()
    unknown = set(force) - set(STAGES)
    if unknown:
        raise AuglensError(f"unknown stage '{sorted(unknown)[0]}' for --force; valid stages: "
                           + ", ".join(STAGES))
    write_json(run_dir / "experiment.json", exp.model_dump(mode="json"))
    timings: dict[str, float] = {}

    # train
    t0 = time.perf_counter()
    cells = exp.cells()
    todo = [(v, s, c) for v, s, c in cells
            if "train" in force or not cell_done(cell_dir(run_dir, v, s), c)]
    rep.stage("train", len(cells), len(cells) - len(todo))
    tasks = [(c.model_dump(mode="json"), str(cell_dir(run_dir, v, s))) for v, s, c in todo]
    for i, record in executor.map(_train_task, tasks):
        v, s, _ = todo[i]
        rep.advance("train", f"{v}/seed{s}: test accuracy {record['test']['accuracy']:.4f} "
                             f"({record['train_seconds']:.0f}s)")
    rows = []
    for v, s, _ in cells:
        rec = json.loads((cell_dir(run_dir, v, s) / "record.json").read_text())
        t = rec["test"]
        rows.append({"variant": v, "seed": s, **{k: t[k] for k in
                     ("accuracy", "precision", "recall", "f1")},
                     "train_seconds": rec["train_seconds"]})
    perf = pd.DataFrame(rows)
    write_table(perf, run_dir / "tables" / "performance.parquet")
    rep.done("train")
    timings["train"] = time.perf_counter() - t0

    # explain
    t0 = time.perf_counter()
    tasks = [(c.model_dump(mode="json"), str(run_dir), v, s, m, n_images, "explain" in force)
             for v, s, c in cells for m in methods]
    rep.stage("explain", len(tasks), 0)
    for i, (_path, cached) in executor.map(_explain_task, tasks):
        _, _, v, s, m, _, _ = tasks[i]
        rep.advance("explain", f"{v}/seed{s} {m}{' (cached)' if cached else ''}")
    rep.done("explain")
    timings["explain"] = time.perf_counter() - t0

    # compare (Study A)
    t0 = time.perf_counter()
    outputs: dict[str, Any] = {}
    rep.stage("compare", len(methods), 0)
    for method in methods:
        key = _compare_key(exp, run_dir, method)
        name = f"compare-{method}"
        if "compare" not in force and key and _stage_done(run_dir, name, key):
            rep.advance("compare", f"{method} (cached)")
            outputs[method] = json.loads(_manifest(run_dir, name).read_text())["outputs"]
            continue
        paths = analyse_study_a(exp, run_dir, method)
        outputs[method] = [str(p) for p in paths.values()]
        write_json(_manifest(run_dir, name), {"key": key, "outputs": outputs[method]})
        rep.advance("compare", f"{method}: {len(paths)} tables and plots")
    rep.done("compare")
    timings["compare"] = time.perf_counter() - t0
    return {"performance": perf, "outputs": outputs, "timings": timings}
