"""After training: per-cell convergence, failed runs and the accuracy-matched baseline checkpoints
(SPEC §10), from the cells' ``record.json`` files.

All accuracies here are **validation** accuracies (the test split is never used to choose
anything): a cell's accuracy is that of its best validation epoch (the weights it keeps), and a
baseline checkpoint's is that of its epoch.
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from ..rundir import RunDir


def matched_epoch(val_accuracy: list[float], target: float) -> int:
    """1-based epoch whose validation accuracy is closest to ``target`` (ties → the earlier)."""
    if not val_accuracy:
        raise ValueError("no epochs to match")
    gaps = [abs(a - target) for a in val_accuracy]
    return gaps.index(min(gaps)) + 1


def performance_table(records: dict[tuple[str, int], dict[str, Any]],
                      failed_margin: float = 0.05) -> pd.DataFrame:
    """One row per cell: test accuracy/precision/recall/F1, ``best_val_accuracy``,
    ``best_epoch``, ``epochs_trained``, ``converged``, ``stop_reason``, ``failed`` (a converged
    cell whose best validation accuracy is more than ``failed_margin`` below the median of the
    other seeds of its variant), ``train_seconds``."""
    rows = []
    for (variant, seed), rec in records.items():
        t = rec["test"]
        others = [r["best_val_accuracy"] for (v, s), r in records.items()
                  if v == variant and s != seed]
        failed = bool(rec["converged"] and others and rec["best_val_accuracy"]
                      < statistics.median(others) - failed_margin)
        rows.append({"variant": variant, "seed": seed,
                     **{k: t[k] for k in ("accuracy", "precision", "recall", "f1")},
                     "best_val_accuracy": rec["best_val_accuracy"],
                     "best_epoch": rec["best_epoch"], "epochs_trained": rec["epochs_trained"],
                     "converged": bool(rec["converged"]), "stop_reason": rec["stop_reason"],
                     "failed": failed, "train_seconds": rec["train_seconds"]})
    return pd.DataFrame(rows)


def matching_table(records: dict[tuple[str, int], dict[str, Any]], baseline: str) -> pd.DataFrame:
    """For every non-baseline cell (variant, seed): the baseline checkpoint of the same seed whose
    validation accuracy is closest to the cell's best → ``variant, seed, variant_val_accuracy,
    baseline_epoch, baseline_val_accuracy, same_as_final`` (the checkpoint is the baseline's
    final weights, so the final comparison already covers it)."""
    cols = ["variant", "seed", "variant_val_accuracy", "baseline_epoch",
            "baseline_val_accuracy", "same_as_final"]
    rows = []
    for (variant, seed), rec in records.items():
        base = records.get((baseline, seed))
        if variant == baseline or base is None:
            continue
        curve = [h["val_accuracy"] for h in base["history"]]
        epoch = matched_epoch(curve, rec["best_val_accuracy"])
        rows.append({"variant": variant, "seed": seed,
                     "variant_val_accuracy": rec["best_val_accuracy"], "baseline_epoch": epoch,
                     "baseline_val_accuracy": curve[epoch - 1],
                     "same_as_final": epoch == base["best_epoch"]})
    return pd.DataFrame(rows, columns=cols)


def checkpoints_needed(matching: pd.DataFrame) -> list[tuple[int, int]]:
    """Sorted unique (seed, epoch) baseline checkpoints that the matched comparisons read
    (those that are not the final weights)."""
    m = matching[~matching.same_as_final.astype(bool)]
    return sorted({(int(s), int(e)) for s, e in zip(m.seed, m.baseline_epoch, strict=True)})


def matched_checkpoints(exp: Any, run: RunDir) -> list[tuple[int, int]]:
    """(seed, epoch) of the baseline checkpoints the accuracy-matched comparisons of ``exp`` need,
    from the run's ``matching`` table (none when matching is off or not computed yet)."""
    path = run.table("matching")
    if not exp.analysis.matched or not path.is_file():
        return []
    return checkpoints_needed(pd.read_parquet(path))
