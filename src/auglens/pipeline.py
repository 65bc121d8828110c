"""The stages of one run, with content-addressed caching, a run-directory lock and executors.

    train (one task per variant × seed) → explain (one task per cell × method)
      → compare (Study A) / evaluate (Study B alignment + faithfulness, one task per cell ×
        method, then tables) / dissect (one task per cell, then tables) → report

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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CellConfig, ExperimentConfig, config_hash
from .errors import AuglensError
from .executors import Executor, LocalExecutor
from .train.matching import matched_checkpoints
from .utils import write_json

STAGES = ("train", "explain", "compare", "evaluate", "dissect", "report")


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

    def done(self, name: str) -> None:
        """Called when a stage finishes."""

    def task_progress(self, kind: str, name: str, done: int = 0, total: int = 0,
                      note: str = "") -> None:
        """Progress inside one running task (``kind`` "epoch" or "images"; "end" = finished)."""
        if kind == "epoch" and done and self._log:
            self._log(f"[train] {name} epoch {done}/{total} {note}".rstrip())

    @contextmanager
    def listen(self, events: Any) -> Iterator[None]:
        """While the block runs, forward events that tasks put on ``events`` (see
        `Executor.events`) to `task_progress`, from a background thread."""
        if events is None:
            yield
            return
        stop = threading.Event()

        def pump() -> None:
            import queue as queue_mod

            while True:
                try:
                    event = events.get(timeout=0.2)
                except queue_mod.Empty:
                    if stop.is_set():
                        return
                    continue
                except (EOFError, OSError):  # the manager went away
                    return
                try:
                    self.task_progress(*event)
                except Exception:  # a display problem never stops the run
                    pass

        thread = threading.Thread(target=pump, daemon=True, name="auglens-progress")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


# ----------------------------------------------------------------------------- tasks (picklable)


def _put(events: Any, *event: Any) -> None:
    if events is not None:
        try:
            events.put(event)
        except Exception:  # progress is best effort: never fail a task over it
            pass


def _train_task(cell: dict[str, Any], path: str, name: str = "", events: Any = None,
                keep_checkpoints: bool = False) -> dict[str, Any]:
    from .train import train_cell

    cfg = CellConfig.model_validate(cell)
    total = cfg.train.epoch_cap

    def progress(entry: dict[str, Any]) -> None:
        _put(events, "epoch", name, entry["epoch"], total, f"val acc {entry['val_accuracy']:.3f}")

    _put(events, "epoch", name, 0, total, "")
    try:
        return train_cell(cfg, path, progress=progress, keep_checkpoints=keep_checkpoints).record
    finally:
        _put(events, "end", name)


def _explain_task(cell: dict[str, Any], run_dir: str, variant: str, seed: int, method: str,
                  n_images: int | None, force: bool, params: dict[str, Any] | None = None,
                  estimator_images: int = 1000, batch_size: int = 500, events: Any = None,
                  epoch: int | None = None) -> tuple[str, bool]:
    from .explain.store import explain_cell

    name = f"{_cell_name(variant, seed, epoch)} {method}"

    def on_batch(done: int, total: int) -> None:
        _put(events, "images", name, done, total, "")

    try:
        path, cached = explain_cell(CellConfig.model_validate(cell), run_dir, variant, seed,
                                    method, n_images, batch_size=batch_size, force=force,
                                    params=params, estimator_images=estimator_images,
                                    on_batch=on_batch, epoch=epoch)
    finally:
        _put(events, "end", name)
    return str(path), cached


def _evaluate_task(cell: dict[str, Any], run_dir: str, variant: str, seed: int, method: str,
                   ecfg: dict[str, Any], force: bool, epoch: int | None = None
                   ) -> tuple[str, bool]:
    from .config import EvaluateConfig
    from .metrics.store import evaluate_cell

    path, cached = evaluate_cell(CellConfig.model_validate(cell), run_dir, variant, seed, method,
                                 EvaluateConfig.model_validate(ecfg), force=force, epoch=epoch)
    return str(path), cached


def _cell_name(variant: str, seed: int, epoch: int | None = None) -> str:
    return f"{variant}/seed{seed}" + ("" if epoch is None else f"@epoch{epoch}")


def _dissect_task(cell: dict[str, Any], run_dir: str, variant: str, seed: int,
                  dcfg: dict[str, Any], force: bool) -> tuple[str, bool]:
    from .config import DissectConfig
    from .metrics.store import dissect_cell

    path, cached = dissect_cell(CellConfig.model_validate(cell), run_dir, variant, seed,
                                DissectConfig.model_validate(dcfg), force=force)
    return str(path), cached


# ----------------------------------------------------------------------------- what applies


def _with_overrides(exp: ExperimentConfig, methods: tuple[str, ...] | None,
                    n_images: int | None) -> ExperimentConfig:
    """The experiment with the CLI's ``--method`` / ``--n-images`` folded into ``explain``."""
    ec = exp.explain.model_copy()
    if methods:
        ec.methods = list(dict.fromkeys(methods))
    if n_images is not None:
        ec.n_images = n_images
    return exp.model_copy(update={"explain": ec})


def check_inputs(exp: ExperimentConfig) -> None:
    """Fail early, with the loader's message naming the missing file, when the experiment's data
    (or its Broden probe) is not where the config says."""
    from .data.base import check_source

    check_source(exp.data.name, exp.data.params())  # cheap: paths and layout, no decoding
    if exp.dissect.enabled and exp.dissect.probe == "broden":
        from .data.broden import check_broden

        check_broden(exp.dissect.broden_root)


def skipped_stages(exp: ExperimentConfig) -> dict[str, str]:
    """Stages that do not apply to this experiment → the reason (shown and logged)."""
    from .train.trainer import load_dataset

    out = {}
    if len(exp.variants) < 2:
        out["compare"] = "only the baseline variant: nothing to compare"
    if not exp.evaluate.enabled:
        out["evaluate"] = "evaluate.enabled is false"
    elif not (exp.evaluate.alignment or exp.evaluate.faithfulness):
        out["evaluate"] = "evaluate.alignment and evaluate.faithfulness are both false"
    if not exp.dissect.enabled:
        out["dissect"] = "dissect.enabled is false"
    elif exp.dissect.probe == "dataset":
        data = load_dataset(exp.cells()[0][2])
        if data.test.concepts is None or not data.concept_names:
            out["dissect"] = (f"dataset '{exp.data.name}' has no concept labels (set "
                              "dissect.probe=broden and dissect.broden_root to dissect on Broden)")
    return out


# ----------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """What a run would do: per stage, the tasks still to run and those already cached."""

    todo: dict[str, list[str]] = field(default_factory=dict)
    cached: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for stage in self.todo:
            out.append(f"{stage:<8} {len(self.todo[stage]):>3} to run, "
                       f"{len(self.cached[stage]):>3} cached")
            out += [f"           run    {t}" for t in self.todo[stage]]
            out += [f"           cached {t}" for t in self.cached[stage]]
        out += [f"{stage:<8} skipped: {why}" for stage, why in self.skipped.items()]
        return out + [f"note: {n}" for n in self.notes]


def make_plan(exp: ExperimentConfig, run_dir: Path, methods: tuple[str, ...] | None = None,
              n_images: int | None = None, force: set[str] = frozenset()) -> Plan:
    """Which tasks of each stage are cached (per-cell stages are checked file by file; later
    stages are "to run" whenever an input they read is)."""
    from .explain.store import explanation_cached, explanation_path, read_explanation
    from .metrics.store import dissect_key, dissection_path, evaluate_key, evaluation_path, read_key
    from .train.grid import cell_dir, cell_done

    exp = _with_overrides(exp, methods, n_images)
    check_inputs(exp)
    ec = exp.explain
    skipped = skipped_stages(exp)
    stages = [s for s in STAGES if s not in skipped and s != "report"]
    plan = Plan({s: [] for s in stages}, {s: [] for s in stages}, skipped)
    done: dict[tuple[str, int], bool] = {}
    for variant, seed, cfg in exp.cells():
        keep = exp.analysis.matched and variant == exp.baseline
        done[(variant, seed)] = (cell_done(cell_dir(run_dir, variant, seed), cfg, keep)
                                 and "train" not in force)
        (plan.cached if done[(variant, seed)] else plan.todo)["train"].append(
            f"{variant}/seed{seed}")
    base = {s: c for v, s, c in exp.cells() if v == exp.baseline}
    explained = [(v, s, c, None) for v, s, c in exp.cells()]
    if all(done.values()):  # the matched checkpoints are known once every cell is trained
        explained += [(exp.baseline, s, base[s], e)
                      for s, e in matched_checkpoints(exp, run_dir) if s in base]
    elif exp.analysis.matched and len(exp.variants) > 1:
        plan.notes.append("explain/evaluate: + the accuracy-matched baseline checkpoints, "
                          "chosen after training")
    for variant, seed, cfg, epoch in explained:
        name = f"{variant}/seed{seed}" + ("" if epoch is None else f"@epoch{epoch}")
        for method in ec.methods:
            ok = done[(variant, seed)] and "explain" not in force and explanation_cached(
                cfg, run_dir, variant, seed, method, ec.images_for(method),
                ec.params.get(method), ec.estimator_images, epoch)
            (plan.cached if ok else plan.todo)["explain"].append(f"{name} {method}")
            if "evaluate" in stages:
                ok_e = ok and "evaluate" not in force
                if ok_e:
                    key = read_explanation(explanation_path(run_dir, method, variant, seed, epoch),
                                           tensors=False)[1].get("key", "")
                    ok_e = read_key(evaluation_path(run_dir, method, variant, seed, epoch)) == \
                        evaluate_key(key, exp.evaluate)
                (plan.cached if ok_e else plan.todo)["evaluate"].append(f"{name} {method}")
        if "dissect" in stages and epoch is None:
            ok_d = done[(variant, seed)] and "dissect" not in force
            if ok_d:
                path = cell_dir(run_dir, variant, seed)
                sha = json.loads((path / "record.json").read_text())["weights_sha256"]
                ok_d = read_key(dissection_path(run_dir, variant, seed)) == \
                    dissect_key(cfg, sha, exp.dissect)
            (plan.cached if ok_d else plan.todo)["dissect"].append(name)
    if "compare" in stages:
        for method in ec.methods:
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
    cells = [(v, s, None) for v, s, _ in exp.cells()]
    cells += [(exp.baseline, s, e) for s, e in matched_checkpoints(exp, run_dir)]
    for variant, seed, epoch in cells:
        p = explanation_path(run_dir, method, variant, seed, epoch)
        if not p.is_file():
            return None
        try:
            keys.append(read_explanation(p, tensors=False)[1].get("key"))
        except AuglensError:
            return None
    return config_hash({"explanations": keys, "baseline": exp.baseline, "seeds": exp.seeds,
                        "variants": list(exp.variants),
                        "analysis": exp.analysis.model_dump(mode="json"), "version": 2})


def _files_key(paths: list[Path], extra: Any) -> str | None:
    """A key over the keys stored in per-cell result files (None if one is missing)."""
    from .metrics.store import read_key

    keys = [read_key(p) for p in paths]
    if any(k is None for k in keys):
        return None
    return config_hash({"inputs": keys, "extra": extra, "version": 1})


# ----------------------------------------------------------------------------- run


def run_pipeline(
    exp: ExperimentConfig,
    run_dir: str | Path,
    executor: Executor | None = None,
    methods: tuple[str, ...] | None = None,
    n_images: int | None = None,
    force: set[str] = frozenset(),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run every stage (skipping cached work) and return paths and per-stage timings.

    ``methods`` / ``n_images`` override ``exp.explain``; ``force`` names stages to recompute.
    """
    run_dir = Path(run_dir)
    executor = executor or LocalExecutor()
    rep = reporter or Reporter()
    unknown = set(force) - set(STAGES)
    if unknown:
        raise AuglensError(f"unknown stage '{sorted(unknown)[0]}' for --force; valid stages: "
                           + ", ".join(STAGES))
    exp = _with_overrides(exp, methods, n_images)
    check_inputs(exp)
    write_json(run_dir / "experiment.json", exp.model_dump(mode="json"))
    ctx = _Run(exp, run_dir, executor, rep, set(force))
    perf = ctx.train()
    skipped = skipped_stages(exp)
    for stage in ("explain", "compare", "evaluate", "dissect", "report"):
        if stage in skipped:
            rep.message(f"[{stage}] skipped: {skipped[stage]}")
            continue
        if stage == "report":  # the report reads the timings and the skipped stages
            write_json(run_dir / "stages" / "timings.json", ctx.timings | {"skipped": skipped})
        t0 = time.perf_counter()
        getattr(ctx, stage)()
        rep.done(stage)
        ctx.timings[stage] = time.perf_counter() - t0
    write_json(run_dir / "stages" / "timings.json", ctx.timings | {"skipped": skipped})
    return {"performance": perf, "outputs": ctx.outputs, "timings": ctx.timings,
            "skipped": skipped}


@dataclass
class _Run:
    """The stages of one `run_pipeline` call, sharing the experiment and the executor."""

    exp: ExperimentConfig
    run_dir: Path
    executor: Executor
    rep: Reporter
    force: set[str]
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def _map(self, stage: str, fn: Callable[..., Any], tasks: list[tuple], label) -> None:
        for i, (_path, cached) in self.executor.map(fn, tasks):
            self.rep.advance(stage, label(tasks[i]) + (" (cached)" if cached else ""))

    def train(self) -> Any:
        from .analysis.run_a import write_table
        from .train.grid import cell_dir, cell_done
        from .train.matching import matching_table, performance_table

        t0 = time.perf_counter()
        run_dir, exp, cells = self.run_dir, self.exp, self.exp.cells()
        keep = {v: exp.analysis.matched and v == exp.baseline for v in exp.variants}
        todo = [(v, s, c) for v, s, c in cells
                if "train" in self.force or not cell_done(cell_dir(run_dir, v, s), c, keep[v])]
        self.rep.stage("train", len(cells), len(cells) - len(todo))
        events = self.executor.events()
        tasks = [(c.model_dump(mode="json"), str(cell_dir(run_dir, v, s)), f"{v}/seed{s}", events,
                  keep[v]) for v, s, c in todo]
        with self.rep.listen(events):
            for i, record in self.executor.map(_train_task, tasks):
                v, s, _ = todo[i]
                flag = "" if record["converged"] else ", NOT converged"
                self.rep.advance("train", f"{v}/seed{s}: test accuracy "
                                          f"{record['test']['accuracy']:.4f}, best epoch "
                                          f"{record['best_epoch']}/{record['epochs_trained']}"
                                          f"{flag} ({record['train_seconds']:.0f}s)")
        records = {(v, s): json.loads((cell_dir(run_dir, v, s) / "record.json").read_text())
                   for v, s, _ in cells}
        perf = performance_table(records, exp.analysis.failed_margin)
        write_table(perf, run_dir / "tables" / "performance.parquet")
        write_table(matching_table(records, exp.baseline),
                    run_dir / "tables" / "matching.parquet")
        for row in perf.itertuples():
            if not row.converged:
                self.rep.message(f"warning: {row.variant}/seed{row.seed} did not converge: "
                                 f"{row.stop_reason}; every comparison with it is marked")
            if row.failed:
                self.rep.message(
                    f"warning: {row.variant}/seed{row.seed} looks like a failed run (best "
                    f"validation accuracy {row.best_val_accuracy:.3f}, more than "
                    f"{exp.analysis.failed_margin:.2f} below its variant's other seeds); "
                    f"exclude it with --set 'analysis.exclude=[{row.variant}/seed{row.seed}]' "
                    "or add a seed")
        self.rep.done("train")
        self.timings["train"] = time.perf_counter() - t0
        return perf

    def explain(self) -> None:
        ec = self.exp.explain
        events = self.executor.events()
        tasks = [(c.model_dump(mode="json"), str(self.run_dir), v, s, m, ec.images_for(m),
                  "explain" in self.force, ec.params.get(m), ec.estimator_images, ec.batch_size,
                  events, e)
                 for v, s, c, e in self._explained() for m in ec.methods]
        self.rep.stage("explain", len(tasks), 0)
        with self.rep.listen(events):
            self._map("explain", _explain_task, tasks,
                      lambda t: f"{_cell_name(t[2], t[3], t[11])} {t[4]}")

    def _explained(self) -> list[tuple[str, int, CellConfig, int | None]]:
        """Every cell (final weights), plus the baseline checkpoints the accuracy-matched
        comparisons read: (variant, seed, cell config, epoch or None)."""
        out = [(v, s, c, None) for v, s, c in self.exp.cells()]
        base = {s: c for v, s, c in self.exp.cells() if v == self.exp.baseline}
        out += [(self.exp.baseline, s, base[s], e)
                for s, e in matched_checkpoints(self.exp, self.run_dir) if s in base]
        return out

    def compare(self) -> None:
        from .analysis.run_a import analyse_study_a

        methods = self.exp.explain.methods
        self.rep.stage("compare", len(methods), 0)
        for method in methods:
            key = _compare_key(self.exp, self.run_dir, method)
            self._aggregate("compare", f"compare-{method}", key, method,
                            lambda m=method: analyse_study_a(self.exp, self.run_dir, m))

    def evaluate(self) -> None:
        from .analysis.run_b import analyse_evaluation
        from .metrics.store import evaluation_path

        exp = self.exp
        tasks = [(c.model_dump(mode="json"), str(self.run_dir), v, s, m,
                  exp.evaluate.model_dump(mode="json"), "evaluate" in self.force, e)
                 for v, s, c, e in self._explained() for m in exp.explain.methods]
        self.rep.stage("evaluate", len(tasks) + 1, 0)
        self._map("evaluate", _evaluate_task, tasks,
                  lambda t: f"{_cell_name(t[2], t[3], t[7])} {t[4]}")
        paths = [evaluation_path(self.run_dir, m, v, s, e) for v, s, _, e in self._explained()
                 for m in exp.explain.methods]
        key = _files_key(paths, {"evaluate": exp.evaluate.model_dump(mode="json"),
                                 "analysis": exp.analysis.model_dump(mode="json"),
                                 "variants": exp.variants, "methods": exp.explain.methods})
        self._aggregate("evaluate", "evaluate", key, "tables",
                        lambda: analyse_evaluation(exp, self.run_dir))

    def dissect(self) -> None:
        from .analysis.run_b import analyse_dissection
        from .metrics.store import dissection_path

        exp = self.exp
        tasks = [(c.model_dump(mode="json"), str(self.run_dir), v, s,
                  exp.dissect.model_dump(mode="json"), "dissect" in self.force)
                 for v, s, c in exp.cells()]
        self.rep.stage("dissect", len(tasks) + 1, 0)
        self._map("dissect", _dissect_task, tasks, lambda t: f"{t[2]}/seed{t[3]}")
        paths = [dissection_path(self.run_dir, v, s) for v, s, _ in exp.cells()]
        key = _files_key(paths, {"variants": list(exp.variants)})
        self._aggregate("dissect", "dissect", key, "tables",
                        lambda: analyse_dissection(exp, self.run_dir))

    def report(self) -> None:
        from .report import build_report

        self.rep.stage("report", 1, 0)
        res = build_report(self.run_dir)
        self.outputs["report"] = res
        self.rep.advance("report", f"wrote {res.get('html', self.run_dir / 'report')}")

    def _aggregate(self, stage: str, name: str, key: str | None, label: str,
                   fn: Callable[[], dict[str, Path]]) -> None:
        """Run an aggregation step unless its manifest says the same inputs were done."""
        if stage not in self.force and key and _stage_done(self.run_dir, name, key):
            self.rep.advance(stage, f"{label} (cached)")
            self.outputs[name] = json.loads(_manifest(self.run_dir, name).read_text())["outputs"]
            return
        paths = fn()
        self.outputs[name] = [str(p) for p in paths.values()]
        write_json(_manifest(self.run_dir, name), {"key": key, "outputs": self.outputs[name]})
        self.rep.advance(stage, f"{label}: {len(paths)} tables and plots")
