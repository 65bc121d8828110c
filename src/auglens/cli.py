"""Command line: ``auglens list | train | run | explain | compare | evaluate | dissect | report |
replicate``.

Every user error exits 2 with a one-line message."""

from __future__ import annotations

import argparse
import errno
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import AuglensError


def _presets() -> tuple[str, ...]:
    """Names of the YAML files shipped in ``auglens/presets``."""
    root = resources.files("auglens") / "presets"
    return tuple(sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")))


PRESETS = _presets()


def _preset_raw(name: str) -> dict[str, Any]:
    from .config import read_yaml

    if name not in PRESETS:
        raise AuglensError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    with resources.as_file(resources.files("auglens") / "presets" / f"{name}.yaml") as p:
        return read_yaml(p)


def _parse_augment(text: str) -> list[dict[str, Any]]:
    """``affine`` or ``affine+cutmix`` (composition) → augmentation spec list; ``none`` → []."""
    names = [n.strip() for n in text.split("+") if n.strip()]
    return [{"name": n} for n in names if n != "none"]


def cmd_list(args: argparse.Namespace) -> int:
    from .augment import AUGMENTATIONS
    from .data import DATASETS
    from .explain import EXPLAINERS
    from .metrics import METRICS
    from .models import MODELS

    for title, reg in (
        ("datasets", DATASETS),
        ("models", MODELS),
        ("augmentations", AUGMENTATIONS),
        ("explainers", EXPLAINERS),
        ("metrics", METRICS),
    ):
        print(f"{title}:")
        for name in reg.names():
            d = reg.describe(name)
            params = ", ".join(f"{k}={v!r}" for k, v in d["params"].items())
            print(f"  {name:<16} {d['doc']}")
            if params:
                print(f"  {'':<16} params: {params}")
    print(f"presets:\n  {', '.join(PRESETS)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import CellConfig, load_config
    from .train import train_cell
    from .utils import check_writable_dir

    raw: dict[str, Any] = {
        "model": {"name": args.model},
        "augment": _parse_augment(args.augment),
        "seed": args.seed,
    }
    if args.dataset:
        raw["data"] = {"name": args.dataset}
    cfg = load_config(CellConfig, raw, args.set, source="train")
    out = check_writable_dir(args.out)

    def show(e: dict[str, Any]) -> None:
        if not args.quiet:
            print(
                f"epoch {e['epoch']}: train loss {e['train_loss']:.3f} "
                f"acc {e['train_accuracy']:.3f}"
                f" | val loss {e['val_loss']:.3f} acc {e['val_accuracy']:.3f}"
                f" | {e['seconds']:.0f}s",
                flush=True,
            )

    result = train_cell(cfg, out, progress=show)
    t = result.record["test"]
    print(f"test accuracy {t['accuracy']:.4f}, macro F1 {t['f1']:.4f}; wrote {out}")
    return 0


def _load_experiment(args: argparse.Namespace):
    from .config import ExperimentConfig, load_config, read_yaml

    if args.experiment:
        raw, source = read_yaml(args.experiment), str(args.experiment)
    else:
        raw, source = _preset_raw(args.preset), f"preset {args.preset}"
    overrides = list(args.set)
    if getattr(args, "seeds", None):
        overrides.append(f"seeds=[{','.join(str(s) for s in _parse_seeds(args.seeds))}]")
    return load_config(ExperimentConfig, raw, overrides, source=source)


def _parse_seeds(text: str) -> list[int]:
    """``3,4,5`` or ``3-5`` → [3, 4, 5]; anything else is a one-line error."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise AuglensError(f"--seeds expects integers like 3,4,5 or 3-5, got '{text}'")
    return seeds


def _run_dir_experiment(run_dir: Path, overrides: list[str]):
    """The experiment stored in a run directory (written by `auglens run`)."""
    import json

    from .config import ExperimentConfig, load_config
    from .rundir import RunDir

    path = RunDir(run_dir).experiment
    if not path.is_file():
        raise AuglensError(
            f"{run_dir} is not a run directory (no experiment.json); create one with `auglens run`"
        )
    return load_config(ExperimentConfig, json.loads(path.read_text()), overrides, source=str(path))


def _subcommand(args: argparse.Namespace, names: tuple[str, ...], methods=None,
                n_images: int | None = None, force: bool = False) -> dict[str, Any]:
    """Run stages ``names`` of the run directory ``args.run_dir`` in this process, under its lock,
    printing one line per task — the same stages, keys and caching as `auglens run`."""
    from .executors import LocalExecutor
    from .pipeline import run_subset, with_overrides
    from .progress import Reporter
    from .rundir import RunDir

    run = RunDir(args.run_dir)
    exp = with_overrides(_run_dir_experiment(run.root, args.set), methods, n_images)
    with run.lock(wait=getattr(args, "wait", False)):
        run.clean_temporaries()
        return run_subset(exp, run, names, LocalExecutor(1),
                          set(names) if force else set(), Reporter())


def cmd_explain(args: argparse.Namespace) -> int:
    _subcommand(args, ("explain",), tuple(args.method or ()), args.n_images, args.force)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .rundir import RunDir

    methods = (args.method,) if args.method else None
    _subcommand(args, ("compare",), methods, force=args.force)
    method = args.method or _run_dir_experiment(args.run_dir, args.set).explain.methods[0]
    run = RunDir(args.run_dir)
    summary = pd.read_parquet(run.table("summary_a", method))
    s = summary[(summary.target == "predicted") & (summary.reference == "final")
                & summary.metric.isin(["pearson", "spearman", "overlap@5", "overlap@20"])]
    print(s.pivot(index="variant", columns="metric", values="mean").round(3).to_string())
    print(f"wrote tables to {run.tables(method)} and plots to {run.plots(method)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from .rundir import RunDir

    _subcommand(args, ("evaluate",), tuple(args.method or ()), force=args.force)
    run = RunDir(args.run_dir)
    s = pd.read_parquet(run.table("summary_b"))
    keep = ["energy_pointing_game", "effective_heat_ratio", "delta_del", "delta_ins"]
    s = s[s.metric.isin(keep) & (s.reference == "final")]
    print(s.pivot_table(index=["method", "variant"], columns="metric", values="mean",
                        sort=False).round(3).to_string())
    print(f"wrote tables to {run.tables()} and plots to {run.plots()}")
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    import pandas as pd

    from .rundir import RunDir

    res = _subcommand(args, ("sanity",), force=args.force)
    if "sanity" in (res.get("skipped") or {}):
        return 0  # the reason is printed by the stage
    run = RunDir(args.run_dir)
    v = pd.read_parquet(run.table("sanity_verdicts"))
    print(v.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {run.table('sanity_summary')}")
    return 0


def cmd_dissect(args: argparse.Namespace) -> int:
    import pandas as pd

    from .rundir import RunDir

    _subcommand(args, ("dissect",), force=args.force)
    run = RunDir(args.run_dir)
    s = pd.read_parquet(run.table("dissection_summary"))
    print(s.pivot_table(index="variant", columns="category", values="unique_concepts",
                        sort=False).round(2).to_string())
    print(f"wrote {run.table('dissection')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    res = _subcommand(args, ("report",))["outputs"]["report"]
    print(f"wrote {res['html']} and {res['markdown']}")
    for sid, reasons in (res.get("missing") or {}).items():
        for r in reasons:
            print(f"  {res['titles'][sid]} ({res['sections'][sid]}): {r}")
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    from .analysis.replicate import replicate
    from .utils import write_json

    table, summary = replicate(args.run_a, args.run_b)
    print(f"replication: seeds {summary['seeds_a']} ({args.run_a}) vs {summary['seeds_b']} "
          f"({args.run_b})")
    if summary["differences"]:
        print(f"  warning: the experiments also differ in: {', '.join(summary['differences'])}")
    for study, r in summary["by_study"].items():
        print(f"  Study {study}: {r['agreement']:.1%} of {r['n']} verdicts agree")
    print(f"  overall: {summary['agreement']:.1%} of {summary['n']} verdicts agree")
    dis = table[~table.agree]
    if len(dis):
        cols = [c for c in ("study", "method", "variant", "metric", "verdict_a", "verdict_b")
                if c in dis]
        print("  disagreements:\n" + dis[cols].to_string(index=False))
    if args.out:
        table.to_parquet(args.out.with_suffix(".parquet"), index=False)
        write_json(args.out.with_suffix(".json"), summary)
        print(f"wrote {args.out.with_suffix('.parquet')} and .json")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .executors import make_executor
    from .pipeline import make_plan, run_pipeline
    from .progress import LogFile, Reporter, RichReporter
    from .rundir import RunDir
    from .utils import check_writable_dir

    exp = _load_experiment(args)
    out = args.out or Path("runs") / exp.name
    methods = tuple(args.method) if args.method else None
    force = set(args.force)
    if args.dry_run:
        cells = exp.cells()
        print(f"{exp.name}: {len(exp.variants)} variants × {len(exp.seeds)} seeds = "
              f"{len(cells)} cells → {out}")
        width = max(16, *(len(v) for v in exp.variants))
        for variant, spec in exp.variants.items():
            desc = " + ".join(
                a["name"] + (f"({', '.join(f'{k}={v}' for k, v in a.items() if k != 'name')})"
                             if len(a) > 1 else "") for a in spec) or "(no augmentation)"
            print(f"  {variant:<{width}} {desc}")
        print("\n".join(make_plan(exp, out, methods, args.n_images, force).lines()))
        from .executors import executor_plan

        print("\n".join(executor_plan(args.executor, args.workers, exp.train.device).lines()))
        return 0
    check_writable_dir(out)
    run = RunDir(out)
    executor = make_executor(args.executor, args.workers, args.address, exp.train.threads,
                             device=exp.train.device)
    log = LogFile(run.log)
    t0 = time.perf_counter()
    with run.lock(wait=args.wait):
        log(f"auglens run {exp.name} → {out} (executor {args.executor})")
        stale = run.clean_temporaries()
        if stale:
            log(f"removed {stale} temporary files left by an interrupted run")
        try:
            if args.quiet:
                rep = Reporter(quiet=True, log=log)
                with rep.warnings_logged():
                    result = run_pipeline(exp, out, executor, methods, args.n_images, force, rep)
            else:
                with RichReporter(log) as rep, rep.warnings_logged():
                    rep.message(f"{exp.name}: {len(exp.variants)} variants × {len(exp.seeds)} "
                                f"seeds → {out}")
                    result = run_pipeline(exp, out, executor, methods, args.n_images, force, rep)
        finally:
            executor.close()
        log(f"finished in {time.perf_counter() - t0:.0f}s")
    if not args.quiet:
        _print_summary(out, result, time.perf_counter() - t0)
    return 0


def _print_summary(out: Path, result: dict[str, Any], seconds: float) -> None:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    perf = result["performance"]
    acc = perf.groupby("variant", sort=False).agg(
        mean=("accuracy", "mean"), std=("accuracy", "std"), conv=("converged", "sum"),
        n=("converged", "size"), failed=("failed", "sum"))

    from .rundir import RunDir

    run = RunDir(out)

    def read(name: str) -> pd.DataFrame | None:
        path = run.table(name)
        return pd.read_parquet(path) if path.is_file() else None

    summary, summary_b = read("summary_a"), read("summary_b")
    if summary is not None:
        summary = summary[summary.target == "predicted"]
    if summary_b is not None:
        summary_b = summary_b[summary_b.method == summary_b.method.iloc[0]]
    table = Table(title=f"auglens run: {out}  ({seconds:.0f}s)")
    for col in ("variant", "test acc ± sd", "conv."):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    cols_a = ["spearman"] if summary is not None else []
    cols_b = ["energy_pointing_game", "delta_ins"] if summary_b is not None else []
    names = {"energy_pointing_game": "energy PG", "delta_ins": "ΔIns"}
    for c in cols_a + cols_b:
        table.add_column(f"{names.get(c, c)} [95% CI]", justify="right", no_wrap=True)
    if cols_a or cols_b:
        table.add_column("vs acc.-matched", justify="right", no_wrap=True)
    for variant, row in acc.iterrows():
        mark = " ‡" if row["failed"] else ""
        cells = [f"{row['mean']:.3f} ± {0 if pd.isna(row['std']) else row['std']:.3f}",
                 f"{int(row['conv'])}/{int(row['n'])}" + ("" if row["conv"] == row["n"] else " †")]
        cells += [_ci_cell(summary, variant, c) for c in cols_a]
        cells += [_ci_cell(summary_b, variant, c) for c in cols_b]
        if cols_a or cols_b:
            cells.append(" ".join(filter(None, (_ci_cell(summary, variant, cols_a[0], "matched",
                                                         short=True) if cols_a else "",
                                                _ci_cell(summary_b, variant, cols_b[-1],
                                                         "matched", short=True)
                                                if cols_b else ""))))
        table.add_row(variant + mark, *cells)
    if summary is not None:
        table.add_row("noise floor", "", "", *[_ci_cell(summary, "noise_floor", c) for c in cols_a],
                      *["" for _ in cols_b], "")
    console = Console()
    if not console.is_terminal or console.width < 150:
        console = Console(width=150)
    console.print(table)
    notes = ["verdicts from the 95 % CI over training runs and images: Study A (spearman) "
             "against the seed noise floor — beyond / within / closer / undec.(ided); "
             "Study B against the baseline — higher / lower / same / undec.; 'vs acc.-matched' "
             "= the same verdicts against the baseline checkpoint of equal accuracy"]
    if (acc["conv"] < acc["n"]).any():
        notes.append("† some cells did not converge (stopped at the epoch cap while still "
                     "improving): comparisons with them are confounded with under-training")
    if acc["failed"].any():
        notes.append("‡ a failed run (far below the other seeds of its variant): exclude it "
                     "with analysis.exclude or add a seed")
    ref = summary if summary is not None else summary_b
    if ref is not None and "provisional" in ref and ref.provisional.fillna(False).any():
        notes.append("fewer than 3 seeds: intervals and verdicts are provisional")
    print("\n".join(notes))
    for stage, why in result.get("skipped", {}).items():
        print(f"skipped {stage}: {why}")
    report = run.report_dir / "index.html"
    print(f"report: {report if report.is_file() else '(not written)'}   tables: {run.tables()}"
          f"   log: {run.log}")


def _ci_cell(summary, variant: str, metric: str, reference: str = "final",
             short: bool = False) -> str:
    if summary is None:
        return ""
    sel = (summary.variant == variant) & (summary.metric == metric)
    if "reference" in summary:
        sel &= summary.reference == reference
    r = summary[sel]
    if r.empty:
        return "" if short else "—"
    r = r.iloc[0]
    verdict = r.get("verdict") if isinstance(r.get("verdict"), str) else ""
    verdict = {"undecided": "undec."}.get(verdict, verdict)
    if short:
        name = {"spearman": "A", "delta_ins": "ΔIns"}.get(metric, metric)
        return f"{name}: {verdict}" if verdict else ""
    return f"{r['mean']:.2f} [{r.ci_low:.2f},{r.ci_high:.2f}] {verdict}".rstrip()


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``auglens: error: …`` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"auglens: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .executors import EXECUTORS
    from .pipeline import STAGES

    p = _Parser(prog="auglens", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser(
        "list", help="registered datasets, models, augmentations and their parameters"
    )
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", help="train one (augmentation, seed) cell")
    s.add_argument("--model", default="small_resnet")
    s.add_argument("--dataset", default=None, help="dataset name (default: shapes)")
    s.add_argument("--augment", default="none", help="name, or a+b for a composition")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. train.epochs=1 (repeatable)",
    )
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    def run_dir_command(name: str, help: str, func: Any, force: str | None,
                        set_help: str = "override a config field") -> argparse.ArgumentParser:
        """A subcommand on an existing run directory: RUN_DIR, --set, --wait (and --force)."""
        c = sub.add_parser(name, help=help)
        c.add_argument("run_dir", type=Path)
        if force:
            c.add_argument("--force", action="store_true", help=force)
        c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
        c.add_argument("--wait", action="store_true",
                       help="wait while another auglens process writes the run directory")
        c.set_defaults(func=func)
        return c

    methods_help = "explainer (repeatable; default: the experiment's explain.methods)"
    s = run_dir_command("explain", "explain every trained cell of a run directory", cmd_explain,
                        "recompute cached explanations")
    s.add_argument("--method", action="append", default=None, help=methods_help)
    s.add_argument("--n-images", type=_positive_int, default=None,
                   help="explain the first N test images (explain.n_images; per-method limits "
                        "still cap)")
    s = run_dir_command("compare", "Study A: compare every augmentation with the baseline",
                        cmd_compare, "recompute even if cached")
    s.add_argument("--method", default=None,
                   help="explainer (default: every method of the experiment's explain.methods)")
    s = run_dir_command("evaluate", "Study B: alignment and faithfulness of the stored maps",
                        cmd_evaluate, "recompute cached per-cell results",
                        "e.g. evaluate.n_images=200 or evaluate.min_probability=0.6")
    s.add_argument("--method", action="append", default=None, help=methods_help)
    run_dir_command("dissect", "Study B: Network Dissection of every trained cell", cmd_dissect,
                    "recompute cached per-cell results", "e.g. dissect.n_images=1000")
    run_dir_command("sanity", "sanity checks of the attribution methods: cascading model-"
                    "parameter randomisation and the random-logit test", cmd_sanity,
                    "recompute cached per-cell results", "e.g. sanity.n_images=128 or "
                    "sanity.cells=all")
    run_dir_command("report", "write RUN_DIR/report/index.html and summary.md", cmd_report, None)

    s = sub.add_parser(
        "run",
        help="every stage of an experiment file, from training to the report "
        "(default: the quick preset)",
    )
    s.add_argument("experiment", nargs="?", type=Path)
    s.add_argument("--preset", default="quick", help=f"one of: {', '.join(PRESETS)}")
    s.add_argument("--out", type=Path, default=None, help="run directory (default runs/<name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--method", action="append", default=None,
                   help="explainer (repeatable; default: the experiment's explain.methods)")
    s.add_argument("--n-images", type=_positive_int, default=None,
                   help="explain the first N test images (explain.n_images; per-method limits "
                        "still cap)")
    s.add_argument("--seeds", default=None, metavar="LIST",
                   help="override the seeds, e.g. 3,4,5 or 3-5 (a replication with disjoint "
                        "seeds: see `auglens replicate`)")
    s.add_argument("--force", action="append", default=[], choices=STAGES,
                   help="recompute a stage (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="print the grid and what is cached")
    s.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="where tasks run (default local)")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="local worker processes (default: one per CPU core, at most 8; 1 with "
                        "CUDA)")
    s.add_argument("--address", default=None, help="Ray cluster address (default: start one)")
    s.add_argument("--wait", action="store_true", help="wait if another run holds the directory")
    s.add_argument("--quiet", action="store_true", help="no progress output (see run.log)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("replicate", help="share of verdicts two runs with disjoint seeds agree on")
    s.add_argument("run_a", type=Path)
    s.add_argument("run_b", type=Path)
    s.add_argument("--out", type=Path, default=None,
                   help="also write the verdict table (.parquet) and the summary (.json)")
    s.set_defaults(func=cmd_replicate)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (one line printed already)
        return int(e.code or 0)
    try:
        return args.func(args)
    except AuglensError as e:
        print(f"auglens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("auglens: interrupted; finished cells are kept", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"auglens: error: no space left on the device{where}; nothing written before was "
              "lost (every file is written to a temporary name and renamed) — free space and "
              "run the same command again to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
