"""Report sections about the run itself: the experiment, classification performance, gallery."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import pandas as pd

from .gallery import METHOD_NAMES, build_gallery
from .html import Section
from .load import Run

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")


def _spec(spec: list[dict]) -> str:
    parts = []
    for aug in spec:
        params = ", ".join(f"{k}={v}" for k, v in aug.items() if k != "name")
        parts.append(f"{aug.get('name', '?')}({params})" if params else str(aug.get("name", "?")))
    return " + ".join(parts) or "(no augmentation)"


def _params(d: dict, skip: tuple[str, ...] = ("name",)) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if k not in skip and v is not None)


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _log_span(run: Run) -> float | None:
    try:
        lines = run.rundir.log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    stamps = [datetime.fromisoformat(m.group(1)) for line in lines if (m := _LOG_TIME.match(line))]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) >= 2 else None


def experiment_section(run: Run) -> Section:
    """Dataset, model, augmentations, seeds, software versions, run time."""
    sec = Section("experiment", "The experiment")
    exp = run.experiment
    if exp is None:
        sec.miss(run.reason(run.rel(run.rundir.experiment)))
    recs = run.records
    variants, seeds = run.variants, run.seeds
    data = (exp or {}).get("data") or next(iter(recs.values()), {}).get("config", {}).get("data")
    model = (exp or {}).get("model") or next(iter(recs.values()), {}).get("config", {}).get("model")
    rec0 = next(iter(recs.values()), {})
    classes = rec0.get("dataset", {}).get("class_names") or []
    facts = []
    if exp:
        facts.append(("experiment", str(exp.get("name", "?"))))
    if data:
        facts.append(("dataset", f"{data.get('name', '?')} ({_params(data)})"
                      + (f"; {len(classes)} classes: {', '.join(classes)}" if classes else "")))
    if model:
        facts.append(("model", f"{model.get('name', '?')} ({_params(model)})"))
    if exp and exp.get("train"):
        t = exp["train"]
        keys = (("stop", "max_epochs", "monitor", "patience", "min_delta", "lr_decays")
                if t.get("stop") == "converged" else ("epochs",)) + (
            "batch_size", "optimizer", "lr", "schedule", "weight_decay", "precision")
        facts.append(("training", ", ".join(f"{k}={t[k]}" for k in keys if k in t)))
    facts.append(("baseline", run.baseline))
    facts.append(("seeds", ", ".join(map(str, seeds)) or "none"))
    n_cells = len(variants) * len(seeds)
    facts.append(("cells finished", f"{len(recs)} of {n_cells}"))
    software = {}
    for rec in recs.values():
        for k, v in rec.get("software", {}).items():
            software.setdefault(k, set()).add(str(v))
    if software:
        facts.append(("software", "; ".join(f"{k} {' / '.join(sorted(v))}"
                                            for k, v in software.items())))
    devices = sorted({str(r.get("device")) for r in recs.values() if r.get("device")})
    if devices:
        facts.append(("device", ", ".join(devices)))
    train_s = float(sum(r.get("train_seconds", 0.0) for r in recs.values()))
    span = _log_span(run)
    if recs:
        facts.append(("training time", f"{_duration(train_s)} summed over cells"))
    if span is not None:
        facts.append(("run time", f"{_duration(span)} from the first to the last line of run.log"))
    stage_s = {k: float(v) for k, v in run.timings.items() if isinstance(v, int | float)}
    if stage_s:
        facts.append(("stage times", ", ".join(f"{k} {_duration(v)}" for k, v in stage_s.items())
                      + f" (total {_duration(sum(stage_s.values()))})"))
        if span is None:
            span = sum(stage_s.values())
    for stage, why in run.skipped.items():
        facts.append((f"skipped: {stage}", why))
    methods = run.explained_methods
    facts.append(("explanations", ", ".join(METHOD_NAMES.get(m, m) for m in methods) or "none"))
    if run.stages:
        facts.append(("stages", ", ".join(
            f"{k} ({datetime.fromtimestamp(v['_mtime']).strftime('%Y-%m-%d %H:%M')})"
            for k, v in run.stages.items())))
    if facts:
        sec.facts(facts)
    if exp and exp.get("variants"):
        rows = [{"variant": v, "augmentations": _spec(spec),
                 "cells finished": sum((v, s) in recs for s in seeds)}
                for v, spec in exp["variants"].items()]
        sec.table(pd.DataFrame(rows), "Variants (each trained once per seed)")
    if not recs:
        sec.miss(run.reason("cells/<variant>/seed<k>/record.json"))
    model_name = (model or {}).get("name", "a model")
    data_name = (data or {}).get("name", "a dataset")
    sec.reading = (
        f"This run trains {model_name} on {data_name} once per augmentation variant and seed: "
        f"{len(variants)} variant{'s' if len(variants) != 1 else ''} × {len(seeds)} "
        f"seed{'s' if len(seeds) != 1 else ''} = {n_cells} models, of which {len(recs)} finished. "
        f"Every variant is compared with '{run.baseline}' trained with the same seed; "
        "baselines of different seeds give the noise floor, i.e. how much explanations differ by "
        "chance alone."
        + (f" Training took {_duration(train_s)} of compute in total" if recs else "")
        + (f"; the whole run took {_duration(span)}." if span is not None else
           ("." if recs else ""))
    )
    return sec


def _performance_table(run: Run) -> tuple[pd.DataFrame | None, str]:
    perf = run.table(run.t("performance"))
    if perf is not None:
        return perf, run.t("performance")
    rows = [{"variant": v, "seed": s, **{k: r.get("test", {}).get(k, float("nan"))
                                         for k in ("accuracy", "precision", "recall", "f1")},
             "train_seconds": r.get("train_seconds", float("nan"))}
            for (v, s), r in run.records.items()]
    return (pd.DataFrame(rows), "cells/*/record.json") if rows else (None, "")


def performance_section(run: Run) -> Section:
    """Accuracy, precision, recall and F1 per variant with their spread over seeds."""
    sec = Section("performance", "Classification performance")
    perf, source = _performance_table(run)
    if perf is None or perf.empty:
        sec.miss(run.reason(run.t("performance")) + "; no finished cell records either")
        sec.reading = "No trained model has been evaluated yet."
        return sec
    if source != run.t("performance"):
        sec.miss(run.reason(run.t("performance")) + f"; read from {source} instead")
    order = {v: i for i, v in enumerate(run.variants)}
    perf = perf.sort_values(["variant", "seed"], key=lambda c: c.map(order).fillna(1e9)
                            if c.name == "variant" else c)
    g = perf.groupby("variant", sort=False)
    table = pd.DataFrame({
        "variant": list(g.groups),
        "seeds": g.size().to_numpy(),
        "accuracy": g.accuracy.mean().to_numpy(),
        "accuracy sd": g.accuracy.std().to_numpy(),
        "accuracy min": g.accuracy.min().to_numpy(),
        "accuracy max": g.accuracy.max().to_numpy(),
        "precision": g.precision.mean().to_numpy(),
        "recall": g.recall.mean().to_numpy(),
        "f1": g.f1.mean().to_numpy(),
        "f1 sd": g.f1.std().to_numpy(),
    })
    if "converged" in perf:
        table["converged"] = [f"{int(c)}/{int(n)}" for c, n in
                              zip(g.converged.sum(), g.size(), strict=True)]
        table["epochs"] = g.epochs_trained.mean().to_numpy()
        table["failed runs"] = g.failed.sum().to_numpy()
    if "train_seconds" in perf:
        table["train s"] = g.train_seconds.mean().to_numpy()
    sec.table(table, "Test-set metrics per variant: macro averages over classes, mean over seeds "
              "(sd = standard deviation over seeds; NaN with a single seed); converged = cells "
              "whose validation loss/accuracy stopped improving before the epoch cap; epochs = "
              "mean epochs trained (the weights kept are the best validation epoch's)", digits=4,
              table_id="performance-table")
    sec.table(perf.reset_index(drop=True), "Every trained model (one row per variant and seed)",
              digits=4, collapsed=True, md=False)
    t = table.set_index("variant")
    best, worst = t.accuracy.idxmax(), t.accuracy.idxmin()
    ranges = (t["accuracy max"] - t["accuracy min"])[t.seeds > 1].dropna()
    base = run.baseline
    text = []
    if base in t.index:
        text.append(f"The baseline reaches {t.accuracy[base]:.4f} test accuracy"
                    + (f" (sd {t['accuracy sd'][base]:.4f} over {t.seeds[base]} seeds)"
                       if t.seeds[base] > 1 else " (one seed)") + ".")
    if t.accuracy[best] == t.accuracy[worst]:
        text.append(f"Every variant reaches the same mean accuracy ({t.accuracy[best]:.4f}).")
    else:
        text.append(f"The most accurate variant is {best} ({t.accuracy[best]:.4f}), the least "
                    f"accurate {worst} ({t.accuracy[worst]:.4f})"
                    + (f", {t.accuracy[worst] - t.accuracy[base]:+.4f} vs the baseline"
                       if base in t.index and worst != base else "") + ".")
    if "converged" in perf:
        unconv = perf[~perf.converged.astype(bool)]
        failed = perf[perf.failed.astype(bool)]
        if len(unconv):
            text.append(f"{len(unconv)} of {len(perf)} models did NOT converge ("
                        + ", ".join(f"{r.variant}/seed{r.seed}" for r in unconv.itertuples())
                        + "): they stopped at the epoch cap while still improving, so every "
                        "comparison with them is confounded with under-training; they are marked "
                        "in the tables below. Raise train.max_epochs.")
        else:
            monitor = str(run.train_setting("monitor", "val_loss")).replace("val_", "")
            text.append(f"All {len(perf)} models converged (validation {monitor} flat before "
                        "the epoch cap).")
        if len(failed):
            text.append("Failed runs (converged far below the other seeds of their variant, "
                        "which would distort the noise floor): "
                        + ", ".join(f"{r.variant}/seed{r.seed} ({r.best_val_accuracy:.3f})"
                                    for r in failed.itertuples())
                        + "; leave them out with analysis.exclude or add a seed.")
    if len(ranges):
        widest = ranges.idxmax()
        text.append(f"Retraining with another seed moves a variant's accuracy by "
                    f"{ranges.median():.4f} (median range over seeds; widest: {widest}, "
                    f"{ranges[widest]:.4f}); differences between variants smaller than that are "
                    "within seed noise.")
    sec.reading = " ".join(text)
    return sec


def gallery_section(run: Run, highlight: dict[int, str]) -> Section:
    """Baseline vs every variant on the same images (each method), with an image picker."""
    sec = Section("gallery", "CAM gallery")
    gal = build_gallery(run, highlight)
    for reason in gal.missing:
        sec.miss(reason)
    if not gal.html:
        sec.reading = "No explanation maps are available to show."
        return sec
    sec.raw(gal.html)
    names = " and ".join(METHOD_NAMES.get(m, m) for m in gal.methods)
    sec.md.append(f"Interactive in index.html: {len(gal.image_ids)} test images "
                  f"({', '.join(map(str, gal.image_ids))}), {names}, seed {gal.seed}.")
    sec.reading = (
        f"Pick a test image to see the {names} map of every model (seed {gal.seed}) on it, the "
        "baseline first. Each map is upsampled to the image and scaled to its own minimum and "
        "maximum for display only (red = most relevant), so compare where a map points, not its "
        "absolute level; captions give each model's predicted class (✓ correct, ✗ wrong)."
        + (" Images marked 'changed most' are the ones whose maps diverge most from the baseline "
           "beyond the seed noise floor (see above)." if highlight else "")
    )
    return sec
