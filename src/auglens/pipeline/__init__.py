"""One path through the stages of a run: `run_pipeline` (every stage, as `auglens run`),
`run_subset` (the subcommands), `make_plan` (`--dry-run`) — all over the `Stage` objects of
`auglens.pipeline.stages`, with content-addressed caching (each output keyed by exactly what it
depends on, see `auglens.rundir`), the run-directory lock and an executor. Every file is written
to a temporary name and renamed, so a run killed at any point resumes without redoing finished
work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..errors import AuglensError
from ..executors import Executor, LocalExecutor
from ..progress import Reporter
from ..rundir import RunDir, RunLock
from ..utils import write_json
from .stages import STAGE_TYPES, STAGES, Context, Stage, run_stages

__all__ = ["STAGES", "Plan", "RunLock", "check_inputs", "make_plan", "run_pipeline",
           "run_subset", "with_overrides"]


def with_overrides(exp: ExperimentConfig, methods: tuple[str, ...] | None = None,
                   n_images: int | None = None) -> ExperimentConfig:
    """The experiment with ``--method`` (replaces ``explain.methods``) and ``--n-images``
    (replaces ``explain.n_images``, the image count of every method; per-method ``limit`` still
    caps) folded in — the same meaning in `auglens run` and every subcommand."""
    update: dict[str, Any] = {}
    if methods:
        update["methods"] = list(dict.fromkeys(methods))
    if n_images is not None:
        update["n_images"] = n_images
    if not update:
        return exp
    from ..config import ExplainConfig

    ec = ExplainConfig.model_validate(exp.explain.model_dump() | update)
    return exp.model_copy(update={"explain": ec})


def check_inputs(exp: ExperimentConfig) -> None:
    """Fail early, with the loader's message naming the missing file, when the experiment's data
    (or its Broden probe) is not where the config says, or an adapter method (``captum:…``,
    ``pgc:…``: the config checks only the prefix) or its parameters do not exist."""
    from ..data.base import check_source
    from ..explain import EXPLAINERS

    ec = exp.explain
    for m in [*ec.methods, *ec.limit, *ec.params]:
        if ":" in m:
            valid = set(EXPLAINERS.describe(m)["params"]) - {"target_layer", "estimator"}
            bad = [k for k in ec.params.get(m, {}) if k not in valid]
            if bad:
                raise AuglensError(f"unknown parameter '{bad[0]}' for explainer '{m}'; valid: "
                                   + ", ".join(sorted(valid)))

    check_source(exp.data.name, exp.data.params())  # cheap: paths and layout, no decoding
    if exp.dissect.enabled and exp.dissect.probe == "broden":
        from ..data.broden import check_broden

        check_broden(exp.dissect.broden_root)


def _context(exp: ExperimentConfig, run_dir: str | Path | RunDir, executor: Executor | None,
             force: set[str] | frozenset[str], reporter: Reporter | None) -> Context:
    unknown = set(force) - set(STAGES)
    if unknown:
        raise AuglensError(f"unknown stage '{sorted(unknown)[0]}' for --force; valid stages: "
                           + ", ".join(STAGES))
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return Context(exp, run, executor or LocalExecutor(), reporter or Reporter(),
                   frozenset(force))


def run_pipeline(
    exp: ExperimentConfig,
    run_dir: str | Path | RunDir,
    executor: Executor | None = None,
    methods: tuple[str, ...] | None = None,
    n_images: int | None = None,
    force: set[str] | frozenset[str] = frozenset(),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Every stage (skipping cached work) → ``performance``, ``outputs``, ``timings``,
    ``skipped``. ``methods`` / ``n_images`` override ``exp.explain``; ``force`` names stages to
    recompute. The caller holds the run lock."""
    exp = with_overrides(exp, methods, n_images)
    check_inputs(exp)
    ctx = _context(exp, run_dir, executor, force, reporter)
    write_json(ctx.run.experiment, exp.model_dump(mode="json"))
    res = run_stages(ctx, STAGES)
    return {"performance": ctx.outputs.get("performance"), "outputs": ctx.outputs} | res


def run_subset(exp: ExperimentConfig, run_dir: str | Path | RunDir, names: tuple[str, ...],
               executor: Executor | None = None, force: set[str] | frozenset[str] = frozenset(),
               reporter: Reporter | None = None) -> dict[str, Any]:
    """Some stages on an existing run directory (the subcommands): same tasks, keys, caching
    and aggregation as `run_pipeline`. The caller holds the run lock."""
    ctx = _context(exp, run_dir, executor, force, reporter)
    res = run_stages(ctx, names)
    return {"outputs": ctx.outputs} | res


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


def make_plan(exp: ExperimentConfig, run_dir: str | Path | RunDir,
              methods: tuple[str, ...] | None = None, n_images: int | None = None,
              force: set[str] | frozenset[str] = frozenset()) -> Plan:
    """Which tasks and aggregations of each stage are cached, asked of the same `Stage` objects
    a run uses. A stage is "to run" wherever an input it reads is not there yet."""
    exp = with_overrides(exp, methods, n_images)
    check_inputs(exp)
    ctx = _context(exp, run_dir, None, force, Reporter(quiet=True))
    plan = Plan()
    redo: dict[str, set] = {name: set() for name in STAGES}  # what each stage recomputes

    def upstream(name: str, task: Any) -> str:
        """Why ``task`` must rerun because of work an earlier stage redoes ("" if none)."""
        cell = (task.variant, task.seed)
        if cell in redo["train"]:
            return "its cell is retrained"
        if name == "evaluate" and (cell, task.epoch, task.method) in redo["explain"]:
            return "its explanation is recomputed"
        if name == "evaluate" and task.method == "random" and (
                cell, None, exp.explain.methods[0]) in redo["explain"]:
            return "the explanation its random maps replace is recomputed"
        return ""

    for name in STAGES[:-1]:
        stage: Stage = STAGE_TYPES[name](ctx)
        why = stage.skip_reason()
        if why:
            plan.skipped[name] = why
            continue
        todo, cached = plan.todo.setdefault(name, []), plan.cached.setdefault(name, [])
        for task in stage.tasks():
            why = f"--force {name}" if stage.forced else (upstream(name, task)
                                                          or stage.status(task))
            if not why:
                cached.append(task.label)
                continue
            todo.append(f"{task.label}  ({why})")
            cell = (task.variant, task.seed)
            redo[name].add(cell if name in ("train", "dissect")
                           else (cell, task.epoch, getattr(task, "method", None)))
        inputs_redone = bool(redo["train"]) or (name == "compare" and redo["explain"]) or bool(
            redo[name])
        for agg in stage.aggregations():
            done = not inputs_redone and stage.aggregation_cached(agg)
            (cached if done else todo).append(f"{agg.label} (tables)")
        if name == "train" and redo["train"]:
            if exp.analysis.matched and len(exp.variants) > 1:
                plan.notes.append("explain/evaluate: + the accuracy-matched baseline "
                                  "checkpoints, chosen after training")
    plan.notes += [f"damaged file {rel}: it will be recomputed" for rel in sorted(ctx.run.damaged)]
    return plan
