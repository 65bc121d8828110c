"""The stages of a run as objects with the same four questions: which tasks (and are they
cached), which aggregations (and their keys), run me, aggregate me. `auglens run`, its dry-run
plan and every subcommand (`explain`, `compare`, `evaluate`, `dissect`, `report`) walk them.

    train (one task per variant × seed) → explain (cell × method, plus the accuracy-matched
    baseline checkpoints) → compare (Study A, per method) / evaluate (cell × method, then Study B
    tables) / dissect (cell, then tables) → sanity (baseline cell × method, then verdicts) →
    report
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import CellConfig, ExperimentConfig
from ..executors import Executor
from ..progress import Reporter
from ..rundir import ROOT_METHOD, RunDir, content_key
from .tasks import (
    CellTask,
    DissectTask,
    EvaluateTask,
    ExplainTask,
    SanityTask,
    TrainTask,
    execute,
)

STAGES = ("train", "explain", "compare", "evaluate", "dissect", "sanity", "report")


@dataclass
class Context:
    """What every stage of one invocation shares."""

    exp: ExperimentConfig
    run: RunDir
    executor: Executor
    rep: Reporter
    force: frozenset[str] = frozenset()
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregation:
    """A stage's table-writing step: cached while ``key`` equals the manifest's and every output
    listed there exists (``key`` None: its inputs are incomplete — always run)."""

    name: str
    key: str | None
    run: Callable[[], dict[str, Path]]
    label: str


class Stage:
    """Base: subclasses set ``name`` and override what applies."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def forced(self) -> bool:
        return self.name in self.ctx.force

    def skip_reason(self) -> str | None:
        """Why the stage does not apply to this experiment (None: it does)."""
        return None

    def tasks(self) -> list[CellTask]:
        return []

    def status(self, task: CellTask) -> str:
        """Why ``task`` must run ("" when its output exists intact with the right key; cheap:
        headers, and hashes of weights cached per process)."""
        return "not computed yet"

    def cached(self, task: CellTask) -> bool:
        return not self.status(task)

    def _file_status(self, path: Path, key: str) -> str:
        """"" if ``path`` carries ``key``; else why not (missing, damaged, stale)."""
        got = self.ctx.run.key_of(path)
        if got == key:
            return ""
        if got is None:
            return "damaged" if self.ctx.run.relative(path) in self.ctx.run.damaged \
                else "not computed yet"
        return "inputs changed"

    def aggregations(self) -> list[Aggregation]:
        return []

    def aggregation_cached(self, agg: Aggregation) -> bool:
        return not self.forced and self.ctx.run.manifest_outputs(agg.name, agg.key) is not None

    def run(self) -> None:
        """Run the uncached tasks on the executor, then `finish`, then the aggregations."""
        ctx = self.ctx
        tasks = self.tasks()
        todo = tasks if self.forced else [t for t in tasks if not self.cached(t)]
        self.report_damaged()
        aggs = self.aggregations()
        ctx.rep.stage(self.name, len(tasks) + len(aggs),
                      len(tasks) - len(todo) + sum(self.aggregation_cached(a) for a in aggs))
        events = ctx.executor.events()
        with ctx.rep.listen(events):
            for i, result in ctx.executor.map(execute, [(t, events) for t in todo]):
                ctx.rep.advance(self.name, self.describe(todo[i], result))
        self.finish()
        for agg in self.aggregations():  # keys may depend on what the tasks wrote
            outs = None if self.forced else ctx.run.manifest_outputs(agg.name, agg.key)
            self.report_damaged()
            if outs is not None:
                ctx.rep.advance(self.name, f"{agg.label} (cached)")
                ctx.outputs[agg.name] = outs
                continue
            paths = [Path(p) for p in agg.run().values()]
            ctx.run.write_manifest(agg.name, agg.key, paths)
            ctx.outputs[agg.name] = paths
            ctx.rep.advance(self.name, f"{agg.label}: {len(paths)} tables and plots")

    def describe(self, task: CellTask, result: Any) -> str:
        return task.label

    def report_damaged(self) -> None:
        """One line per damaged file found by the checks (it is recomputed, never trusted)."""
        run = self.ctx.run
        for rel in sorted(run.damaged - run.reported):
            self.ctx.rep.message(f"[{self.name}] damaged file {rel}: recomputing it")
        run.reported |= run.damaged

    def finish(self) -> None:
        """After the tasks, before the aggregations."""

    # ------------------------------------------------------------------ shared helpers
    def cells(self) -> list[tuple[str, int, CellConfig]]:
        return self.ctx.exp.cells()

    def explained(self) -> list[tuple[str, int, CellConfig, int | None]]:
        """Every cell (final weights), plus the baseline checkpoints the accuracy-matched
        comparisons read: (variant, seed, cell config, epoch or None)."""
        from ..train.matching import matched_checkpoints

        exp = self.ctx.exp
        out = [(v, s, c, None) for v, s, c in self.cells()]
        base = {s: c for v, s, c in self.cells() if v == exp.baseline}
        out += [(exp.baseline, s, base[s], e)
                for s, e in matched_checkpoints(exp, self.ctx.run) if s in base]
        return out


class TrainStage(Stage):
    name = "train"

    def _keep(self, variant: str) -> bool:
        exp = self.ctx.exp
        return exp.analysis.matched and variant == exp.baseline

    def tasks(self) -> list[CellTask]:
        root = str(self.ctx.run.root)
        return [TrainTask(c.model_dump(mode="json"), root, v, s,
                          keep_checkpoints=self._keep(v)) for v, s, c in self.cells()]

    def status(self, task: CellTask) -> str:
        from ..keys import cell_inputs, describe_change

        run, cfg = self.ctx.run, task.config
        inputs = cell_inputs(cfg)
        if run.cell_done(task.variant, task.seed, content_key(inputs), self._keep(task.variant)):
            return ""
        rec = run.record(task.variant, task.seed)
        if rec is None:
            return "not trained yet"
        if rec.raw.get("key") == content_key(inputs):
            rel = {run.relative(run.weights(task.variant, task.seed))}
            if run.damaged & rel:
                return "weights damaged"
            return "checkpoints missing or damaged" if self._keep(task.variant) else "damaged"
        return describe_change(rec.raw.get("key_inputs"), inputs)

    def describe(self, task: CellTask, record: Any) -> str:
        flag = "" if record["converged"] else ", NOT converged"
        return (f"{task.label}: test accuracy {record['test']['accuracy']:.4f}, best epoch "
                f"{record['best_epoch']}/{record['epochs_trained']}{flag} "
                f"({record['train_seconds']:.0f}s)")

    def _records(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(v, s): dict(self.ctx.run.record(v, s).raw) for v, s, _ in self.cells()}

    def aggregations(self) -> list[Aggregation]:
        """tables/performance (convergence, failed runs) and tables/matching (the accuracy-
        matched baseline checkpoints), keyed by the cells' keys."""
        exp, run = self.ctx.exp, self.ctx.run
        recs = [run.record(v, s) for v, s, _ in self.cells()]
        key = None if any(r is None for r in recs) else content_key(
            {"cells": [r.raw.get("key") for r in recs], "baseline": exp.baseline,
             "failed_margin": exp.analysis.failed_margin, "version": 1})
        return [Aggregation("train", key, self._tables, "performance and matching")]

    def _tables(self) -> dict[str, Path]:
        from ..rundir import write_table
        from ..train.matching import matching_table, performance_table

        exp, run = self.ctx.exp, self.ctx.run
        records = self._records()
        perf = performance_table(records, exp.analysis.failed_margin)
        return {"performance": write_table(perf, run.table("performance")),
                "matching": write_table(matching_table(records, exp.baseline),
                                        run.table("matching"))}

    def finish(self) -> None:
        from ..train.matching import performance_table

        ctx, exp = self.ctx, self.ctx.exp
        perf = performance_table(self._records(), exp.analysis.failed_margin)
        ctx.outputs["performance"] = perf
        for row in perf.itertuples():
            if not row.converged:
                ctx.rep.message(f"warning: {row.variant}/seed{row.seed} did not converge: "
                                f"{row.stop_reason}; every comparison with it is marked")
            if row.failed:
                ctx.rep.message(
                    f"warning: {row.variant}/seed{row.seed} looks like a failed run (best "
                    f"validation accuracy {row.best_val_accuracy:.3f}, more than "
                    f"{exp.analysis.failed_margin:.2f} below its variant's other seeds); "
                    f"exclude it with --set 'analysis.exclude=[{row.variant}/seed{row.seed}]' "
                    "or add a seed")


class ExplainStage(Stage):
    name = "explain"

    def tasks(self) -> list[CellTask]:
        ec, root = self.ctx.exp.explain, str(self.ctx.run.root)
        return [ExplainTask(c.model_dump(mode="json"), root, v, s, e, method=m,
                            n_images=ec.images_for(m), params=ec.params.get(m),
                            estimator_images=ec.estimator_images, batch_size=ec.batch_size,
                            force=self.forced)
                for v, s, c, e in self.explained() for m in ec.methods]

    def status(self, task: CellTask) -> str:
        from ..data import load_dataset
        from ..explain.store import explanation_key

        assert isinstance(task, ExplainTask)
        run, cfg = self.ctx.run, task.config
        rec = run.record(task.variant, task.seed)
        if rec is None:
            return "cell not trained yet"
        try:
            sha = rec.weights(task.epoch)
        except Exception:  # noqa: BLE001 - no such checkpoint
            return "checkpoint missing"
        n_test = len(load_dataset(cfg).test)
        n = n_test if task.n_images is None else min(task.n_images, n_test)
        key = explanation_key(cfg, sha, task.method, n, task.params, task.estimator_images)
        return self._file_status(run.explanation(task.method, task.variant, task.seed,
                                                 task.epoch), key)


def control_cells(exp: ExperimentConfig) -> list[tuple[str, int]]:
    """The cells whose maps the random-map control replaces: the final baseline of every seed."""
    return [(v, s) for v, s, _ in exp.cells() if v == exp.baseline]


class CompareStage(Stage):
    name = "compare"

    def skip_reason(self) -> str | None:
        if len(self.ctx.exp.variants) < 2:
            return "only the baseline variant: nothing to compare"
        return None

    def aggregations(self) -> list[Aggregation]:
        from ..analysis.run_a import analyse_study_a

        exp, run = self.ctx.exp, self.ctx.run
        out = []
        for method in exp.explain.methods:
            out.append(Aggregation(f"compare-{method}", self.key(method),
                                   lambda m=method: analyse_study_a(exp, run, m), method))
        from ..analysis.composition import analyse_composition, composition_pairs

        if composition_pairs(exp) and ROOT_METHOD in exp.explain.methods:
            key = self.key(ROOT_METHOD)
            out.append(Aggregation("composition", key and content_key({"compare": key, "v": 1}),
                                   lambda: analyse_composition(exp, run), "composition"))
        return out

    def key(self, method: str) -> str | None:
        """Over the keys of every explanation Study A reads, and the analysis settings."""
        exp, run = self.ctx.exp, self.ctx.run
        keys = [run.key_of(run.explanation(method, v, s, e)) for v, s, _, e in self.explained()]
        if any(k is None for k in keys):
            return None
        return content_key({"explanations": keys, "baseline": exp.baseline, "seeds": exp.seeds,
                            "variants": list(exp.variants),
                            "analysis": exp.analysis.model_dump(mode="json"), "version": 3})


class EvaluateStage(Stage):
    name = "evaluate"

    def skip_reason(self) -> str | None:
        ev = self.ctx.exp.evaluate
        if not ev.enabled:
            return "evaluate.enabled is false"
        if not (ev.alignment or ev.faithfulness):
            return "evaluate.alignment and evaluate.faithfulness are both false"
        return None

    def run(self) -> None:
        """First the random-map control's explanations (pseudo-method ``random``) of every
        baseline seed — cheap, keyed by their source explanation — then the evaluations."""
        from ..analysis.controls import random_explanation

        exp = self.ctx.exp
        for variant, seed in control_cells(exp):
            random_explanation(self.ctx.run, exp.explain.methods[0], variant, seed,
                               exp.sanity.seed)
        super().run()

    def tasks(self) -> list[CellTask]:
        exp, root = self.ctx.exp, str(self.ctx.run.root)
        ecfg = exp.evaluate.model_dump(mode="json")
        from ..analysis.controls import RANDOM_METHOD

        base = {s: c for v, s, c in self.cells() if v == exp.baseline}
        return [EvaluateTask(c.model_dump(mode="json"), root, v, s, e, method=m, evaluate=ecfg,
                             force=self.forced)
                for v, s, c, e in self.explained() for m in exp.explain.methods] + [
            EvaluateTask(base[s].model_dump(mode="json"), root, v, s, None, method=RANDOM_METHOD,
                         evaluate=ecfg, force=self.forced) for v, s in control_cells(exp)]

    def status(self, task: CellTask) -> str:
        from ..metrics.store import evaluate_key

        assert isinstance(task, EvaluateTask)
        run, ecfg = self.ctx.run, self.ctx.exp.evaluate
        expl = run.key_of(run.explanation(task.method, task.variant, task.seed, task.epoch))
        if expl is None:
            return "explanation not computed yet"
        key = evaluate_key(expl, ecfg, task.config)
        why = self._file_status(run.evaluation(task.method, task.variant, task.seed,
                                               task.epoch), key)
        if why or not ecfg.faithfulness:
            return why
        return self._file_status(run.curves(task.method, task.variant, task.seed, task.epoch),
                                 key)

    def aggregations(self) -> list[Aggregation]:
        from ..analysis.run_b import analyse_evaluation

        exp, run = self.ctx.exp, self.ctx.run
        keys = [run.key_of(run.evaluation(t.method, t.variant, t.seed, t.epoch))
                for t in self.tasks()]
        key = None if any(k is None for k in keys) else content_key(
            {"inputs": keys, "evaluate": exp.evaluate.model_dump(mode="json"),
             "analysis": exp.analysis.model_dump(mode="json"), "variants": exp.variants,
             "methods": exp.explain.methods, "version": 4})
        from ..analysis.label_study import analyse_label_study, crossing

        aggs = [Aggregation("evaluate", key, lambda: analyse_evaluation(exp, run), "tables")]
        if crossing(exp):  # the label-mixing study's table
            aggs.append(Aggregation("label-study", key and content_key({"evaluate": key, "v": 1}),
                                    lambda: analyse_label_study(exp, run), "label study"))
        return aggs


class DissectStage(Stage):
    name = "dissect"

    def skip_reason(self) -> str | None:
        from ..data import load_dataset

        exp = self.ctx.exp
        if not exp.dissect.enabled:
            return "dissect.enabled is false"
        if exp.dissect.probe == "dataset":
            data = load_dataset(exp.cells()[0][2])
            if data.test.concepts is None or not data.concept_names:
                return (f"dataset '{exp.data.name}' has no concept labels (set "
                        "dissect.probe=broden and dissect.broden_root to dissect on Broden)")
        return None

    def tasks(self) -> list[CellTask]:
        exp, root = self.ctx.exp, str(self.ctx.run.root)
        dcfg = exp.dissect.model_dump(mode="json")
        return [DissectTask(c.model_dump(mode="json"), root, v, s, dissect=dcfg,
                            force=self.forced) for v, s, c in self.cells()]

    def status(self, task: CellTask) -> str:
        from ..metrics.store import dissect_key

        rec = self.ctx.run.record(task.variant, task.seed)
        if rec is None:
            return "cell not trained yet"
        key = dissect_key(task.config, rec.weights_sha256, self.ctx.exp.dissect)
        return self._file_status(self.ctx.run.dissection(task.variant, task.seed), key)

    def aggregations(self) -> list[Aggregation]:
        from ..analysis.run_b import analyse_dissection

        exp, run = self.ctx.exp, self.ctx.run
        keys = [run.key_of(run.dissection(v, s)) for v, s, _ in self.cells()]
        key = None if any(k is None for k in keys) else content_key(
            {"inputs": keys, "variants": list(exp.variants), "version": 2})
        return [Aggregation("dissect", key, lambda: analyse_dissection(exp, run), "tables")]


class SanityStage(Stage):
    """Cascading model-parameter randomisation and the random-logit test of each method on the
    baseline cells (``sanity.cells: all``: every cell), then one verdict per cell and method."""

    name = "sanity"

    def skip_reason(self) -> str | None:
        from ..analysis.controls import sanity_targets

        if not self.ctx.exp.sanity.enabled:
            return "sanity.enabled is false"
        if not sanity_targets(self.ctx.exp):
            return "no method to check (rollout has no sanity check)"
        return None

    def tasks(self) -> list[CellTask]:
        from ..analysis.controls import sanity_targets

        exp, root = self.ctx.exp, str(self.ctx.run.root)
        cfgs = {(v, s): c for v, s, c in self.cells()}
        scfg = exp.sanity.model_dump(mode="json")
        return [SanityTask(cfgs[(v, s)].model_dump(mode="json"), root, v, s, method=m,
                           sanity=scfg, params=exp.explain.params.get(m),
                           estimator_images=exp.explain.estimator_images, force=self.forced)
                for v, s, m in sanity_targets(exp)]

    def status(self, task: CellTask) -> str:
        from ..analysis.controls import sanity_key

        assert isinstance(task, SanityTask)
        rec = self.ctx.run.record(task.variant, task.seed)
        if rec is None:
            return "cell not trained yet"
        key = sanity_key(task.config, rec.weights_sha256, task.method, self.ctx.exp.sanity,
                         task.params, task.estimator_images)
        return self._file_status(self.ctx.run.sanity(task.method, task.variant, task.seed), key)

    def aggregations(self) -> list[Aggregation]:
        from ..analysis.controls import analyse_sanity, sanity_targets

        exp, run = self.ctx.exp, self.ctx.run
        keys = [run.key_of(run.sanity(m, v, s)) for v, s, m in sanity_targets(exp)]
        key = None if any(k is None for k in keys) else content_key(
            {"inputs": keys, "version": 1})
        return [Aggregation("sanity", key, lambda: analyse_sanity(exp, run), "verdicts")]


class ReportStage(Stage):
    name = "report"

    def run(self) -> None:
        from ..report import build_report

        ctx = self.ctx
        ctx.rep.stage("report", 1, 0)
        res = build_report(ctx.run.root)
        ctx.outputs["report"] = res
        ctx.rep.advance("report", f"wrote {res.get('html', ctx.run.report_dir)}")


STAGE_TYPES: dict[str, type[Stage]] = {s.name: s for s in (
    TrainStage, ExplainStage, CompareStage, EvaluateStage, DissectStage, SanityStage,
    ReportStage)}


def run_stages(ctx: Context, names: tuple[str, ...]) -> dict[str, Any]:
    """Run the named stages in pipeline order (skipping those that do not apply, with the reason)
    → ``timings`` (seconds per stage) and ``skipped`` (stage → reason), also written to
    ``stages/timings.json`` (merged with earlier stage times)."""
    import json

    from ..utils import write_json

    try:
        timings = json.loads(ctx.run.timings.read_text())
    except (OSError, ValueError):
        timings = {}
    skipped = dict(timings.pop("skipped", {}) or {})
    for name in STAGES:
        if name not in names:
            continue
        stage = STAGE_TYPES[name](ctx)
        why = stage.skip_reason()
        if why:
            skipped[name] = why
            ctx.rep.message(f"[{name}] skipped: {why}")
            continue
        skipped.pop(name, None)
        if name == "report":  # the report reads the timings and the skipped stages
            write_json(ctx.run.timings, timings | {"skipped": skipped})
        t0 = time.perf_counter()
        stage.run()
        ctx.rep.done(name)
        timings[name] = time.perf_counter() - t0
    write_json(ctx.run.timings, timings | {"skipped": skipped})
    return {"timings": timings, "skipped": skipped}
