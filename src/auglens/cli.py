"""Command line: ``auglens list | train | explain | compare | run``.

Every user error exits 2 with a one-line message."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import AuglensError

PRESETS = ("quick",)


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
    from .models import MODELS

    for title, reg in (
        ("datasets", DATASETS),
        ("models", MODELS),
        ("augmentations", AUGMENTATIONS),
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
    return load_config(ExperimentConfig, raw, args.set, source=source)


def _run_dir_experiment(run_dir: Path, overrides: list[str]):
    """The experiment stored in a run directory (written by `auglens run`)."""
    import json

    from .config import ExperimentConfig, load_config

    path = run_dir / "experiment.json"
    if not path.is_file():
        raise AuglensError(
            f"{run_dir} is not a run directory (no experiment.json); create one with `auglens run`"
        )
    return load_config(ExperimentConfig, json.loads(path.read_text()), overrides, source=str(path))


def _explain(exp, out: Path, methods: tuple[str, ...], n_images: int | None) -> None:
    from .explain.store import explain_grid

    def done(method: str, variant: str, seed: int, cached: bool) -> None:
        print(
            f"  explained {variant:<16} seed {seed} with {method}{' (cached)' if cached else ''}",
            flush=True,
        )

    explain_grid(exp, out, methods, n_images=n_images, on_done=done)


def _compare(exp, out: Path, method: str) -> None:
    import pandas as pd

    from .analysis.run_a import analyse_study_a

    paths = analyse_study_a(exp, out, method)
    summary = pd.read_parquet(paths["summary_a"])
    s = summary[
        (summary.target == "predicted")
        & summary.metric.isin(["pearson", "spearman", "overlap@5", "overlap@20"])
    ]
    print(s.pivot(index="variant", columns="metric", values="mean").round(3).to_string())
    print(f"wrote tables to {out / 'tables'} and plots to {out / 'plots'}")


def cmd_explain(args: argparse.Namespace) -> int:
    exp = _run_dir_experiment(args.run_dir, args.set)
    _explain(exp, args.run_dir, tuple(args.method), args.n_images)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    exp = _run_dir_experiment(args.run_dir, args.set)
    _compare(exp, args.run_dir, args.method)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from .train.grid import train_grid
    from .utils import atomic_path, check_writable_dir, write_json

    exp = _load_experiment(args)
    out = check_writable_dir(args.out or Path("runs") / exp.name)
    write_json(out / "experiment.json", exp.model_dump(mode="json"))
    cells = exp.cells()
    print(
        f"{exp.name}: {len(exp.variants)} variants × {len(exp.seeds)} seeds = {len(cells)} cells"
        f" → {out}"
    )

    def on_cell(variant: str, seed: int, record: dict[str, Any], cached: bool) -> None:
        how = "cached" if cached else f"{record['train_seconds']:.0f}s"
        print(
            f"  {variant:<16} seed {seed}: test accuracy {record['test']['accuracy']:.4f} ({how})",
            flush=True,
        )

    rows = train_grid(exp, out, on_cell=on_cell)
    table = pd.DataFrame(rows)
    with atomic_path(out / "tables" / "performance.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    summary = table.groupby("variant", sort=False)[["accuracy", "f1"]].agg(["mean", "std"])
    print(summary.round(4).to_string())
    _explain(exp, out, ("gradcam",), None)
    _compare(exp, out, "gradcam")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="auglens", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

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

    s = sub.add_parser("explain", help="explain every trained cell of a run directory")
    s.add_argument("run_dir", type=Path)
    s.add_argument(
        "--method", action="append", default=None, help="explainer (repeatable; default gradcam)"
    )
    s.add_argument("--n-images", type=int, default=None, help="first N test images (default all)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("compare", help="Study A: compare every augmentation with the baseline")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--method", default="gradcam")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser(
        "run",
        help="train, explain and compare the grid of an experiment file "
        "(default: the quick preset)",
    )
    s.add_argument("experiment", nargs="?", type=Path)
    s.add_argument("--preset", default="quick", help=f"one of: {', '.join(PRESETS)}")
    s.add_argument("--out", type=Path, default=None, help="run directory (default runs/<name>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "method", "") is None:
        args.method = ["gradcam"]
    try:
        return args.func(args)
    except AuglensError as e:
        print(f"auglens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("auglens: interrupted; finished cells are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
